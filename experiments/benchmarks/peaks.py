"""This machine's compute peak and read bandwidth, measured in the benchmark's own run.

MFU and roofline figures need the peak of the machine the benchmark runs on, not a nominal one:
shared hosts differ (an AMD Zen 4 without AMX and an Intel Xeon with AMX have been seen here, with
fp32 peaks of 166 and 333 GFLOP/s and very different bf16 rates), and load from other jobs moves
everything. So every benchmark measures, in the same run:

* `matmul_gflops(dtype)`: best of a few 2048² matmuls in JAX (bf16 inputs accumulate in f32, the
  decoder's setting) and, when torch is importable, in torch; the peak is the larger of the two,
  i.e. what this CPU demonstrably sustains with the best library at hand.
* `read_bandwidth_gbs()`: best of 5 numpy sums over 256 MiB (a read-bandwidth estimate that
  needs no STREAM install).
"""

from __future__ import annotations

import time

import numpy as np

N = 2048


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def jax_matmul_gflops(dtype: str = "float32", repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).standard_normal((N, N)), dtype)
    f = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
    return 2 * N**3 / _best(lambda: f(x).block_until_ready(), repeats) / 1e9


def torch_matmul_gflops(dtype: str = "float32", repeats: int = 5) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    x = torch.randn(N, N, dtype=getattr(torch, dtype))
    with torch.no_grad():
        return 2 * N**3 / _best(lambda: x @ x, repeats) / 1e9


def matmul_peaks(dtype: str = "float32") -> dict[str, float | None]:
    """{"jax": GFLOP/s, "torch": GFLOP/s or None, "peak": the larger} for `dtype` matmuls."""
    j = jax_matmul_gflops(dtype)
    t = torch_matmul_gflops(dtype)
    return {"jax": j, "torch": t, "peak": max(j, t or 0.0)}


def read_bandwidth_gbs() -> float:
    x = np.ones((64 * 1024 * 1024,), np.float32)
    return x.nbytes / _best(x.sum, 5) / 1e9
