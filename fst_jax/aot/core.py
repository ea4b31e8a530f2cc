"""AOT memory plan, part 1: compile the real train step and sampler from abstract shapes.

See `fst_jax.aot` for the tool; this module turns one candidate (mesh, remat, micro-batches,
sampler calls) into per-device byte counts read from the compiled executables.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Slice:
    """An accelerator slice as the memory plan sees it: chips (= JAX devices) × HBM per chip."""

    name: str
    chips: int
    hbm_gib: float


SLICES: dict[str, Slice] = {
    s.name: s
    for s in (
        # v5p-N has N TensorCores = N/2 chips (one JAX device per chip, megacore), 95 GiB each.
        Slice("v5p-8", 4, 95.0),
        Slice("v5p-32", 16, 95.0),
        Slice("v5p-64", 32, 95.0),
        Slice("v5p-128", 64, 95.0),
        # v4-N: N/2 chips, 32 GiB each.
        Slice("v4-8", 4, 32.0),
        Slice("v4-64", 32, 32.0),
        # Fake CPU meshes for CI (the "HBM" is a nominal 16 GiB).
        Slice("cpu-8", 8, 16.0),
    )
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One RL step's shapes: rows = problems × group; sequence = prompt + response tokens."""

    problems: int = 32
    group: int = 8
    prompt_len: int = 2048  # composed prompt: bank context + task + template suffix
    response_len: int = 8192  # max_new_tokens
    bank_prompts: int = 8  # population slots in the prompt bank (P)
    bank_len: int = 512  # bank row length (Lp); the task bucket is the rest of prompt_len

    @property
    def rows(self) -> int:
        return self.problems * self.group

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len


PAPER_WORKLOAD = Workload()  # Qwen3-8B FST: 32 problems × G=8, 2048 + 8192 tokens


@dataclasses.dataclass(frozen=True)
class Point:
    """One candidate: mesh (data, fsdp, tensor), remat policy, micro-batches per update, and how
    many sequential sampler calls produce the step's rows (each call: rows / sample_chunks)."""

    data: int
    fsdp: int
    tensor: int
    remat: str = "layer"
    microbatches: int = 1
    sample_chunks: int = 1

    @property
    def batch_shards(self) -> int:
        return self.data * self.fsdp

    def label(self) -> str:
        return (
            f"data={self.data} fsdp={self.fsdp} tensor={self.tensor} remat={self.remat} "
            f"microbatches={self.microbatches} sampler_calls={self.sample_chunks}"
        )


def memory_stats(compiled: Any) -> dict[str, int]:
    """Per-device bytes of a compiled executable; `total` = what must be live at the peak."""
    m = compiled.memory_analysis()
    out = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "temps": int(m.temp_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
    }
    # Donated inputs share buffers with outputs (alias), so count them once.
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temps"] + out["code"]
    return out


