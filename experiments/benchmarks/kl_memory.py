"""Peak host RSS and time of the KL monitor (`val/kl_to_base`): all rows at once vs micro-batches.

    python experiments/benchmarks/kl_memory.py --rows 32 --seq 320 --out kl.json

Each variant runs in a fresh subprocess (so one's freed-but-mapped memory cannot inflate the
other's peak) on SmolLM2-135M shapes with random weights (memory and time do not depend on the
values) and two parameter trees, as at an evaluation: θ and θ_base. Per variant: RSS before the
first call, peak during call 1 (compile + run) and call 2 (run), seconds of each, and the KL
values, which must agree between variants. WHY: the default run's first evaluation peaked here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

VARIANTS = ("unchunked", "chunked")


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _child(variant: str, rows: int, seq: int, rows_per_chunk: int, model: str) -> dict:
    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], _rss_gib())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    from fst_jax import host_memory

    host_memory.configure_malloc()  # as fst-train does
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fst_jax import sharding
    from fst_jax.models import get_config, init_params
    from fst_jax.rl import kl

    cfg = get_config(model)
    p = init_params(cfg, jax.random.PRNGKey(0))
    b = jax.tree.map(lambda x: x + 0.01 * jnp.sign(x), p)
    rng = np.random.default_rng(0)
    batch = argparse.Namespace(
        tokens=rng.integers(0, cfg.vocab_size, (rows, seq)).astype(np.int32),
        positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy(),
        completion_mask=np.zeros((rows, seq), np.int32),
    )
    batch.completion_mask[:, -64:] = 1
    mesh = sharding.single_device_mesh()
    if variant == "chunked":
        measure = kl.make_measure_kl(cfg, mesh, rows_per_chunk=rows_per_chunk)
    else:  # the computation before micro-batching: one kl_sums over every row

        @jax.jit
        def unchunked(params, base, tokens, positions, mask):
            sums = kl.kl_sums(cfg, params, base, tokens, positions, mask)
            return {k: s / jnp.maximum(c, 1.0) for k, (s, c) in sums.items()}

        def measure(params, base, x):
            return unchunked(params, base, x.tokens, x.positions, x.completion_mask)

    jax.block_until_ready(b)
    host_memory.trim()
    out: dict = {"variant": variant, "before_gib": round(_rss_gib(), 3)}
    for call in (1, 2):
        peak[0] = _rss_gib()
        t0 = time.perf_counter()
        values = jax.device_get(measure(p, b, batch))
        out[f"call{call}_s"] = round(time.perf_counter() - t0, 2)
        out[f"call{call}_peak_gib"] = round(peak[0], 3)
        host_memory.trim()
    out["kl"] = {k: float(values[k]) for k in ("k1", "k2", "k3", "full")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32, help="eval.kl_examples")
    ap.add_argument("--seq", type=int, default=320, help="row width (prompt + completion)")
    ap.add_argument("--rows_per_chunk", type=int, default=8)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.rows, a.seq, a.rows_per_chunk, a.model)))
        return
    results = []
    for v in a.variants.split(","):
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown {v!r}; use {', '.join(VARIANTS)}")
        cmd = [sys.executable, __file__, "--child", v, "--rows", str(a.rows), "--seq", str(a.seq),
               "--rows_per_chunk", str(a.rows_per_chunk), "--model", a.model]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    res = {"rows": a.rows, "seq": a.seq, "rows_per_chunk": a.rows_per_chunk, "runs": results}
    if len(results) == 2:
        u, c = results
        res["extra_gib"] = {
            r["variant"]: round(r["call2_peak_gib"] - r["before_gib"], 3) for r in results
        }
        res["call2_time_ratio_chunked_over_unchunked"] = round(c["call2_s"] / u["call2_s"], 3)
        res["max_rel_diff"] = max(
            abs(c["kl"][k] - u["kl"][k]) / max(abs(u["kl"][k]), 1e-12) for k in u["kl"]
        )
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            f.write(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
