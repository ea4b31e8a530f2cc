"""AOT memory plan, part 1: compile the real train step and sampler from abstract shapes.

See `fst_jax.aot` for the tool; this module turns one candidate (mesh, remat, micro-batches,
sampler calls) into per-device byte counts read from the compiled executables.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Slice:
    """An accelerator slice as the memory plan sees it: chips (= JAX devices) × HBM per chip.

    `topology` ('v5p:2x4x4') names the TPU slice for the real TPU compiler; None for the fake CPU
    meshes of CI (whose "HBM" is nominal)."""

    name: str
    chips: int
    hbm_gib: float
    topology: str | None = None

    @property
    def chip(self) -> Any:
        from fst_jax.aot.tpu import parse_slice

        return parse_slice(self.topology)[0] if self.topology else None


def _tpu_slice(name: str, topology: str) -> Slice:
    from fst_jax.aot.tpu import parse_slice

    chip, topo, n = parse_slice(topology)
    return Slice(name, n, chip.hbm_gib, topo)


def slice_named(name: str) -> Slice:
    """A known slice ('v5p-64'), or any TPU topology by name ('v5p:2x4x4', 'v6e:8x8')."""
    if name in SLICES:
        return SLICES[name]
    if ":" in name:
        return _tpu_slice(name, name)
    raise ValueError(
        f"Unknown slice {name!r}; known: {', '.join(SLICES)}, or a TPU topology such as "
        "v5p:2x4x4 / v6e:4x4"
    )


# Cloud slice names: v4-N / v5p-N count TensorCores (N/2 chips, one JAX device per chip with
# megacore); v5e-N / v6e-N count chips. HBM per chip: v4 32 GiB, v5e 16, v5p 95, v6e 32.
SLICES: dict[str, Slice] = {
    s.name: s
    for s in (
        *(
            _tpu_slice(f"v5p-{2 * n}", f"v5p:{t}")
            for n, t in ((4, "2x2x1"), (16, "2x2x4"), (32, "2x4x4"), (64, "4x4x4"))
        ),
        *(
            _tpu_slice(f"v4-{2 * n}", f"v4:{t}")
            for n, t in ((4, "2x2x1"), (16, "2x2x4"), (32, "2x4x4"), (64, "4x4x4"))
        ),
        *(_tpu_slice(f"v5e-{n}", f"v5e:{t}") for n, t in ((4, "2x2"), (16, "4x4"), (64, "8x8"))),
        *(_tpu_slice(f"v6e-{n}", f"v6e:{t}") for n, t in ((4, "2x2"), (16, "4x4"), (64, "8x8"))),
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
    # decode steps per streamed call (`engine.decode_chunk`, fst-serve's --stream_chunk);
    # 0 = the plan compiles the RL sampler's whole-reply `decode` only
    stream_chunk: int = 0

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
    attention: str = "auto"  # "auto" | "xla" | "splash" (ModelConfig.attention)

    @property
    def batch_shards(self) -> int:
        return self.data * self.fsdp

    def label(self) -> str:
        return (
            f"data={self.data} fsdp={self.fsdp} tensor={self.tensor} remat={self.remat} "
            f"microbatches={self.microbatches} sampler_calls={self.sample_chunks}"
            + ("" if self.attention == "auto" else f" attention={self.attention}")
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


def model_for(
    model: str, point: Point, param_dtype: str, dtype: str, target: str | None = None
) -> Any:
    """The model config a candidate compiles: scanned layers, the point's remat and attention
    ("auto" means splash on a TPU target, XLA attention on the CPU proxy)."""
    from fst_jax.models.config import get_config

    attention = point.attention
    if attention == "auto":
        attention = "splash" if target is not None else "xla"
    return get_config(
        model,
        remat=point.remat,
        scan_layers=True,
        param_dtype=param_dtype,
        dtype=dtype,
        attention=attention,
    )


def compile_train_step(
    model_config: Any, mesh: Any, workload: Workload, microbatches: int, logit_chunk: int = 128
):
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

    step = make_train_step(
        model_config, mesh, RLConfig(num_microbatches=microbatches, logit_chunk=logit_chunk)
    )
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
    with jax.set_mesh(mesh):  # the mesh shard_map'd kernels (splash attention) partition over
        compiled = step.jitted.lower(state, batch).compile()
    return compiled, _device_bytes(state), (state, batch)


def _sampler_shapes(workload: Workload, rows: int) -> tuple[int, int, int]:
    """(contexts, pairs, task length) of one RL sampler call of `rows` rows: every bank row in
    use (the population + the no-context row, an upper bound), each problem's rollouts spread
    over min(group, contexts) of them (one prefill per (problem, context) pair)."""
    w = workload
    contexts = w.bank_prompts + 1
    problems = max(1, -(-rows // w.group))
    pairs = min(rows, problems * min(w.group, contexts))
    task_len = w.prompt_len - w.bank_len - SUFFIX_LEN
    if task_len < 1:
        raise ValueError(
            f"prompt_len={w.prompt_len} leaves no room for a task after bank_len={w.bank_len} and "
            f"a {SUFFIX_LEN}-token suffix; raise prompt_len or lower bank_len"
        )
    return contexts, pairs, task_len


SUFFIX_LEN = 8  # the chat template's assistant-turn suffix, in tokens (about)


def compile_sampler(
    model_config: Any, mesh: Any, workload: Workload, rows: int, one_step: bool = False
):
    """Lower + compile the sampler's prefill and decode for one call of `rows` rows, as the
    run's sampler makes them (`Sampler.sample` with a batch `sharding`).

    Sampling layout as `fst_jax.sampling` runs it: a copy of the weights with matrices cast to
    `config.dtype`, in the trainer's layout (FSDP × tensor), rows over data×fsdp. Prefill is
    `engine.prefill_stored`: the contexts' keys/values come from the context store (replicated,
    `DEFAULT_CONTEXT_SLOTS` × bank_len), each (problem, context) pair's task + suffix is prefilled
    once on top and broadcast to its rows' KV cache of prompt + response length
    (`engine.prefill_shared` instead when the bank has more rows than the store has slots).
    Returns (prefill, decode, per-device sampler-param bytes); `compile_context_store` compiles
    the store's fill, `compile_decode_chunk` the streaming decode.
    """
    fn, static, params, pre_args = _prefill_program(model_config, mesh, workload, rows)
    with jax.set_mesh(mesh):
        pre = fn.lower(*static, *pre_args).compile()
        state = _decode_state(fn, static, pre_args, pre)
        if one_step:
            dec = _one_decode_step.lower(*static, params, state).compile()
        else:
            from fst_jax.sampling import engine

            dec = engine.decode.lower(*static, params, state).compile()
    return pre, dec, _device_bytes(params)


def compile_decode_chunk(
    model_config: Any, mesh: Any, workload: Workload, rows: int, chunk: int, prefill: Any = None
):
    """Lower + compile `engine.decode_chunk` (streaming: `Sampler.sample_stream`, fst-serve) for
    `chunk` steps per call on the decode state of `compile_sampler`'s prefill (pass its compiled
    `prefill` to reuse it; else it is compiled here). Same loop body and donated state as
    `decode`, plus the small packed window the host reads per chunk."""
    from fst_jax.sampling import engine

    if chunk < 1:
        raise ValueError(f"stream chunk={chunk}: decode steps per call must be >= 1")
    fn, static, params, pre_args = _prefill_program(model_config, mesh, workload, rows)
    with jax.set_mesh(mesh):
        if prefill is None:
            prefill = fn.lower(*static, *pre_args).compile()
        state = _decode_state(fn, static, pre_args, prefill)
        return engine.decode_chunk.lower(*static, chunk, params, state).compile()


def _decode_state(fn: Any, static: tuple[Any, ...], pre_args: tuple[Any, ...], pre: Any) -> Any:
    """Decode's input: prefill's output state, with the shardings the compiled prefill produced."""
    state_shapes = jax.eval_shape(lambda *xs: fn(*static, *xs), *pre_args)
    return _abstract(state_shapes, pre.output_shardings)


def _prefill_program(model_config: Any, mesh: Any, workload: Workload, rows: int):
    """(jitted prefill, its static arguments, abstract sampler params, abstract arguments) of one
    sampler call of `rows` rows (see `compile_sampler`)."""
    import jax.numpy as jnp

    from fst_jax import sharding
    from fst_jax.sampling import engine

    params = _sampler_params(model_config, mesh)
    rep, bs = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    w = workload
    contexts, pairs, task_len = _sampler_shapes(w, rows)

    def a(shape, dtype, s=rep):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    static = _sampler_static(model_config, w)
    key = jax.eval_shape(lambda: jax.random.key(0))
    shared_args = (
        a((contexts, w.bank_len), jnp.int32),
        a((contexts,), jnp.int32),
        a((SUFFIX_LEN,), jnp.int32),
        a((), jnp.int32),
        a((pairs,), jnp.int32),
        a((pairs, task_len), jnp.int32),
        a((pairs,), jnp.int32),
        a((rows,), jnp.int32, bs),
        a((rows,), jnp.int32, bs),
        jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
    )
    from fst_jax.sampling.sampler import DEFAULT_CONTEXT_SLOTS

    fn, pre_args = engine.prefill_shared, (params, *shared_args)
    if contexts <= DEFAULT_CONTEXT_SLOTS:
        fn = engine.prefill_stored
        pre_args = (params, _store_shapes(model_config, mesh, w), a((contexts,), jnp.int32),
                    *shared_args)  # fmt: skip
    return fn, static, params, pre_args


def _sampler_params(model_config: Any, mesh: Any) -> Any:
    import jax.numpy as jnp

    from fst_jax import sharding
    from fst_jax.models.decoder import param_shapes

    dt = jnp.dtype(model_config.dtype)
    pshapes = jax.tree.map(  # what cast_params_for_sampling produces
        lambda x: jax.ShapeDtypeStruct(x.shape, dt if len(x.shape) >= 2 else x.dtype),
        param_shapes(model_config),
    )
    return _abstract(pshapes, sharding.param_shardings(model_config, mesh))


def _sampler_static(model_config: Any, workload: Workload) -> tuple[Any, ...]:
    """(config, sampling, pad_id, stop_ids): the static arguments of the engine's functions."""
    from fst_jax.sampling.select import SamplingParams

    sampling = SamplingParams(temperature=1.0, max_new_tokens=workload.response_len)
    return (model_config, sampling, 0, (1, 2))


