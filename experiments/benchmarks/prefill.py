"""Prefill throughput of SmolLM2-135M: fst_jax `forward` vs HF transformers (torch), same run.

    flock /tmp/fst_heavy.lock .venv/bin/python experiments/benchmarks/prefill.py \
        [--batch 8 --seq 256 --dtypes float32,bfloat16 --repeats 3]

Both sides run the same [batch, seq] token block through the full model with full logits, on the
same weights (the embedded model's cached HF dir), one after the other in one process. Time is
the median of --repeats calls after a warm-up (the jit compile is reported separately).
FLOPs are the matmul FLOPs both implementations execute: 2 x (projection + MLP params) per token,
the vocab projection, and the full T x T attention score/value matmuls (neither side skips the
masked half). MFU is against this CPU's matmul peak in the same dtype, measured in this run
(`peaks.py`: the best 2048² matmul of JAX and torch), not a nominal figure.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
import jax.numpy as jnp
import numpy as np
import peaks  # experiments/benchmarks/peaks.py, next to this script

from fst_jax.models import ModelConfig, forward, load
from fst_jax.models.embedded import embedded_checkpoint_dir
from fst_jax.models.hf import config_from_hf, read_hf_config
from fst_jax.models.loading import is_embedded


def prefill_flops(c: ModelConfig, batch: int, seq: int) -> float:
    d, f, v = c.hidden_size, c.intermediate_size, c.vocab_size
    attn_proj = d * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    per_token = c.num_layers * (attn_proj + 3 * d * f) + d * v
    attn_scores = c.num_layers * 2 * seq * c.num_heads * c.head_dim  # QK^T and PV, per token
    return 2.0 * batch * seq * (per_token + attn_scores)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_jax(spec: str, dtype: str, tokens: np.ndarray, repeats: int):
    config, params, _ = load(spec, dtype=dtype)
    fwd = jax.jit(lambda p, t: forward(config, p, t)[0])
    t = jnp.asarray(tokens)
    t0 = time.perf_counter()
    logits = fwd(params, t).block_until_ready()
    compile_s = time.perf_counter() - t0
    sec = _median_time(lambda: fwd(params, t).block_until_ready(), repeats)
    return config, np.asarray(logits[0, -8:], np.float32), sec, compile_s


def bench_torch(path: str, dtype: str, tokens: np.ndarray, repeats: int):
    import torch
    import transformers

    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=tdt).eval()
    t = torch.from_numpy(tokens).long()
    with torch.inference_mode():
        logits = model(t).logits  # warm-up
        sec = _median_time(lambda: model(t).logits, repeats)
    return logits[0, -8:].float().numpy(), sec, torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="HF dir or embedded name")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = embedded_checkpoint_dir() if is_embedded(args.model) else args.model

    results = {
        "model": args.model,
        "batch": args.batch,
        "seq": args.seq,
        "jax": jax.__version__,
        "devices": str(jax.devices()[0].platform),
    }
    for dtype in args.dtypes.split(","):
        config = config_from_hf(read_hf_config(path))
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq), dtype=np.int32)
        flops = prefill_flops(config, args.batch, args.seq)
        mm = peaks.matmul_peaks(dtype)
        _, ours_logits, ours_s, compile_s = bench_jax(path, dtype, tokens, args.repeats)
        ref_logits, ref_s, threads = bench_torch(path, dtype, tokens, args.repeats)
        n = args.batch * args.seq
        row = {
            "fst_jax_s": ours_s,
            "fst_jax_compile_s": compile_s,
            "fst_jax_tok_s": n / ours_s,
            "fst_jax_gflops": flops / ours_s / 1e9,
            "fst_jax_mfu": flops / ours_s / 1e9 / mm["peak"],
            "hf_torch_s": ref_s,
            "hf_torch_tok_s": n / ref_s,
            "hf_torch_gflops": flops / ref_s / 1e9,
            "hf_torch_mfu": flops / ref_s / 1e9 / mm["peak"],
            "matmul_gflops": mm,
            "torch_threads": threads,
            "speedup_fst_jax_over_hf": ref_s / ours_s,
            "gflop_per_prefill": flops / 1e9,
            "max_abs_logit_diff_last8": float(np.abs(ours_logits - ref_logits).max()),
        }
        results[dtype] = row
        print(
            f"{dtype:9s} fst_jax {ours_s:6.2f}s {row['fst_jax_tok_s']:7.0f} tok/s "
            f"{row['fst_jax_gflops']:6.1f} GFLOP/s MFU {row['fst_jax_mfu']:5.1%} (compile "
            f"{compile_s:.1f}s) | HF torch {ref_s:6.2f}s {row['hf_torch_tok_s']:7.0f} tok/s "
            f"{row['hf_torch_gflops']:6.1f} GFLOP/s MFU {row['hf_torch_mfu']:5.1%} | "
            f"fst_jax/HF speed ratio {row['speedup_fst_jax_over_hf']:.2f}x | "
            f"max|Δlogit| {row['max_abs_logit_diff_last8']:.1e}",
            flush=True,
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
