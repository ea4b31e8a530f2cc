"""``fst-serve``: an OpenAI-compatible chat server on the jitted sampler (aiohttp).

    fst-serve --workdir=runs/fst-default            # latest checkpoint, its Pareto contexts
    fst-serve --workdir=runs/codeio --step=600 --port=8000
    fst-serve --model=exported/                      # an fst-export dir (reads contexts.json)
    fst-serve --model=smollm2-135m-instruct          # any model spec, no contexts

Model names: ``RUN@STEP`` (no context) and ``RUN@STEP/ctx0`` … ``ctxK-1`` (Pareto context i,
best first, as the system prompt). Endpoints: GET /v1/models, GET /v1/models/{name},
POST /v1/chat/completions (stream, n, temperature, top_p, max_tokens, stop, seed; usage
counts), GET /health. Point any OpenAI client at ``http://HOST:PORT/v1`` (the key is ignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from fst_jax.serve import protocol
from fst_jax.serve.backend import JaxBackend, finish, resolve_model
from fst_jax.serve.batching import BatchEngine, EngineClosed
from fst_jax.serve.protocol import APIError
from fst_jax.serve.runs import ServedModel

log = logging.getLogger("fst_jax.serve")
MAX_BODY = 8 << 20


def model_names(model: ServedModel) -> dict[str, int | None]:
    """Served name → context slot: NAME (no context), NAME/ctx{i} for each exported context."""
    names: dict[str, int | None] = {model.name: None}
    for i in range(len(model.contexts)):
        names[f"{model.name}/ctx{i}"] = i
    return names


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes an OpenAI-style JSON error; nothing a client sends escapes."""
    try:
        return await handler(request)
    except APIError as e:
        return web.json_response(e.body(), status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        kind = "not_found_error" if e.status == 404 else "invalid_request_error"
        err = APIError(e.status, f"{request.method} {request.path}: {e.reason}", type=kind)
        return web.json_response(err.body(), status=e.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # a server bug: answer 500, log it, keep serving
        log.exception("internal error on %s", request.path)
        err = APIError(500, f"internal server error: {type(e).__name__}: {e}", type="server_error")
        return web.json_response(err.body(), status=500)


class App:
    """The routes around one backend + batch engine."""

    def __init__(self, model: ServedModel, backend: Any, engine: BatchEngine, max_n: int) -> None:
        self.model, self.backend, self.engine, self.max_n = model, backend, engine, max_n
        self.names = model_names(model)
        self.created = int(time.time())
        self.app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get("/v1/models/{name:.+}", self.get_model)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/health", self.health)

    def _card(self, name: str) -> dict[str, Any]:
        slot = self.names[name]
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "fst_jax"}
        if slot is not None:
            c = self.model.contexts[slot]
            card["context"] = {k: c.get(k) for k in ("index", "id", "mean_score", "text")}
        return card

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._card(n) for n in self.names]})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        resolve_model(self.names, name)
        return web.json_response(self._card(name))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "queued_rows": self.engine.queued_rows, **self.engine.stats}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise protocol.bad(f"the request body is not valid JSON: {e}") from e
        req = protocol.parse_chat(body, max_n=self.max_n)
        slot = resolve_model(self.names, req.model)
        key, rows, prompt_tokens, max_tokens = self.backend.plan(req, slot)
        try:
            job = self.engine.submit(key, rows, asyncio.get_running_loop())
        except OverflowError as e:
            raise APIError(503, f"server overloaded: {e}", type="server_error") from e
        except EngineClosed as e:
            raise APIError(503, str(e), type="server_error") from e
        try:
            outs = await job.future
        except asyncio.CancelledError:
            job.cancel()  # the client went away: its rows are dropped if not yet dispatched
            raise
        except ValueError as e:  # the sampler refused the rows: a request we failed to catch
            raise protocol.bad(str(e)) from e
        except EngineClosed as e:
            raise APIError(503, str(e), type="server_error") from e
        tok = self.backend.tokenizer  # detokenizing long replies: off the event loop
        choices = await asyncio.get_running_loop().run_in_executor(
            None, lambda: [finish(tok, o, max_tokens, req.stop) for o in outs]
        )
        cid = protocol.completion_id()
        if not req.stream:
            return web.json_response(protocol.chat_response(cid, req.model, choices, prompt_tokens))
        return await self._stream(request, req, cid, choices, prompt_tokens)

    async def _stream(
        self,
        request: web.Request,
        req: protocol.ChatRequest,
        cid: str,
        choices: list[protocol.Choice],
        prompt_tokens: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        created = int(time.time())

        async def send(obj: Any) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        first = [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for i in range(len(choices))
        ]
        await send(protocol.chunk(cid, req.model, created, first))
        for i, c in enumerate(choices):
            for piece in c.pieces:
                if piece:
                    delta = [{"index": i, "delta": {"content": piece}, "finish_reason": None}]
                    await send(protocol.chunk(cid, req.model, created, delta))
            last = [{"index": i, "delta": {}, "finish_reason": c.finish_reason}]
            await send(protocol.chunk(cid, req.model, created, last))
        if req.include_usage:
            used = protocol.usage(prompt_tokens, sum(c.completion_tokens for c in choices))
            await send(protocol.chunk(cid, req.model, created, [], usage=used))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def build(
    model: ServedModel,
    *,
    max_batch: int = 32,
    max_n: int = 16,
    window_s: float = 0.025,
    max_queued_rows: int = 1024,
    default_max_tokens: int = 512,
    warmup: bool = False,
    backend: Any = None,
) -> App:
    """Backend + engine + routes for `model` (the JAX backend unless one is passed)."""
    backend = backend or JaxBackend(model, default_max_tokens=default_max_tokens)
    if warmup and hasattr(backend, "warmup"):
        t0 = time.perf_counter()
        n = backend.warmup(max_batch)
        log.info("warm-up: %d sampler calls in %.1f s", n, time.perf_counter() - t0)
    engine = BatchEngine(
        backend, max_batch=max_batch, window_s=window_s, max_queued_rows=max_queued_rows
    )
    return App(model, backend, engine, max_n)


class ServerThread:
    """Runs an App on 127.0.0.1 in a background thread (tests, benchmarks, in-process use).

    `url` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``); port 0 picks a free one.
    """

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fst-serve-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app.app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"fst-serve did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.app.engine.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def serving(model: ServedModel, **kwargs: Any) -> Iterator[ServerThread]:
    """`with serving(model) as srv: OpenAI(base_url=srv.url, api_key="x")`."""
    with ServerThread(build(model, **kwargs)) as srv:
        yield srv


# ------------------------------------------------------------------------------------ CLI


def main(argv: list[str]) -> None:
    from absl import flags

    from fst_jax.serve.runs import RunError, load_run, load_spec

    f = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"fst-serve: unexpected arguments {argv[1:]}; use --flag=value forms")
    if bool(f.workdir) == bool(f.model):
        raise SystemExit("fst-serve: pass exactly one of --workdir=RUN_DIR or --model=SPEC")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fst-serve %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        if f.workdir:
            model = load_run(f.workdir, None if f.step < 0 else f.step, name=f.name)
        else:
            model = load_spec(f.model, name=f.name)
    except (RunError, ValueError) as e:
        print(f"fst-serve: error: {e}", file=sys.stderr)
        sys.exit(2)
    app = build(
        model, max_batch=f.max_batch, max_n=f.max_n, default_max_tokens=f.default_max_tokens,
        warmup=f.warmup, window_s=f.batch_window_ms / 1000,
    )  # fmt: skip
    srv = ServerThread(app, f.host, f.port).start()
    print(f"fst-serve: {', '.join(app.names)} on {srv.url}", flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


def run() -> None:
    """Console-script entry point (setup.py: fst-serve = fst_jax.serve.server:run)."""
    from absl import app, flags

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    flags.DEFINE_string("workdir", None, "fst-train run directory (local path or URI).")
    flags.DEFINE_integer("step", -1, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("model", None, "Model spec instead of a run: HF/export dir, .gguf, ...")
    flags.DEFINE_string("name", None, "Served model name (default RUN@STEP or the dir name).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
    flags.DEFINE_integer("port", 8000, "Port (0 = any free port; the URL is printed).")
    flags.DEFINE_integer("max_batch", 32, "Most rows one sampler call takes.")
    flags.DEFINE_float(
        "batch_window_ms", 25.0, "How long a sampler call waits for more requests to join it."
    )
    flags.DEFINE_integer("max_n", 16, "Largest n (choices) one request may ask for.")
    flags.DEFINE_integer("default_max_tokens", 512, "max_tokens when a request sends none.")
    flags.DEFINE_boolean("warmup", True, "Compile the batch buckets before serving.")
    app.run(main)


if __name__ == "__main__":
    run()