def _store_shapes(model_config: Any, mesh: Any, workload: Workload) -> Any:
    """The sampler's context store (`fst_jax.sampling.ContextCache`), replicated on `mesh`."""
    from fst_jax import sharding
    from fst_jax.sampling import engine
    from fst_jax.sampling.sampler import DEFAULT_CONTEXT_SLOTS

    rep = sharding.replicated(mesh)
    shapes = jax.eval_shape(
        lambda: engine.init_context_store(model_config, DEFAULT_CONTEXT_SLOTS, workload.bank_len)
    )
    return _abstract(shapes, jax.tree.map(lambda _: rep, shapes))


def context_store_bytes(model_config: Any, mesh: Any, workload: Workload) -> int:
    """Per-device bytes of the sampler's context store (resident while sampling)."""
    return _device_bytes(_store_shapes(model_config, mesh, workload))


def compile_context_store(model_config: Any, mesh: Any, workload: Workload, rows: int):
    """Lower + compile `engine.store_contexts` for a call whose contexts are all new (the first
    RL call after an update): every bank row in use prefilled into the replicated store."""
    import jax.numpy as jnp

    from fst_jax import sharding
    from fst_jax.sampling import engine

    rep = sharding.replicated(mesh)
    contexts, _, _ = _sampler_shapes(workload, rows)

    def a(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

    args = (
        _sampler_params(model_config, mesh),
        _store_shapes(model_config, mesh, workload),
        a((contexts, workload.bank_len), jnp.int32),
        a((contexts,), jnp.int32),
        a((contexts,), jnp.int32),
    )
    with jax.set_mesh(mesh):
        return engine.store_contexts.lower(model_config, *args).compile()


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=(5,))
def _one_decode_step(config, sampling, pad_id, stop_ids, params, state):
    """One token of `engine.decode`'s loop: cost_analysis counts a while-loop body once, so the
    per-token cost is read from this step alone."""
    from fst_jax.sampling import engine

    return engine._decode_step(config, sampling, pad_id, stop_ids, params, state)


