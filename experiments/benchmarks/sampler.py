"""Decode throughput of the fst_jax sampler vs HF transformers `generate` on SmolLM2-135M.

    flock /tmp/fst_heavy.lock python experiments/benchmarks/sampler.py [--batch_sizes 8,32]

Both sides decode the same chat prompts greedily for exactly --new_tokens tokens (EOS ignored),
in one process, one after the other. Decode tokens/s = B * (steps after the first token) / decode
time (prefill timed separately; HF's prefill is its max_new_tokens=1 run). The roofline is this
CPU's: per decode step, time >= max(bytes / bandwidth, flops / peak), with bandwidth and peak
measured in this run (`peaks.py`: numpy sum over 256 MiB; the best 2048² matmul of JAX and torch in
the decode dtype); bytes = weights (in the decode dtype) + the KV cache actually attended to.
The last line printed is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# XLA flags must be set before jax is imported: `--xla_flags "--xla_cpu_use_xnnpack=true"`.
for _i, _a in enumerate(sys.argv):
    if _a.startswith("--xla_flags"):
        _v = _a.split("=", 1)[1] if "=" in _a else sys.argv[_i + 1]
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _v).strip()

import _common  # noqa: E402  (experiments/benchmarks/_common.py, next to this script)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import peaks  # noqa: E402  (experiments/benchmarks/peaks.py, next to this script)

from fst_jax.models import load  # noqa: E402
from fst_jax.models.embedded import embedded_checkpoint_dir  # noqa: E402
from fst_jax.sampling import Sampler, SamplingParams, build_bank  # noqa: E402

CONTEXT = "You are a careful assistant. Think step by step and answer concisely."
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


def roofline_tok_s(config, batch, ctx, bytes_per_w, bytes_per_kv, bw_gbs, peak_gflops) -> dict:
    """Upper bound on decode tokens/s for one step at batch `batch` and context length `ctx`."""
    d, lyr = config.hidden_size, config.num_layers
    h, kvh, hd = config.num_heads, config.num_kv_heads, config.head_dim
    # Weights read per step: everything except (when untied) the input embedding, of which
    # only B rows are gathered. Tied: the embedding matrix is the unembedding matmul.
    read_params = config.num_params
    if not config.tie_word_embeddings:
        read_params -= config.vocab_size * d
    matmul_params = read_params - d * (2 * lyr + 1)  # the norm scales are not matmuls
    kv_bytes = 2 * lyr * batch * ctx * kvh * hd * bytes_per_kv
    nbytes = read_params * bytes_per_w + kv_bytes
    flops = 2 * batch * matmul_params + 4 * batch * lyr * h * hd * ctx
    t = max(nbytes / (bw_gbs * 1e9), flops / (peak_gflops * 1e9))
    return {
        "tok_s": batch / t,
        "bound": "memory" if nbytes / bw_gbs > flops / peak_gflops else "compute",
    }


def bench_fst(config, params, tok, batch, new_tokens, repeats):
    sampler = Sampler(config, tok, batch_buckets=(batch,))
    bank = build_bank(tok, [CONTEXT], max_prompts=4, max_len=64)
    tasks = sampler.encode_tasks(bank, [TASKS[i % len(TASKS)] for i in range(batch)])
    sp = SamplingParams(greedy=True, max_new_tokens=new_tokens, ignore_eos=True)
    idx = np.zeros((batch,), np.int32)
    t = time.perf_counter()
    sampler.sample(params, bank, idx, tasks, jax.random.PRNGKey(0), sp)  # compile
    compile_s = time.perf_counter() - t
    runs = []
    for r in range(repeats):
        timings: dict = {}
        out = sampler.sample(params, bank, idx, tasks, jax.random.PRNGKey(r), sp, timings=timings)
        runs.append(timings)
    best = min(runs, key=lambda x: x["decode_s"])
    steps = best["steps"] - 1  # tokens produced by the decode loop (the first comes from prefill)
    prompt_len = float(np.mean(np.asarray(out.prompt_lengths)))
    return {
        "decode_tok_s": batch * steps / best["decode_s"],
        "ms_per_step": 1e3 * best["decode_s"] / steps,
        "prefill_s": best["prefill_s"],
        "compile_s": compile_s,
        "prompt_len": prompt_len,
        "sample_text": out.texts[0][:80],
        "prompts": [
            tok.decode(np.asarray(out.tokens)[b, : int(out.prompt_lengths[b])].tolist())
            for b in range(batch)
        ],
    }


def bench_hf(model, tok, prompts, new_tokens, repeats):
    import torch

    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)

    def gen(n):
        with torch.no_grad():
            return model.generate(**enc, max_new_tokens=n, min_new_tokens=n, **kw)

    gen(2)  # warm-up
    t1 = min(_common.timed(lambda: gen(1)) for _ in range(repeats))
    tn = min(_common.timed(lambda: gen(new_tokens)) for _ in range(repeats))
    b = len(prompts)
    return {
        "decode_tok_s": b * (new_tokens - 1) / (tn - t1),
        "ms_per_step": 1e3 * (tn - t1) / (new_tokens - 1),
        "prefill_s": t1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch_sizes", default="8,32")
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", help="fst_jax decode dtype")
    ap.add_argument("--hf_dtypes", default="float32,bfloat16", help="peer dtypes; best is used")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xla_flags", default="", help="extra XLA_FLAGS (applied before jax import)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    config, params, tok = load("smollm2-135m-instruct", dtype=args.dtype)
    bw = peaks.read_bandwidth_gbs()
    mm = peaks.matmul_peaks(args.dtype)
    peak = mm["peak"]
    wbytes = jnp.dtype(args.dtype).itemsize
    print(
        f"devices={jax.devices()} bandwidth={bw:.1f} GB/s; {args.dtype} 2048^2 matmul: "
        f"jax {mm['jax']:.0f}, torch {mm['torch'] or 0:.0f} -> peak {peak:.0f} GFLOP/s"
    )

    hf_models = {
        dt: transformers.AutoModelForCausalLM.from_pretrained(
            embedded_checkpoint_dir(), dtype=getattr(torch, dt)
        ).eval()
        for dt in args.hf_dtypes.split(",")
    }
    result: dict = {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "model": "smollm2-135m-instruct",
        "new_tokens": args.new_tokens,
        "fst_dtype": args.dtype,
        "bandwidth_gbs": bw,
        "peak_gflops": peak,
        "matmul_gflops": mm,
    }
    for b in batches:
        ours = bench_fst(config, params, tok, b, args.new_tokens, args.repeats)
        prompts = ours.pop("prompts")
        ctx = ours["prompt_len"] + args.new_tokens / 2
        roof = roofline_tok_s(config, b, ctx, wbytes, wbytes, bw, peak)
        print(
            f"B={b} fst_jax: {ours['decode_tok_s']:.1f} tok/s ({ours['ms_per_step']:.1f} ms/step, "
            f"prefill {ours['prefill_s']:.2f} s, compile {ours['compile_s']:.1f} s) "
            f"roofline {roof['tok_s']:.0f} tok/s ({roof['bound']}-bound) -> "
            f"{ours['decode_tok_s'] / roof['tok_s']:.1%}"
        )
        peers = {}
        for dt, m in hf_models.items():
            peers[dt] = bench_hf(m, tok, prompts, args.new_tokens, args.repeats)
            print(
                f"B={b} HF generate {dt}: {peers[dt]['decode_tok_s']:.1f} tok/s "
                f"({peers[dt]['ms_per_step']:.1f} ms/step)"
            )
        best_dt = max(peers, key=lambda k: peers[k]["decode_tok_s"])
        ratio = ours["decode_tok_s"] / peers[best_dt]["decode_tok_s"]
        print(f"B={b} ratio fst_jax / best HF ({best_dt}) = {ratio:.2f}x")
        result[f"B{b}"] = {
            "fst_tok_s": ours["decode_tok_s"],
            "fst_ms_per_step": ours["ms_per_step"],
            "fst_prefill_s": ours["prefill_s"],
            "hf_tok_s": {k: v["decode_tok_s"] for k, v in peers.items()},
            "hf_best_dtype": best_dt,
            "ratio_vs_best_hf": ratio,
            "roofline_tok_s": roof["tok_s"],
            "roofline_bound": roof["bound"],
            "roofline_fraction": ours["decode_tok_s"] / roof["tok_s"],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
