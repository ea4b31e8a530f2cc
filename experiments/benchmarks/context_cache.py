"""Sampler calls of one FST cycle with contexts' keys/values kept across calls vs prefilled per call.

    python experiments/benchmarks/context_cache.py [--model=smollm2-135m-instruct] [--rounds=2]

The same call sequence as a cycle on frozen θ, run by two samplers in one process, interleaved
round by round: `Sampler(context_cache=16)` (the default: contexts prefilled once per parameter
version, `fst_jax.sampling.ContextCache`) and `Sampler(context_cache=0)` (every call prefills
its distinct contexts once, `engine.prefill_shared`). Both deduplicate (context, task) pairs; the
difference is only the contexts' prefill. The sequence: --gepa_iters GEPA iterations (parent on
a minibatch, a new child on the same minibatch, the child on the anchor set) and --rl_steps RL
steps (--problems × --group rows over the --k exported contexts; every step after the first
has new params, as after an update, so the cache starts over there), every call with
--new_tokens tokens (decode is the same on both sides; keep it short). Contexts are long
(~--context_tokens tokens, the kind GEPA writes) in a bank of --max_len columns (the default
config's max_context_len).

Warm-up (one round per side, all compiles) is excluded; each timed round is the wall time of its
whole call sequence (`Sampler.sample` returns host texts: synchronous). The last line is one JSON
object: seconds per round per side (mean, SE over rounds), prefill seconds, and the ratio
uncached / cached (> 1: the cache saves time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax

from fst_jax.models import EMBEDDED_NAME
from fst_jax.sampling import Sampler, SamplingParams, build_bank

INSTRUCTION = (
    "Read the problem carefully, restate what is asked, list the given quantities, solve step "
    "by step checking each intermediate result, and end with the final answer alone on the last "
    "line in the format the task requests. Prefer exact arithmetic; avoid rounding early."
)
WORDS = INSTRUCTION.split(" ")
TASKS = [
    "What is 17 + 25?", "A train travels 60 km in 45 minutes. What is its speed in km/h?",
    "How many primes are there below 30?", "Simplify (3x + 2x) * 4.",
    "What is 15% of 240?", "If a = 3 and b = 4, what is sqrt(a^2 + b^2)?",
    "Name the capital of Australia.", "How many minutes are in 3.5 hours?",
    "What is the next number: 2, 6, 12, 20, ?", "Convert 5 miles to kilometres (1 mile = 1.609 km).",
    "What is 2^10?", "How many edges does a cube have?",
]  # fmt: skip


def _context(i: int, n_tokens: int, tok) -> str:
    """A distinct instruction text of about `n_tokens` tokens."""
    text, k = f"Context #{i}.", i
    while len(tok.encode(text)) < n_tokens:
        text += " " + WORDS[k % len(WORDS)]
        k += 1
    return text


def _load(spec: str):
    if spec.startswith("random:"):
        from fst_jax.models import get_config, init_params
        from fst_jax.models.random_init import tiny_tokenizer

        cfg = get_config(spec.split(":", 1)[1])
        return cfg, init_params(cfg, jax.random.key(0)), tiny_tokenizer()
    from fst_jax.models import load

    return load(spec)


def _round(sampler, params, tok, args, r: int, timings_out: list[float]) -> None:
    """One cycle's calls; contexts new to this round are the GEPA children."""
    sp = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    exported = [_context(100 * r + i, args.context_tokens, tok) for i in range(args.k)]
    children = [
        _context(100 * r + 50 + i, args.context_tokens, tok) for i in range(args.gepa_iters)
    ]
    bank = build_bank(tok, exported + children, max_prompts=args.k + args.gepa_iters,
                      max_len=args.max_len)  # fmt: skip
    key = jax.random.key(r)

    def call(idx, tasks):
        t: dict[str, float] = {}
        sampler.sample(params, bank, idx, tasks, key, sp, timings=t)
        timings_out.append(t["prefill_s"])

    mb, anchors = TASKS[: args.minibatch], TASKS[: args.anchors]
    for it in range(args.gepa_iters):
        parent, child = it % args.k, args.k + it
        call([parent] * len(mb), mb)
        call([child] * len(mb), mb)
        call([child] * len(anchors), anchors)
    rows = args.problems * args.group
    idx = [i % args.k for i in range(rows)]
    for step in range(args.rl_steps):
        if step:  # an update made new params: the cache starts over (same values, new arrays)
            params = jax.tree.map(lambda x: x + 0, params)
        tasks = [TASKS[(step * args.problems + i // args.group) % len(TASKS)] for i in range(rows)]
        call(idx, tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=EMBEDDED_NAME, help="model spec, or random:<config>")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--gepa_iters", type=int, default=3)
    ap.add_argument("--minibatch", type=int, default=3)
    ap.add_argument("--anchors", type=int, default=8)
    ap.add_argument("--rl_steps", type=int, default=2)
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=2)
    ap.add_argument("--context_tokens", type=int, default=150)
    ap.add_argument("--max_len", type=int, default=192)
    args = ap.parse_args()

    config, params, tok = _load(args.model)
    sides = {"cached": Sampler(config, tok), "uncached": Sampler(config, tok, context_cache=0)}
    walls: dict[str, list[float]] = {k: [] for k in sides}
    prefill: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds + 1):  # round 0: warm-up (compiles), not timed
        for name in sorted(sides) if r % 2 else sorted(sides, reverse=True):
            pre: list[float] = []
            t0 = time.perf_counter()
            _round(sides[name], params, tok, args, r, pre)
            wall = time.perf_counter() - t0
            if r:
                walls[name].append(wall)
                prefill[name].append(sum(pre))
            print(f"round {r} {name}: {wall:.2f} s (prefill {sum(pre):.2f} s)", flush=True)

    def stat(xs: list[float]) -> dict[str, float]:
        se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
        return {"mean": statistics.fmean(xs), "se": se}

    cc = sides["cached"].context_cache
    out = {
        "model": args.model, "backend": jax.default_backend(), "args": vars(args),
        "round_s": {k: stat(v) for k, v in walls.items()},
        "prefill_s": {k: stat(v) for k, v in prefill.items()},
        "context_cache": {"hits": cc.hits, "misses": cc.misses, "bytes": cc.nbytes()},
        "ratio_round_uncached_over_cached": statistics.fmean(walls["uncached"])
        / statistics.fmean(walls["cached"]),
        "ratio_prefill_uncached_over_cached": statistics.fmean(prefill["uncached"])
        / statistics.fmean(prefill["cached"]),
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
