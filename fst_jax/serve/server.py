"""``fst-serve``: an OpenAI-compatible chat server on the jitted sampler (aiohttp).

    fst-serve --workdir=runs/fst-default            # latest checkpoint, its Pareto contexts
    fst-serve --workdir=runs/codeio --step=600 --port=8000
    fst-serve --model=exported/                      # an fst-export dir (reads contexts.json)
    fst-serve --model=smollm2-135m-instruct          # any model spec, no contexts

Model names: ``RUN@STEP`` (no context) and ``RUN@STEP/ctx0`` … ``ctxK-1`` (Pareto context i,
best first, as the system prompt). Endpoints: GET /v1/models, GET /v1/models/{name},
POST /v1/chat/completions (stream, n, temperature, top_p, max_tokens, stop, seed; usage
counts), GET /health. Point any OpenAI client at ``http://HOST:PORT/v1`` (the key is ignored).
Streamed replies arrive per chunk of ``--stream_chunk`` decoded tokens (see `backend`), and the
batching window adapts to load (`batching.WindowPolicy`).
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
from fst_jax.serve.backend import DEFAULT_STREAM_CHUNK, JaxBackend, RowText, finish, resolve_model
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
        window = self.engine.last_window  # (planned, waited) before the last call
        return web.json_response(
            {
                "status": "ok",
                "queued_rows": self.engine.queued_rows,
                "last_window_ms": None if window is None else round(1000 * window[0], 1),
                **self.engine.stats,
            }
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
            job = self.engine.submit(key, rows, asyncio.get_running_loop(), stream=req.stream)
        except OverflowError as e:
            raise APIError(503, f"server overloaded: {e}", type="server_error") from e
        except EngineClosed as e:
            raise APIError(503, str(e), type="server_error") from e
        if req.stream:
            return await _Stream(self.backend.tokenizer, request, req, job, max_tokens).run(
                prompt_tokens
            )
        try:
            outs = await job.future
        except asyncio.CancelledError:
            job.cancel()  # the client went away: its rows are dropped if not yet dispatched
            raise
        except (ValueError, EngineClosed) as e:
            raise _api_error(e) from e
        tok = self.backend.tokenizer  # detokenizing long replies: off the event loop
        choices = await asyncio.get_running_loop().run_in_executor(
            None, lambda: [finish(tok, o, max_tokens, req.stop) for o in outs]
        )
        cid = protocol.completion_id()
        return web.json_response(protocol.chat_response(cid, req.model, choices, prompt_tokens))


def _api_error(e: BaseException) -> APIError:
    """A job's failure as the error the client gets."""
    if isinstance(e, ValueError):  # the sampler refused the rows: a request we failed to catch
        return protocol.bad(str(e))
    if isinstance(e, EngineClosed):
        return APIError(503, str(e), type="server_error")
    return APIError(500, f"internal server error: {type(e).__name__}: {e}", type="server_error")