def _abstract(shapes: Any, shardings: Any) -> Any:
    import jax

    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def _device_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (max over devices)."""
    import jax
    import numpy as np

    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def model_for(model: str, point: Point, param_dtype: str, dtype: str) -> Any:
    from fst_jax.models.config import get_config

    return get_config(
        model, remat=point.remat, scan_layers=True, param_dtype=param_dtype, dtype=dtype
    )


def compile_train_step(model_config: Any, mesh: Any, workload: Workload, microbatches: int):
    """Lower + compile the real RL update (CISPO) on abstract state and batch.

    Returns (compiled, per-device bytes of the train state: params + AdamW moments + counters,
    the abstract (state, batch) it was lowered with).
    """
    import jax
    import jax.numpy as jnp

    from fst_jax import sharding
    from fst_jax.models.decoder import param_shapes
    from fst_jax.rl.batch import RLBatch
    from fst_jax.rl.train_step import RLConfig, TrainState, make_train_step

    step = make_train_step(model_config, mesh, RLConfig(num_microbatches=microbatches))
    pshapes = param_shapes(model_config)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    shapes = TrainState(
        step=scalar,
        params=pshapes,
        opt_state=jax.eval_shape(step.optimizer.init, pshapes),
        skipped=scalar,
    )
    state = _abstract(shapes, step.state_shardings)
    b, s = workload.rows, workload.seq_len
    bs = sharding.batch_sharding(mesh)

    def arr(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=bs)

    batch = RLBatch(
        tokens=arr((b, s), jnp.int32),
        positions=arr((b, s), jnp.int32),
        completion_mask=arr((b, s), jnp.float32),
        old_logps=arr((b, s), jnp.float32),
        ref_logps=arr((b, s), jnp.float32),
        advantages=arr((b,), jnp.float32),
        row_weight=arr((b,), jnp.float32),
        row_valid=arr((b,), jnp.float32),
        group_ids=arr((b,), jnp.int32),
    )
    return step.jitted.lower(state, batch).compile(), _device_bytes(state), (state, batch)


def compile_sampler(model_config: Any, mesh: Any, workload: Workload, rows: int):
    """Lower + compile the sampler's prefill and decode for one call of `rows` rows.

    Sampling layout as `fst_jax.sampling` runs it: matrices cast to `config.dtype`, weights under
    `SAMPLE_RULES` (tensor-parallel, replicated over data×fsdp), rows over data×fsdp, a fresh KV
    cache of prompt + response length. Returns (prefill, decode, per-device sampler-param bytes).
    """
    import jax
    import jax.numpy as jnp

    from fst_jax import sharding
    from fst_jax.models.decoder import param_shapes
    from fst_jax.sampling import engine
    from fst_jax.sampling.select import SamplingParams

    dt = jnp.dtype(model_config.dtype)
    pshapes = jax.tree.map(  # what cast_params_for_sampling produces
        lambda x: jax.ShapeDtypeStruct(x.shape, dt if len(x.shape) >= 2 else x.dtype),
        param_shapes(model_config),
    )
    params = _abstract(pshapes, sharding.param_shardings(model_config, mesh, sharding.SAMPLE_RULES))
    rep, bs = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    w = workload
    suffix_len = 8
    task_len = w.prompt_len - w.bank_len - suffix_len
    if task_len < 1:
        raise ValueError(
            f"prompt_len={w.prompt_len} leaves no room for a task after bank_len={w.bank_len} and "
            f"a {suffix_len}-token suffix; raise prompt_len or lower bank_len"
        )

    def a(shape, dtype, s=rep):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    sampling = SamplingParams(temperature=1.0, max_new_tokens=w.response_len)
    static = (model_config, sampling, 0, (1, 2))
    key = jax.eval_shape(lambda: jax.random.key(0))
    pre_args = (
        params,
        a((w.bank_prompts + 1, w.bank_len), jnp.int32),
        a((w.bank_prompts + 1,), jnp.int32),
        a((suffix_len,), jnp.int32),
        a((), jnp.int32),
        a((rows,), jnp.int32, bs),
        a((rows, task_len), jnp.int32, bs),
        a((rows,), jnp.int32, bs),
        a((rows,), jnp.int32, bs),
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
    )
    pre = engine.prefill.lower(*static, *pre_args).compile()
    # Decode takes prefill's output state, with the shardings prefill produced.
    state_shapes = jax.eval_shape(lambda *xs: engine.prefill(*static, *xs), *pre_args)
    state = _abstract(state_shapes, pre.output_shardings)
    dec = engine.decode.lower(*static, params, state).compile()
    return pre, dec, _device_bytes(params)


def budget_bytes(sl: Slice, budget: float) -> int:
    return int(budget * sl.hbm_gib * GIB)


def _check_split(rows: int, parts: int, shards: int, what: str) -> None:
    if rows % parts or (rows // parts) % shards:
        raise ValueError(
            f"{rows} rows in {parts} {what} cannot be split over data×fsdp={shards}; pick sizes "
            f"whose product divides the batch"
        )


def _mesh_for(point: Point):
    import jax

    from fst_jax import sharding

    n = point.batch_shards * point.tensor
    devices = jax.devices()
    if len(devices) < n:
        raise ValueError(
            f"{point.label()} needs {n} devices but this process has {len(devices)}; start it "
            f"with XLA_FLAGS=--xla_force_host_platform_device_count={n} (plan() does this)."
        )
    return sharding.make_mesh((point.data, point.fsdp, point.tensor), devices[:n])


def evaluate_train(
    model: str, point: Point, workload: Workload, *, param_dtype: str, dtype: str
) -> dict[str, Any]:
    """Compile the train step for one candidate on this process's (fake) devices."""
    _check_split(workload.rows, point.microbatches, point.batch_shards, "micro-batches")
    mesh = _mesh_for(point)
    t0 = time.perf_counter()
    compiled, state_bytes, _ = compile_train_step(
        model_for(model, point, param_dtype, dtype), mesh, workload, point.microbatches
    )
    return {
        "train": memory_stats(compiled),
        "train_state": state_bytes,
        "train_compile_s": round(time.perf_counter() - t0, 1),
    }


def evaluate_sampler(
    model: str, point: Point, workload: Workload, state_bytes: int, *, param_dtype: str, dtype: str
) -> dict[str, Any]:
    """Compile prefill + decode for rows / sample_chunks rows; the train state stays resident."""
    _check_split(workload.rows, point.sample_chunks, point.batch_shards, "sampler calls")
    mesh = _mesh_for(point)
    t0 = time.perf_counter()
    pre, dec, pbytes = compile_sampler(
        model_for(model, point, param_dtype, dtype),
        mesh,
        workload,
        workload.rows // point.sample_chunks,
    )
    res = {
        "prefill": memory_stats(pre),
        "decode": memory_stats(dec),
        "sampler_params": pbytes,
        "sampler_compile_s": round(time.perf_counter() - t0, 1),
    }
    res["sample_total"] = state_bytes + max(res["prefill"]["total"], res["decode"]["total"])
    return res


def evaluate_point(
    model: str,
    point: Point,
    workload: Workload,
    *,
    param_dtype: str,
    dtype: str,
    sampler: bool = True,
) -> dict[str, Any]:
    """Train step (+ sampler) memory for one fully specified candidate."""
    res: dict[str, Any] = {"point": dataclasses.asdict(point)}
    res.update(evaluate_train(model, point, workload, param_dtype=param_dtype, dtype=dtype))
    if sampler:
        res.update(
            evaluate_sampler(
                model, point, workload, res["train_state"], param_dtype=param_dtype, dtype=dtype
            )
        )
    res["peak"] = max(res["train"]["total"], res.get("sample_total", 0))
    return res
