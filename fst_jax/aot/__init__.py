"""Ahead-of-time plan: will the FST train step and sampler fit on a TPU slice, and how fast?

Lowers and compiles the real jitted functions — the CISPO update from `fst_jax.rl.make_train_step`
and the sampler's `prefill_stored` (contexts read from the context store) / `store_contexts` /
`decode` (and, with ``--stream_chunk``, the streaming `decode_chunk` fst-serve runs) from
`fst_jax.sampling.engine` — for a named model config from abstract inputs
(`jax.ShapeDtypeStruct` with shardings: no weights are allocated), with the real TPU compiler on
a TPU topology described by libtpu (`fst_jax.aot.tpu`; no TPU needed), and
reads per-chip HBM from `compiled.memory_analysis()` (arguments, outputs, temporaries, generated
code, aliasing). For the recommended candidate, `cost_analysis()` (flops, bytes, the compiler's
`optimal_seconds`, loop-corrected: see `estimate_costs`) gives an estimated step time, MFU and
decode tokens/s against the chip's peak FLOP/s and HBM bandwidth. Estimates, not measurements:
they assume perfect overlap and ignore collectives' link time.

`--compiler=cpu_proxy` compiles with XLA:CPU on fake CPU devices instead (labelled as a proxy:
shardings and argument sizes are exact, temporaries differ from TPU's). Keep the 20 % headroom.

    # CI-sized: tiny model on 8 fake devices
    python -m fst_jax.aot --model=tiny_qwen3 --slices=cpu-8 --problems=4 --group=4 \
        --prompt_len=48 --response_len=32 --bank_len=16 --markdown
    # the paper's setup: Qwen3-8B, 32 problems x G=8 = 256 rows, 2048 prompt + 8192 response
    # tokens (SDPO-C's limits), f32 params + AdamW, bf16 compute, remat per layer
    python -m fst_jax.aot --model=qwen3_8b --slices=v5p-32,v5p-64,v5p-128,v4-64 --markdown \
        --json_out=plan_qwen3_8b.json [--lock_file=/tmp/fst_heavy.lock on shared machines]

For each candidate mesh (all chips on fsdp × tensor ∈ {1, 2, 4, 8}) the search raises the
train step's micro-batches and the number of sequential sampler calls per step (rows split
across calls) until each fits the budget — predicted from the last compile, then verified by
compiling. Sampling is charged with the trainer's resident state (params + AdamW moments).
Each slice runs in a fresh subprocess (libtpu's compile-only settings / the fake device count
are fixed at JAX start-up).
"""

from fst_jax.aot.core import (
    GIB,
    PAPER_WORKLOAD,
    SLICES,
    Point,
    Slice,
    Workload,
    budget_bytes,
    compile_context_store,
    compile_decode_chunk,
    compile_sampler,
    compile_train_step,
    context_store_bytes,
    cost_stats,
    estimate_costs,
    evaluate_point,
    evaluate_sampler,
    evaluate_train,
    memory_stats,
    model_flops_per_token,
    model_for,
    slice_named,
    time_estimate,
)
from fst_jax.aot.plan import (
    default_points,
    main,
    markdown_table,
    plan,
    recommend,
    recommendations,
    search_point,
    search_slice,
)

__all__ = [
    "GIB",
    "PAPER_WORKLOAD",
    "SLICES",
    "Point",
    "Slice",
    "Workload",
    "budget_bytes",
    "compile_context_store",
    "compile_decode_chunk",
    "compile_sampler",
    "compile_train_step",
    "context_store_bytes",
    "cost_stats",
    "default_points",
    "estimate_costs",
    "evaluate_point",
    "evaluate_sampler",
    "evaluate_train",
    "main",
    "markdown_table",
    "memory_stats",
    "model_flops_per_token",
    "model_for",
    "plan",
    "recommend",
    "recommendations",
    "search_point",
    "search_slice",
    "slice_named",
    "time_estimate",
]