def budget_bytes(sl: Slice, budget: float) -> int:
    return int(budget * sl.hbm_gib * GIB)


def _check_split(rows: int, parts: int, shards: int, what: str) -> None:
    if rows % parts or (rows // parts) % shards:
        raise ValueError(
            f"{rows} rows in {parts} {what} cannot be split over data×fsdp={shards}; pick sizes "
            f"whose product divides the batch"
        )


def _mesh_for(point: Point, target: str | None = None):
    """The candidate's mesh: over the TPU devices of `target` ('v5p:2x4x4', real TPU compiler) or
    over this process's devices (fake CPU devices for the proxy)."""
    from fst_jax import sharding

    n = point.batch_shards * point.tensor
    if target is not None:
        from fst_jax.aot.tpu import topology_devices

        devices = list(topology_devices(target))
        if len(devices) != n:
            raise ValueError(f"{point.label()} uses {n} chips but {target} has {len(devices)}")
        return sharding.make_mesh((point.data, point.fsdp, point.tensor), devices)
    devices = jax.devices()
    if len(devices) < n:
        raise ValueError(
            f"{point.label()} needs {n} devices but this process has {len(devices)}; start it "
            f"with XLA_FLAGS=--xla_force_host_platform_device_count={n} (plan() does this)."
        )
    return sharding.make_mesh((point.data, point.fsdp, point.tensor), devices[:n])


def evaluate_train(
    model: str,
    point: Point,
    workload: Workload,
    *,
    param_dtype: str,
    dtype: str,
    target: str | None = None,
) -> dict[str, Any]:
    """Compile the train step for one candidate (TPU `target`, or this process's devices)."""
    _check_split(workload.rows, point.microbatches, point.batch_shards, "micro-batches")
    mesh = _mesh_for(point, target)
    t0 = time.perf_counter()
    compiled, state_bytes, _ = compile_train_step(
        model_for(model, point, param_dtype, dtype, target), mesh, workload, point.microbatches
    )
    return {
        "train": memory_stats(compiled),
        "train_state": state_bytes,
        "train_compile_s": round(time.perf_counter() - t0, 1),
    }


def evaluate_sampler(
    model: str,
    point: Point,
    workload: Workload,
    state_bytes: int,
    *,
    param_dtype: str,
    dtype: str,
    target: str | None = None,
) -> dict[str, Any]:
    """Compile prefill + decode (+ `decode_chunk` when the workload streams) for
    rows / sample_chunks rows; the train state stays resident, and so does the context store (an
    argument of prefill, held through decode)."""
    _check_split(workload.rows, point.sample_chunks, point.batch_shards, "sampler calls")
    mesh = _mesh_for(point, target)
    t0 = time.perf_counter()
    cfg = model_for(model, point, param_dtype, dtype, target)
    rows = workload.rows // point.sample_chunks
    pre, dec, pbytes = compile_sampler(cfg, mesh, workload, rows)
    store = context_store_bytes(cfg, mesh, workload)
    res = {
        "prefill": memory_stats(pre),
        "decode": memory_stats(dec),
        "sampler_params": pbytes,
        "context_store": store,
    }
    decode_total = res["decode"]["total"]
    if workload.stream_chunk:  # streamed calls run decode_chunk instead of decode
        stream = compile_decode_chunk(cfg, mesh, workload, rows, workload.stream_chunk, pre)
        res["decode_chunk"] = memory_stats(stream)
        decode_total = max(decode_total, res["decode_chunk"]["total"])
    res["sampler_compile_s"] = round(time.perf_counter() - t0, 1)
    res["sample_total"] = state_bytes + max(res["prefill"]["total"], decode_total + store)
    return res


def evaluate_point(
    model: str,
    point: Point,
    workload: Workload,
    *,
    param_dtype: str,
    dtype: str,
    sampler: bool = True,
    target: str | None = None,
) -> dict[str, Any]:
    """Train step (+ sampler) memory for one fully specified candidate."""
    kw = {"param_dtype": param_dtype, "dtype": dtype, "target": target}
    res: dict[str, Any] = {"point": dataclasses.asdict(point)}
    res.update(evaluate_train(model, point, workload, **kw))
    if sampler:
        res.update(evaluate_sampler(model, point, workload, res["train_state"], **kw))
    res["peak"] = max(res["train"]["total"], res.get("sample_total", 0))
    return res


# ------------------------------------------------------------------ step-time estimate (TPU)


def cost_stats(compiled: Any) -> dict[str, float]:
    """Per-device flops, HBM bytes accessed and the compiler's `optimal_seconds`."""
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list | tuple) else c
    return {k: float(c.get(k, 0.0)) for k in ("flops", "bytes accessed", "optimal_seconds")}


