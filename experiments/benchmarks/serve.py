"""fst-serve throughput and latency vs HF transformers behind the same API, on SmolLM2-135M.

    flock /tmp/fst_heavy.lock python experiments/benchmarks/serve.py \
        --out experiments/results/serve_bench

Two servers, one after the other, in this process, identical except for the backend:
  * ``fst_jax``: `fst_jax.serve` as `fst-serve --model=smollm2-135m-instruct` runs it (the
    jitted sampler, bucketed shapes, warmed up before measuring);
  * ``hf``: HF transformers `generate` (torch, same fp32 weights from the same checkpoint dir)
    behind the SAME aiohttp app, request validation, batching engine (one `generate` call per
    batch of compatible rows) and detokenizing; only `backend.run` differs.
For each concurrency C (default 1, 8, 32), C client threads each send `--requests` chat requests
back to back with the real `openai` client over 127.0.0.1 (temperature 1, top_p 1, max_tokens
`--max_tokens`, distinct seeds). requests/s and tokens/s (completion tokens from `usage`) are
per round; `--rounds` rounds give mean ± standard error; p50/p95 latency pool every request of
every round. The last line printed is one JSON object with every figure and the ratios.

fst-serve decodes `--stream_chunk` steps per jitted call (0: one call per batch); with
`--stream` the clients stream and the seconds to the first text (p50) are added. `--model`
changes the fst_jax side's model (e.g. ``random:tiny_llama`` for a smoke run of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _common  # experiments/benchmarks/_common.py, next to this script
import numpy as np
import openai

from fst_jax.serve import ServerThread, build, load_spec
from fst_jax.serve.backend import MAX_NEW_BUCKETS, row_id
from fst_jax.serve.batching import GroupKey, Row, RowOut
from fst_jax.serve.protocol import ChatRequest, bad

TASKS = [
    "What is 17+25?",
    "Explain why the sky is blue.",
    "Write a short poem about autumn leaves.",
    "List three uses of a paperclip.",
    "How many legs does a spider have?",
    "Translate 'good morning' into French.",
    "What is the capital of Japan?",
    "Give one tip for learning to code.",
]


class HFBackend:
    """The peer: transformers `generate` on left-padded rows of the whole rendered prompt."""

    def __init__(self, model_dir: str, tokenizer: Any, default_max_tokens: int) -> None:
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32
        ).eval()
        self.tokenizer, self.contexts = tokenizer, []
        self.limit = self.model.config.max_position_embeddings
        self.default_max_tokens = default_max_tokens
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def plan(self, req: ChatRequest, context: int | None) -> tuple[GroupKey, list[Row], int, int]:
        text = self.tokenizer.apply_chat_template(
            req.messages, tokenize=False, add_generation_prompt=True
        )
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        room = self.limit - len(ids)
        max_tokens = req.max_tokens or min(self.default_max_tokens, room)
        if max_tokens > room:
            raise bad(f"max_tokens={max_tokens} exceeds the room left ({room})", "max_tokens")
        max_new = next((b for b in MAX_NEW_BUCKETS if b >= max_tokens), max_tokens)
        greedy = req.temperature == 0.0
        key = GroupKey("raw", greedy, req.temperature, req.top_p, min(max_new, room))
        base = req.seed if req.seed is not None else 0
        return key, [Row(ids, 0, row_id(base, i)) for i in range(req.n)], len(ids), max_tokens

    def run(self, key: GroupKey, rows: list[Row]) -> list[RowOut]:
        torch = self.torch
        width = max(len(r.task_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r.task_ids) :] = torch.tensor(r.task_ids)
            mask[b, width - len(r.task_ids) :] = 1
        torch.manual_seed(rows[0].row_id)
        kw = dict(do_sample=not key.greedy, max_new_tokens=key.max_new, pad_token_id=self.pad)
        if not key.greedy:
            kw.update(temperature=key.temperature, top_p=key.top_p, top_k=0)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)[:, width:]
        eos, res = self.tokenizer.eos_token_id, []
        for row in out.tolist():
            if eos in row:
                res.append(RowOut(row[: row.index(eos)], True))
            else:
                res.append(RowOut(row, False))
        return res


def _streamed(cli: Any, t: float, **kw: Any) -> tuple[int, float]:
    """One streaming chat: (completion tokens from the usage chunk, seconds to first text)."""
    first, used = float("nan"), 0
    for ch in cli.chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}
    ):
        if first != first and any(c.delta.content for c in ch.choices):
            first = time.perf_counter() - t
        if ch.usage is not None:
            used = ch.usage.completion_tokens
    return used, first


def load_clients(
    url: str, model: str, conc: int, requests: int, max_tokens: int, seed0: int,
    stream: bool = False,
):  # fmt: skip
    """C threads x `requests` sequential chats; returns (wall_s, latencies, completion_tokens,
    seconds to the first streamed text: empty unless `stream`)."""
    lat: list[float] = []
    toks: list[int] = []
    ttft: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        cli = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)
        for k in range(requests):
            msg = [{"role": "user", "content": TASKS[(c + k) % len(TASKS)]}]
            t = time.perf_counter()
            kw = dict(
                model=model, messages=msg, max_tokens=max_tokens, temperature=1.0,
                seed=seed0 + 1000 * c + k,
            )  # fmt: skip
            try:
                if stream:
                    used, first = _streamed(cli, t, **kw)
                else:
                    used, first = cli.chat.completions.create(**kw).usage.completion_tokens, None
            except BaseException as e:
                with lock:
                    errors.append(e)
                return
            with lock:
                lat.append(time.perf_counter() - t)
                toks.append(used)
                if first is not None:
                    ttft.append(first)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]!r}")
    return wall, lat, toks, ttft


def measure(side: str, app: Any, model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with ServerThread(app) as srv:
        # One untimed pass per concurrency: every batch bucket this load reaches is compiled.
        for conc in args.concurrency:
            load_clients(srv.url, model_name, conc, 1, args.max_tokens, 10**6, args.stream)
        for conc in args.concurrency:
            rps, tps, lats, firsts, calls0 = [], [], [], [], dict(app.engine.stats)
            for rnd in range(args.rounds):
                wall, lat, toks, ttft = load_clients(
                    srv.url, model_name, conc, args.requests, args.max_tokens, 10**4 * rnd,
                    args.stream,
                )  # fmt: skip
                rps.append(len(lat) / wall)
                tps.append(sum(toks) / wall)
                lats += lat
                firsts += ttft
            calls = app.engine.stats["calls"] - calls0.get("calls", 0)
            rows = app.engine.stats["rows"] - calls0.get("rows", 0)
            out[str(conc)] = {
                "requests_per_s": statistics.mean(rps),
                "requests_per_s_se": _common.se(rps),
                "tokens_per_s": statistics.mean(tps),
                "tokens_per_s_se": _common.se(tps),
                "latency_p50_s": float(np.percentile(lats, 50)),
                "latency_p95_s": float(np.percentile(lats, 95)),
                "requests": len(lats),
                "mean_rows_per_call": rows / max(calls, 1),
            }
            if firsts:  # streaming clients: when the first text arrived
                out[str(conc)]["first_text_p50_s"] = float(np.percentile(firsts, 50))
            r = out[str(conc)]
            print(
                f"{side:8s} C={conc:3d}  {r['requests_per_s']:7.3f} ± {r['requests_per_s_se']:.3f} "
                f"req/s  {r['tokens_per_s']:8.1f} ± {r['tokens_per_s_se']:.1f} tok/s  "
                f"p50 {r['latency_p50_s']:6.2f} s  p95 {r['latency_p95_s']:6.2f} s  "
                f"rows/call {r['mean_rows_per_call']:.1f}",
                flush=True,
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=2, help="sequential requests per client")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--sides", default="fst_jax,hf")
    p.add_argument(
        "--model", default="smollm2-135m-instruct",
        help="fst_jax side's model spec (the hf side needs the embedded default)",
    )  # fmt: skip
    p.add_argument("--stream", action="store_true", help="clients stream (adds first-text p50)")
    p.add_argument("--stream_chunk", type=int, default=16, help="fst-serve decode steps per call")
    p.add_argument("--out", default="", help="directory for results.json")
    p.add_argument(
        "--torch_threads", type=int, default=0, help="torch intra-op threads for hf (0: default)"
    )
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    commit = _common.git_commit()  # read now: the code this run imports
    from fst_jax.models.embedded import embedded_checkpoint_dir

    model = load_spec(args.model, name="smollm2" if args.model.startswith("smollm2") else None)
    max_batch = max(args.concurrency)
    res: dict[str, Any] = {}
    for side in args.sides.split(","):
        if side == "fst_jax":
            t0 = time.perf_counter()
            app = build(
                model, max_batch=max_batch, default_max_tokens=args.max_tokens,
                stream_chunk=args.stream_chunk,
            )  # fmt: skip
            app.backend.warmup(max_batch, args.max_tokens, greedy=(False,))
            print(f"fst_jax warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        elif side == "hf":
            if args.model != "smollm2-135m-instruct":
                raise SystemExit("--sides=hf runs the embedded smollm2-135m-instruct only")
            if args.torch_threads:
                import torch

                torch.set_num_threads(args.torch_threads)
            backend = HFBackend(embedded_checkpoint_dir(), model.tokenizer, args.max_tokens)
            app = build(model, max_batch=max_batch, backend=backend)
        else:
            raise SystemExit(f"unknown side {side!r}; use fst_jax and/or hf")
        res[side] = measure(side, app, model.name, args)
    ratios = {}
    if "fst_jax" in res and "hf" in res:
        for c in res["fst_jax"]:
            a, b = res["fst_jax"][c], res["hf"][c]
            ratios[c] = {
                "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                "requests_per_s": a["requests_per_s"] / b["requests_per_s"],
                "latency_p50": a["latency_p50_s"] / b["latency_p50_s"],
            }
            print(f"fst_jax / hf  C={c}: tokens/s x{ratios[c]['tokens_per_s']:.2f}, p50 latency "
                  f"x{ratios[c]['latency_p50']:.2f}")  # fmt: skip
    doc = {
        "command": " ".join(["python", *sys.argv]),
        "commit": commit,
        "machine": _common.machine(),
        "model": args.model,
        "settings": vars(args),
        "results": res,
        "ratios_fst_jax_over_hf": ratios,
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(doc, f, indent=2)
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
