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

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
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


def default_points(
    chips: int, model: str, tensor_sizes: Sequence[int] = (1, 2, 4, 8)
) -> list[Point]:
    """Candidate meshes: all chips on fsdp × tensor ∈ {1, 2, 4, 8} (tensor must divide the KV
    heads), remat per layer. Pure data parallelism is never better here: FSDP already splits the
    batch the same way and also divides the optimizer state."""
    from fst_jax.models.config import get_config

    cfg = get_config(model)
    out = []
    for t in tensor_sizes:
        if chips % t or cfg.num_kv_heads % t or cfg.num_heads % t:
            continue
        out.append(Point(data=1, fsdp=chips // t, tensor=t, remat="layer"))
    return out


def _grow(current: int, total: int, budget: int, fixed: int, cap: int) -> int | None:
    """Smallest power-of-two multiple of `current` predicted to bring `total` under `budget`
    when everything except `fixed` bytes scales like 1/split; None when the cap is reached or
    the fixed part alone does not fit."""
    if current >= cap or fixed >= budget:
        return None
    factor = (total - fixed) / (budget - fixed)
    nxt = current * 2
    while nxt < cap and nxt < current * factor:
        nxt *= 2
    return min(nxt, cap)


def _max_split(rows: int, shards: int) -> int:
    m = 1
    while rows % (m * 2) == 0 and (rows // (m * 2)) % shards == 0:
        m *= 2
    return m


def search_point(
    model: str,
    sl: Slice,
    workload: Workload,
    base: Point,
    *,
    budget: float,
    param_dtype: str,
    dtype: str,
    sampler: bool = True,
    log=lambda s: None,
) -> dict[str, Any]:
    """For one mesh/remat: raise micro-batches until the train step fits and sampler calls until
    sampling fits (each predicted from the last compile, then verified by compiling)."""
    limit = budget_bytes(sl, budget)
    cap = _max_split(workload.rows, base.batch_shards)
    tries = 0
    mb = base.microbatches
    while True:
        p = dataclasses.replace(base, microbatches=mb)
        tr = evaluate_train(model, p, workload, param_dtype=param_dtype, dtype=dtype)
        tries += 1
        t = tr["train"]
        log(
            f"{sl.name}: {p.label()}: train step {_gib(t['total'])} GiB (compile {tr['train_compile_s']}s)"
        )
        if t["total"] <= limit:
            break
        fixed = t["total"] - t["temps"]  # state, batch and outputs do not shrink with mb
        nxt = _grow(mb, t["total"], limit, fixed, cap)
        if nxt is None:
            break
        mb = nxt
    res: dict[str, Any] = {"point": dataclasses.asdict(dataclasses.replace(base, microbatches=mb))}
    res.update(tr)
    train_fits = tr["train"]["total"] <= limit
    sample_fits = True
    if sampler:
        chunks = base.sample_chunks
        while True:
            p = dataclasses.replace(base, microbatches=mb, sample_chunks=chunks)
            sr = evaluate_sampler(
                model, p, workload, tr["train_state"], param_dtype=param_dtype, dtype=dtype
            )
            tries += 1
            log(
                f"{sl.name}: {p.label()}: sampling {_gib(sr['sample_total'])} GiB incl. train "
                f"state (compile {sr['sampler_compile_s']}s)"
            )
            if sr["sample_total"] <= limit:
                break
            fixed = tr["train_state"] + sr["sampler_params"]  # resident whatever the call size
            nxt = _grow(chunks, sr["sample_total"], limit, fixed, cap)
            if nxt is None:
                break
            chunks = nxt
        res["point"]["sample_chunks"] = chunks
        res.update(sr)
        sample_fits = sr["sample_total"] <= limit
    res["peak"] = max(res["train"]["total"], res.get("sample_total", 0))
    res["fits"] = train_fits and sample_fits
    res["compiles"] = tries
    return res


def search_slice(
    model: str,
    sl: Slice,
    workload: Workload,
    points: Sequence[Point],
    *,
    budget: float,
    param_dtype: str,
    dtype: str,
    sampler: bool = True,
    emit=print,
    log=lambda s: None,
) -> list[dict[str, Any]]:
    """`search_point` for every candidate; each result is emitted as soon as it is known."""
    results = []
    for base in points:
        try:
            res = search_point(
                model,
                sl,
                workload,
                base,
                budget=budget,
                param_dtype=param_dtype,
                dtype=dtype,
                sampler=sampler,
                log=log,
            )
        except Exception as e:  # one bad candidate must not sink the plan: report it
            res = {"point": dataclasses.asdict(base), "error": f"{type(e).__name__}: {e}"}
        emit("AOT_RESULT " + json.dumps({"slice": sl.name, **res}))
        results.append(res)
    return results


def recommend(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Among fitting candidates: fewest sequential passes (micro-batches + sampler calls), then
    the lowest peak."""
    ok = [r for r in results if r.get("fits")]
    if not ok:
        return None
    return min(
        ok, key=lambda r: (r["point"]["microbatches"] + r["point"]["sample_chunks"], r["peak"])
    )


def _worker(spec: dict[str, Any]) -> None:
    sl = Slice(**spec["slice"])
    workload = Workload(**spec["workload"])
    points = [Point(**p) for p in spec["points"]] or default_points(
        sl.chips, spec["model"], spec["tensor_sizes"]
    )
    search_slice(
        spec["model"],
        sl,
        workload,
        points,
        budget=spec["budget"],
        param_dtype=spec["param_dtype"],
        dtype=spec["dtype"],
        sampler=spec["sampler"],
        emit=lambda line: print(line, flush=True),
        log=lambda line: print(f"[aot] {line}", file=sys.stderr, flush=True),
    )


def plan(
    model: str,
    slices: Sequence[str],
    workload: Workload = Workload(),
    *,
    points: Sequence[Point] = (),
    tensor_sizes: Sequence[int] = (1, 2, 4, 8),
    budget: float = 0.8,
    param_dtype: str = "float32",
    dtype: str = "bfloat16",
    sampler: bool = True,
    timeout_s: float | None = None,
    lock_file: str | None = None,
    log=lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, list[dict[str, Any]]]:
    """Run the search for each slice in a fresh subprocess with `chips` fake CPU devices.

    `lock_file`: run each slice's worker under `flock lock_file` (shared build machines, so
    other heavy jobs can interleave between slices instead of waiting for the whole plan)."""
    unknown = [s for s in slices if s not in SLICES]
    if unknown:
        raise ValueError(f"Unknown slice(s) {unknown}; known: {', '.join(SLICES)}")
    out: dict[str, list[dict[str, Any]]] = {}
    for name in slices:
        sl = SLICES[name]
        spec = {
            "model": model,
            "slice": dataclasses.asdict(sl),
            "workload": dataclasses.asdict(workload),
            "points": [dataclasses.asdict(p) for p in points],
            "tensor_sizes": list(tensor_sizes),
            "budget": budget,
            "param_dtype": param_dtype,
            "dtype": dtype,
            "sampler": sampler,
        }
        env = dict(os.environ)
        flags = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={sl.chips}"])
        env["JAX_PLATFORMS"] = "cpu"
        t0 = time.perf_counter()
        log(f"[aot] {name}: {sl.chips} fake CPU devices, {model}: compiling candidates ...")
        cmd = [sys.executable, "-m", "fst_jax.aot", "--worker_spec", json.dumps(spec)]
        proc = subprocess.Popen(
            ["flock", lock_file, *cmd] if lock_file else cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            log(f"[aot] {name}: timed out after {timeout_s}s; keeping the finished candidates")
        for line in stderr.splitlines():
            if line.startswith("[aot]"):
                log(line)
        rows = [
            json.loads(x[len("AOT_RESULT ") :])
            for x in stdout.splitlines()
            if x.startswith("AOT_RESULT ")
        ]
        if proc.returncode not in (0, None) and not rows:
            raise RuntimeError(
                f"AOT worker for {name} failed (exit {proc.returncode}):\n{stderr[-4000:]}"
            )
        for r in rows:
            r.pop("slice", None)
            log(f"[aot] {name}: {_short(r)}")
        log(f"[aot] {name}: done in {time.perf_counter() - t0:.0f}s")
        out[name] = rows
    return out


def _gib(x: int) -> str:
    """GiB with one decimal; small (CI-sized) values in MiB so they do not all read 0.0."""
    return f"{x / GIB:.1f}" if x >= GIB // 10 else f"{x / 2**20:.2f} MiB"


def _short(r: dict[str, Any]) -> str:
    p = Point(**r["point"]).label()
    if "error" in r:
        return f"{p}: ERROR {r['error'][:300]}"
    t = r["train"]
    s = f"{p}: train step {_gib(t['total'])} GiB (temps {_gib(t['temps'])})"
    if "sample_total" in r:
        s += (
            f"; prefill {_gib(r['prefill']['total'])}, decode {_gib(r['decode']['total'])}, "
            f"sampling + train state {_gib(r['sample_total'])} GiB"
        )
    return s + f"; fits={r.get('fits')}"


def markdown_table(results: dict[str, list[dict[str, Any]]], budget: float) -> str:
    """One row per candidate mesh (after its search); the recommended one per slice in bold."""
    lines = [
        "| slice | chips × HBM | data×fsdp×tensor | remat | micro-batches | sampler calls | "
        "train state | train step (temps) | prefill | decode | sampling + state | "
        "peak / budget | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        sl = SLICES[name]
        best = recommend(rows)
        for r in rows:
            p = r["point"]
            mesh = f"{p['data']}×{p['fsdp']}×{p['tensor']}"
            head = f"{sl.chips} × {sl.hbm_gib:.0f} GiB"
            if "error" in r:
                lines.append(
                    f"| {name} | {head} | {mesh} | {p['remat']} | | | error: "
                    f"{r['error'][:80].replace('|', '/')} | | | | | | |"
                )
                continue
            mark = "**" if r is best else ""
            t = r["train"]
            pre = _gib(r["prefill"]["total"]) if "prefill" in r else "-"
            dec = _gib(r["decode"]["total"]) if "decode" in r else "-"
            samp = _gib(r["sample_total"]) if "sample_total" in r else "-"
            lines.append(
                f"| {mark}{name}{mark} | {head} | {mesh} | {p['remat']} | {p['microbatches']} | "
                f"{p['sample_chunks']} | {_gib(r['train_state'])} | {_gib(t['total'])} "
                f"({_gib(t['temps'])}) | {pre} | {dec} | {samp} | {_gib(r['peak'])} / "
                f"{_gib(budget_bytes(sl, budget))} | {'yes' if r['fits'] else 'no'} |"
            )
    return "\n".join(lines)


def recommendations(results: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    out = {}
    for name, rows in results.items():
        best = recommend(rows)
        out[name] = (
            Point(**best["point"]).label() + f" (peak {_gib(best['peak'])} GiB/chip)"
            if best
            else "nothing tried fits: use a bigger slice or shorter sequences"
        )
    return out


def _parse_mesh(text: str) -> Point:
    parts = text.split(",")
    if len(parts) not in (3, 4, 5, 6):
        raise ValueError(
            f"--mesh={text!r}: expected 'data,fsdp,tensor[,remat[,microbatches[,sampler_calls]]]'"
        )
    return Point(
        int(parts[0]),
        int(parts[1]),
        int(parts[2]),
        parts[3] if len(parts) > 3 else "layer",
        int(parts[4]) if len(parts) > 4 else 1,
        int(parts[5]) if len(parts) > 5 else 1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fst_jax.aot", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen3_8b", help="named model config (fst_jax.models)")
    ap.add_argument("--slices", default="v5p-32,v5p-64,v5p-128,v4-64", help=", ".join(SLICES))
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=2048)
    ap.add_argument("--response_len", type=int, default=8192)
    ap.add_argument("--bank_len", type=int, default=512)
    ap.add_argument("--bank_prompts", type=int, default=8)
    ap.add_argument(
        "--mesh",
        action="append",
        default=[],
        help="starting candidate 'data,fsdp,tensor[,remat[,microbatches[,sampler_calls]]]' "
        "(repeatable; default: fsdp × tensor in {1,2,4,8}, remat=layer)",
    )
    ap.add_argument(
        "--tensor",
        default="1,2,4,8",
        help="tensor-parallel sizes of the default candidates (fsdp = chips / tensor)",
    )
    ap.add_argument("--budget", type=float, default=0.8, help="fraction of HBM a plan may use")
    ap.add_argument("--param_dtype", default="float32")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--no_sampler", action="store_true", help="train step only")
    ap.add_argument("--timeout_s", type=float, default=None, help="per slice")
    ap.add_argument("--json_out", default=None)
    ap.add_argument("--lock_file", default=None, help="flock this file around each slice's worker")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--worker_spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_spec:
        _worker(json.loads(args.worker_spec))
        return 0
    try:
        points = [_parse_mesh(m) for m in args.mesh]
    except ValueError as e:
        ap.error(str(e))
    slices = [s for s in args.slices.split(",") if s]
    for s in slices:
        if s not in SLICES:
            ap.error(f"--slices: unknown slice {s!r}; known: {', '.join(SLICES)}")
        for p in points:
            if p.batch_shards * p.tensor != SLICES[s].chips:
                ap.error(
                    f"--mesh {p.label()} uses {p.batch_shards * p.tensor} devices but {s} has "
                    f"{SLICES[s].chips} chips; give meshes per slice (run one slice at a time)"
                )
    workload = Workload(
        args.problems,
        args.group,
        args.prompt_len,
        args.response_len,
        args.bank_prompts,
        args.bank_len,
    )
    t0 = time.perf_counter()
    results = plan(
        args.model,
        slices,
        workload,
        points=points,
        tensor_sizes=[int(t) for t in args.tensor.split(",") if t],
        budget=args.budget,
        param_dtype=args.param_dtype,
        dtype=args.dtype,
        sampler=not args.no_sampler,
        timeout_s=args.timeout_s,
        lock_file=args.lock_file,
    )
    wall = time.perf_counter() - t0
    print(
        f"AOT memory plan: {args.model}, {workload.problems} problems × G={workload.group} = "
        f"{workload.rows} rows, {workload.prompt_len} prompt + {workload.response_len} response "
        f"tokens, params {args.param_dtype} / compute {args.dtype}, AdamW; budget "
        f"{args.budget:.0%} of HBM; sizes per chip in GiB; XLA:CPU compiler as a proxy for TPU; "
        f"wall {wall:.0f}s\n"
    )
    if args.markdown:
        print(markdown_table(results, args.budget) + "\n")
    for name, rec in recommendations(results).items():
        print(f"recommended {name}: {rec}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                {"workload": dataclasses.asdict(workload), "results": results, "wall_s": wall},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
