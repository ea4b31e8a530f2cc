"""Ahead-of-time memory plan: will the FST train step and sampler fit on a TPU slice?

Lowers and compiles the real jitted functions — the CISPO update from `fst_jax.rl.make_train_step`
and the sampler's `prefill` / `decode` from `fst_jax.sampling.engine` — for a named model config on
a fake mesh of N CPU devices, from abstract inputs (`jax.ShapeDtypeStruct` with shardings: no
weights are allocated), and reads per-device memory from the compiled executable
(`compiled.memory_analysis()`: arguments, outputs, temporaries, generated code, aliasing).

The numbers come from XLA:CPU's SPMD partitioner and buffer assignment, a proxy for XLA:TPU: the
sharding (and so argument/output sizes) is exact, temporaries can differ (different fusion,
layout padding, bf16 handling, no TPU-specific rematerialisation). Keep the 20 % headroom.

    # CI-sized: tiny model on 8 fake devices (~1 min)
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
Each slice runs in a fresh subprocess (the fake device count is fixed at JAX start-up).
"""

from fst_jax.aot.core import (
    GIB,
    PAPER_WORKLOAD,
    SLICES,
    Point,
    Slice,
    Workload,
    budget_bytes,
    compile_sampler,
    compile_train_step,
    evaluate_point,
    evaluate_sampler,
    evaluate_train,
    memory_stats,
    model_for,
)
from fst_jax.aot.plan import (
    _grow,
    _max_split,
    _parse_mesh,
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
    "_grow",
    "_max_split",
    "_parse_mesh",
    "budget_bytes",
    "compile_sampler",
    "compile_train_step",
    "default_points",
    "evaluate_point",
    "evaluate_sampler",
    "evaluate_train",
    "main",
    "markdown_table",
    "memory_stats",
    "model_for",
    "plan",
    "recommend",
    "recommendations",
    "search_point",
    "search_slice",
]