def _combine(base: dict[str, float], *terms: tuple[float, dict[str, float]]) -> dict[str, float]:
    """base + Σ scale·(probe − base); optimal_seconds stays -1 (unknown to the compiler, e.g.
    programs with while loops) if any probe lacks it."""
    out = dict(base)
    for scale, d in terms:
        for k in out:
            out[k] += scale * (d[k] - base[k])
    if any(x["optimal_seconds"] < 0 for x in (base, *(d for _, d in terms))):
        out["optimal_seconds"] = -1.0
    return out


def _probe_config(model: str, point: Point, param_dtype: str, dtype: str, target, layers: int):
    return model_for(model, point, param_dtype, dtype, target).replace(
        scan_layers=False, num_layers=layers
    )


def estimate_costs(
    model: str,
    point: Point,
    workload: Workload,
    *,
    param_dtype: str,
    dtype: str,
    target: str | None = None,
    sampler: bool = True,
    logit_chunk: int = 128,
) -> dict[str, dict[str, float]]:
    """Per-device flops / bytes / optimal_seconds of one train step, one prefill call and one
    decoded token, corrected for loops.

    `cost_analysis()` counts a while-loop body once, so the scanned program under-counts by the
    trip counts (layers, micro-batches, logit chunks, decode steps). Probes compile the same
    functions unrolled with 1 and 2 layers (the difference is one layer), one micro-batch, and a
    doubled logit chunk (the difference is one chunk), and extrapolate linearly:
    cost = probe(1 layer) + (L-1)·layer + (chunks-1)·chunk; × micro-batches. The optimizer update
    is counted once per micro-batch (a small over-count: it is elementwise)."""
    layers = model_for(model, point, param_dtype, dtype).num_layers
    m = point.microbatches
    mb = dataclasses.replace(workload, problems=workload.rows // m, group=1)
    one = dataclasses.replace(point, microbatches=1, sample_chunks=1)
    mesh = _mesh_for(point, target)

    def train(n_layers: int, chunk: int) -> dict[str, float]:
        cfg = _probe_config(model, one, param_dtype, dtype, target, n_layers)
        return cost_stats(compile_train_step(cfg, mesh, mb, 1, chunk)[0])

    s = workload.seq_len
    chunk = min(logit_chunk, s)
    base = train(1, chunk)
    n_chunks = -(-s // chunk)
    terms = [(layers - 1, train(2, chunk))]
    if n_chunks > 1 and 2 * chunk <= s:
        terms.append((n_chunks - 1, train(1, 2 * chunk)))
    per_mb = _combine(base, *terms)
    out = {"train": {k: v * m for k, v in per_mb.items()}}
    if sampler:
        rows = workload.rows // point.sample_chunks
        probes = {}
        for n_layers in (1, 2):
            cfg = _probe_config(model, one, param_dtype, dtype, target, n_layers)
            pre, dec, _ = compile_sampler(cfg, mesh, workload, rows, one_step=True)
            probes[n_layers] = (cost_stats(pre), cost_stats(dec))
        out["prefill"] = _combine(probes[1][0], (layers - 1, probes[2][0]))
        out["decode_token"] = _combine(probes[1][1], (layers - 1, probes[2][1]))
    return out


def model_flops_per_token(model: str, seq_len: int) -> float:
    """Training FLOPs per token without rematerialisation (PaLM's MFU convention):
    6·N (non-embedding matmuls + LM head) + 12·layers·heads·head_dim·seq_len (attention)."""
    from fst_jax.models.config import get_config

    c = get_config(model)
    n = c.num_params - c.vocab_size * c.hidden_size * (0 if c.tie_word_embeddings else 1)
    return 6.0 * n + 12.0 * c.num_layers * c.num_heads * c.head_dim * seq_len


def time_estimate(sl: Slice, workload: Workload, point: Point, costs: dict, model: str) -> dict:
    """Seconds per RL step on `sl` from the compiler's counts: each program takes the longer of
    its `optimal_seconds` and the roofline max(flops / peak, bytes / HBM bandwidth)."""
    chip = sl.chip

    def secs(c: dict[str, float]) -> float:
        roof = max(c["flops"] / chip.peak_flops, c["bytes accessed"] / chip.hbm_bw)
        return max(c["optimal_seconds"], roof)

    tokens = workload.rows * workload.seq_len
    train_s = secs(costs["train"])
    out = {
        "train_s": train_s,
        "train_flops_bound_s": costs["train"]["flops"] / chip.peak_flops,
        "train_bytes_bound_s": costs["train"]["bytes accessed"] / chip.hbm_bw,
        "mfu": model_flops_per_token(model, workload.seq_len)
        * tokens
        / (sl.chips * chip.peak_flops * train_s),
    }
    if "decode_token" in costs:
        rows = workload.rows // point.sample_chunks
        tok_s = secs(costs["decode_token"])
        out["decode_token_s"] = tok_s
        out["decode_tokens_per_s"] = rows / tok_s
        out["prefill_s"] = secs(costs["prefill"])
        out["sample_s"] = point.sample_chunks * (
            out["prefill_s"] + (workload.response_len - 1) * tok_s
        )
        out["step_s"] = out["sample_s"] + train_s
    return out