class _Stream:
    """One streaming request: SSE chunks as the engine decodes them.

    The response opens at the first decoded chunk (an error before it is still an HTTP error
    status); each chunk's new tokens go through each choice's `RowText` (incremental
    detokenizing, max_tokens cut, stop strings held back until they cannot start a stop
    string), and a choice's finish chunk goes out as soon as its reason is known. A row that
    hit a stop string is marked done so the call can end early; a client that goes away
    cancels the job (its rows are freed at the next chunk boundary when no other row of the
    call needs tokens). An error after the response opened is sent as an SSE error event.
    """

    def __init__(
        self, tokenizer: Any, request: web.Request, req: protocol.ChatRequest, job: Any, cut: int
    ) -> None:
        self.request, self.req, self.job = request, req, job
        self.rows = [RowText(tokenizer, cut, req.stop) for _ in job.rows]
        self.cid, self.created = protocol.completion_id(), int(time.time())
        self.resp: web.StreamResponse | None = None

    async def _send(self, obj: Any) -> None:
        assert self.resp is not None
        await self.resp.write(f"data: {json.dumps(obj)}\n\n".encode())

    async def _choice(self, i: int, text: str) -> None:
        """Send choice i's new text, and its finish chunk once its reason is known."""
        model, row = self.req.model, self.rows[i]
        if text:
            delta = [{"index": i, "delta": {"content": text}, "finish_reason": None}]
            await self._send(protocol.chunk(self.cid, model, self.created, delta))
        if row.reason is not None:
            self.job.mark_done(i)
            last = [{"index": i, "delta": {}, "finish_reason": row.reason}]
            await self._send(protocol.chunk(self.cid, model, self.created, last))

    async def _open(self) -> None:
        self.resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await self.resp.prepare(self.request)
        first = [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for i in range(len(self.rows))
        ]
        await self._send(protocol.chunk(self.cid, self.req.model, self.created, first))

    async def run(self, prompt_tokens: int) -> web.StreamResponse:
        job, completed = self.job, False
        try:
            while (deltas := await job.next_chunk()) is not None:
                if self.resp is None:
                    await self._open()
                for i, (row, d) in enumerate(zip(self.rows, deltas)):
                    if row.reason is None:
                        await self._choice(i, row.push(d.token_ids, d.finished))
            try:
                outs = await job.future
            except Exception as e:
                if self.resp is None:
                    if isinstance(e, ValueError | EngineClosed):
                        raise _api_error(e) from e
                    raise
                log.exception("streaming call failed")
                await self._send(_api_error(e).body())
                await self.resp.write_eof()
                completed = True
                return self.resp
            if self.resp is None:
                await self._open()
            for i, (row, out) in enumerate(zip(self.rows, outs)):
                if row.reason is None:
                    await self._choice(i, row.close(out))
            if self.req.include_usage:
                done = sum(r.completion_tokens for r in self.rows)
                used = protocol.usage(prompt_tokens, done)
                await self._send(
                    protocol.chunk(self.cid, self.req.model, self.created, [], usage=used)
                )
            await self.resp.write(b"data: [DONE]\n\n")
            await self.resp.write_eof()
            completed = True
            return self.resp
        finally:
            if not completed:
                job.cancel()  # cancelled, the client went away, or a write failed


def build(
    model: ServedModel,
    *,
    max_batch: int = 32,
    max_n: int = 16,
    window_s: float = 0.025,
    window_fraction: float = 0.1,
    window_max_s: float = 0.5,
    max_queued_rows: int = 1024,
    default_max_tokens: int = 512,
    stream_chunk: int = DEFAULT_STREAM_CHUNK,
    warmup: bool = False,
    backend: Any = None,
) -> App:
    """Backend + engine + routes for `model` (the JAX backend unless one is passed).

    window_s / window_fraction / window_max_s: the batching window (`WindowPolicy`);
    stream_chunk: decode steps per jitted call (`backend.DEFAULT_STREAM_CHUNK` says why 16).
    """
    backend = backend or JaxBackend(
        model, default_max_tokens=default_max_tokens, stream_chunk=stream_chunk
    )
    if warmup and hasattr(backend, "warmup"):
        t0 = time.perf_counter()
        n = backend.warmup(max_batch)
        log.info("warm-up: %d sampler calls in %.1f s", n, time.perf_counter() - t0)
    engine = BatchEngine(
        backend, max_batch=max_batch, window_s=window_s, window_fraction=window_fraction,
        window_max_s=window_max_s, max_queued_rows=max_queued_rows,
    )  # fmt: skip
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
        from fst_jax import compile_cache

        compile_cache.enable(f.compile_cache_dir, key="--compile_cache_dir")  # before warmup
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
        window_fraction=f.batch_window_fraction, window_max_s=f.batch_window_max_ms / 1000,
        stream_chunk=f.stream_chunk,
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
        "batch_window_ms", 25.0, "Shortest wait for more requests to join a sampler call."
    )
    flags.DEFINE_float(
        "batch_window_fraction", 0.1,
        "Under load the wait is this fraction of the last call's time (see WindowPolicy).",
    )  # fmt: skip
    flags.DEFINE_float("batch_window_max_ms", 500.0, "Longest wait for requests to join a call.")
    flags.DEFINE_integer(
        "stream_chunk", DEFAULT_STREAM_CHUNK,
        "Decode steps per jitted call: streamed text arrives per chunk (0 = one call per batch).",
    )  # fmt: skip
    flags.DEFINE_integer("max_n", 16, "Largest n (choices) one request may ask for.")
    flags.DEFINE_integer("default_max_tokens", 512, "max_tokens when a request sends none.")
    flags.DEFINE_boolean("warmup", True, "Compile the batch buckets before serving.")
    flags.DEFINE_string(
        "compile_cache_dir", "auto",
        "Persistent XLA compile cache: a restart reads warmed-up programs back from disk "
        "(auto = ~/.cache/fst_jax/xla_compile_cache, see fst_jax/compile_cache.py; '' = off).",
    )  # fmt: skip
    app.run(main)


if __name__ == "__main__":
    run()
