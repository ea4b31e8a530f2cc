"""AOT memory plan, part 2: the search over candidates, per-slice subprocesses, report, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from fst_jax.aot.core import (
    GIB,
    PAPER_WORKLOAD,
    SLICES,
    Point,
    Slice,
    Workload,
    budget_bytes,
    estimate_costs,
    evaluate_sampler,
    evaluate_train,
    slice_named,
    time_estimate,
)

COMPILERS = ("tpu", "cpu_proxy")


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
    target: str | None = None,
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
        tr = evaluate_train(model, p, workload, param_dtype=param_dtype, dtype=dtype, target=target)
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
                model,
                p,
                workload,
                tr["train_state"],
                param_dtype=param_dtype,
                dtype=dtype,
                target=target,
            )
            tries += 1
            log(
                f"{sl.name}: {p.label()}: sampling {_gib(sr['sample_total'])} GiB incl. train "
                f"state (compile {sr['sampler_compile_s']}s)"
            )
            if sr["sample_total"] <= limit:
                break
            # resident whatever the call size
            fixed = tr["train_state"] + sr["sampler_params"] + sr["context_store"]
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
    target: str | None = None,
    estimate: bool = False,
    emit=print,
    log=lambda s: None,
) -> list[dict[str, Any]]:
    """`search_point` for every candidate; each result is emitted as soon as it is known. With
    `estimate` (TPU targets), the recommended candidate also gets a step-time estimate."""
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
                target=target,
                log=log,
            )
        except Exception as e:  # one bad candidate must not sink the plan: report it
            res = {"point": dataclasses.asdict(base), "error": f"{type(e).__name__}: {e}"}
        emit("AOT_RESULT " + json.dumps({"slice": sl.name, **res}))
        results.append(res)
    best = recommend(results)
    if estimate and best is not None and sl.chip is not None:
        point = Point(**best["point"])
        t0 = time.perf_counter()
        costs = estimate_costs(
            model,
            point,
            workload,
            param_dtype=param_dtype,
            dtype=dtype,
            target=target,
            sampler=sampler,
        )
        best["estimate"] = {
            "costs": costs,
            **time_estimate(sl, workload, point, costs, model),
            "estimate_compile_s": round(time.perf_counter() - t0, 1),
        }
        log(f"{sl.name}: estimate {best['estimate']}")
        emit("AOT_ESTIMATE " + json.dumps({"point": best["point"], **best["estimate"]}))
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
    target = sl.topology if spec.get("compiler") == "tpu" else None
    workload = Workload(**spec["workload"])
    points = [Point(**p) for p in spec["points"]] or default_points(
        sl.chips, spec["model"], spec["tensor_sizes"]
    )
    if spec.get("attention", "auto") != "auto":
        points = [dataclasses.replace(p, attention=spec["attention"]) for p in points]
    search_slice(
        spec["model"],
        sl,
        workload,
        points,
        budget=spec["budget"],
        param_dtype=spec["param_dtype"],
        dtype=spec["dtype"],
        sampler=spec["sampler"],
        target=target,
        estimate=target is not None and spec.get("estimate", True),
        emit=lambda line: print(line, flush=True),
        log=lambda line: print(f"[aot] {line}", file=sys.stderr, flush=True),
    )


def plan(
    model: str,
    slices: Sequence[str],
    workload: Workload = PAPER_WORKLOAD,
    *,
    points: Sequence[Point] = (),
    tensor_sizes: Sequence[int] = (1, 2, 4, 8),
    budget: float = 0.8,
    param_dtype: str = "float32",
    dtype: str = "bfloat16",
    sampler: bool = True,
    timeout_s: float | None = None,
    lock_file: str | None = None,
    compiler: str = "tpu",
    estimate: bool = True,
    attention: str = "auto",
    log=lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, list[dict[str, Any]]]:
    """Run the search for each slice in a fresh subprocess.

    `compiler="tpu"`: the real TPU compiler (libtpu) on the slice's TPU topology, plus a step-time
    estimate for the recommended candidate (`estimate`). `compiler="cpu_proxy"`: XLA:CPU on
    `chips` fake CPU devices (temporaries differ from TPU's). Slices without a TPU topology
    (`cpu-8`) always use the proxy.
    `lock_file`: run each slice's worker under `flock lock_file` (shared build machines, so
    other heavy jobs can interleave between slices instead of waiting for the whole plan)."""
    from fst_jax.aot import tpu

    if compiler not in COMPILERS:
        raise ValueError(f"compiler={compiler!r}; use one of {', '.join(COMPILERS)}")
    unknown = []
    for s in slices:
        try:
            slice_named(s)
        except ValueError:
            unknown.append(s)
    if unknown:
        raise ValueError(f"Unknown slice(s) {unknown}; known: {', '.join(SLICES)} or v5p:2x4x4")
    if compiler == "tpu" and any(slice_named(s).topology for s in slices):
        tpu.require_libtpu()
    out: dict[str, list[dict[str, Any]]] = {}
    for name in slices:
        sl = slice_named(name)
        use_tpu = compiler == "tpu" and sl.topology is not None
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
            "compiler": "tpu" if use_tpu else "cpu_proxy",
            "estimate": estimate,
            "attention": attention,
        }
        env = dict(os.environ)
        flags = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={sl.chips}"])
        env["JAX_PLATFORMS"] = "cpu"  # compile only: no accelerator is used, TPU or otherwise
        if use_tpu:
            env.update(tpu.compile_only_env(sl.chip, sl.chips))
        t0 = time.perf_counter()
        where = f"TPU compiler, {sl.topology}" if use_tpu else f"{sl.chips} fake CPU devices"
        log(f"[aot] {name}: {where}, {model}: compiling candidates ...")
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
        for x in stdout.splitlines():
            if x.startswith("AOT_ESTIMATE "):
                est = json.loads(x[len("AOT_ESTIMATE ") :])
                for r in rows:
                    if r["point"] == est["point"] and "error" not in r:
                        r["estimate"] = {k: v for k, v in est.items() if k != "point"}
        for r in rows:
            r.pop("slice", None)
            r["compiler"] = spec["compiler"]
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
        if "decode_chunk" in r:
            s += f" (streaming decode_chunk {_gib(r['decode_chunk']['total'])})"
    return s + f"; fits={r.get('fits')}"


def _secs(x: float) -> str:
    return f"{x:.1f} s" if x >= 1 else f"{x * 1e3:.2f} ms" if x >= 1e-3 else f"{x * 1e6:.0f} µs"


def markdown_table(results: dict[str, list[dict[str, Any]]], budget: float) -> str:
    """One row per candidate mesh (after its search); the recommended one per slice in bold.
    Estimated times (TPU compiler only): train step, sampling (prefill + decode), MFU of the
    train step, decode tokens/s over the slice."""
    lines = [
        "| slice | chips × HBM | data×fsdp×tensor | remat | micro-batches | sampler calls | "
        "train state | train step (temps) | prefill | decode | sampling + state | "
        "peak / budget | fits | est. train step | est. MFU | est. sampling | decode tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        sl = slice_named(name)
        best = recommend(rows)
        for r in rows:
            p = r["point"]
            mesh = f"{p['data']}×{p['fsdp']}×{p['tensor']}"
            head = f"{sl.chips} × {sl.hbm_gib:.0f} GiB"
            if "error" in r:
                lines.append(
                    f"| {name} | {head} | {mesh} | {p['remat']} | | | error: "
                    f"{r['error'][:80].replace('|', '/')} | | | | | | | | | | |"
                )
                continue
            mark = "**" if r is best else ""
            t = r["train"]
            pre = _gib(r["prefill"]["total"]) if "prefill" in r else "-"
            dec = _gib(r["decode"]["total"]) if "decode" in r else "-"
            samp = _gib(r["sample_total"]) if "sample_total" in r else "-"
            e = r.get("estimate")
            est = "| | | |"
            if e:
                est = (
                    f"| {_secs(e['train_s'])} | {e['mfu']:.0%} | "
                    f"{_secs(e['sample_s']) if 'sample_s' in e else '-'} | "
                    f"{e['decode_tokens_per_s']:,.0f} |"
                    if "decode_tokens_per_s" in e
                    else f"| {_secs(e['train_s'])} | {e['mfu']:.0%} | - | - |"
                )
            lines.append(
                f"| {mark}{name}{mark} | {head} | {mesh} | {p['remat']} | {p['microbatches']} | "
                f"{p['sample_chunks']} | {_gib(r['train_state'])} | {_gib(t['total'])} "
                f"({_gib(t['temps'])}) | {pre} | {dec} | {samp} | {_gib(r['peak'])} / "
                f"{_gib(budget_bytes(sl, budget))} | {'yes' if r['fits'] else 'no'} {est}"
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

    ap = argparse.ArgumentParser(
        prog="python -m fst_jax.aot",
        description="AOT memory plan: will the FST train step and sampler fit on a TPU slice?",
    )
    ap.add_argument("--model", default="qwen3_8b", help="named model config (fst_jax.models)")
    ap.add_argument(
        "--slices",
        default="v5p-32,v5p-64,v5p-128,v4-64",
        help=f"{', '.join(SLICES)}, or any TPU topology such as v5p:2x4x4 or v6e:8x8",
    )
    ap.add_argument(
        "--compiler",
        default="tpu",
        choices=COMPILERS,
        help="tpu: the real TPU compiler (needs libtpu: pip install 'fst_jax[tpu]'); cpu_proxy: "
        "XLA:CPU on fake devices as a stand-in (temporaries differ from TPU's)",
    )
    ap.add_argument(
        "--no_estimate", action="store_true", help="skip the step-time estimate (TPU compiler)"
    )
    ap.add_argument(
        "--attention",
        default="auto",
        choices=("auto", "xla", "splash"),
        help="attention of every candidate (auto: splash on TPU, XLA on the CPU proxy)",
    )
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=2048)
    ap.add_argument("--response_len", type=int, default=8192)
    ap.add_argument("--bank_len", type=int, default=512)
    ap.add_argument("--bank_prompts", type=int, default=8)
    ap.add_argument(
        "--stream_chunk",
        type=int,
        default=0,
        help="also compile streaming decode (engine.decode_chunk, what fst-serve runs) for this "
        "many decode steps per call (fst-serve's default: 16); 0 = RL's whole-reply decode only",
    )
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
    if args.stream_chunk < 0:
        ap.error(f"--stream_chunk={args.stream_chunk}: decode steps per call, >= 1 (0 = off)")
    if args.worker_spec:
        _worker(json.loads(args.worker_spec))
        return 0
    try:
        points = [_parse_mesh(m) for m in args.mesh]
    except ValueError as e:
        ap.error(str(e))
    slices = [s for s in args.slices.split(",") if s]
    for s in slices:
        try:
            sl = slice_named(s)
        except ValueError as e:
            ap.error(f"--slices: {e}")
        for p in points:
            if p.batch_shards * p.tensor != sl.chips:
                ap.error(
                    f"--mesh {p.label()} uses {p.batch_shards * p.tensor} devices but {s} has "
                    f"{sl.chips} chips; give meshes per slice (run one slice at a time)"
                )
    if args.compiler == "tpu" and any(slice_named(s).topology for s in slices):
        from fst_jax.aot.tpu import libtpu_available

        if not libtpu_available():
            ap.error(
                "--compiler=tpu needs libtpu: pip install 'fst_jax[tpu]' (jax[tpu] matching "
                "your jax), or pass --compiler=cpu_proxy for the labelled XLA:CPU stand-in"
            )
    workload = Workload(
        args.problems,
        args.group,
        args.prompt_len,
        args.response_len,
        args.bank_prompts,
        args.bank_len,
        args.stream_chunk,
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
        compiler=args.compiler,
        estimate=not args.no_estimate,
        attention=args.attention,
    )
    wall = time.perf_counter() - t0
    compiler = (
        "XLA:TPU (libtpu), compile only"
        if args.compiler == "tpu"
        else "XLA:CPU on fake devices as a PROXY for TPU (temporaries differ)"
    )
    print(
        f"AOT memory plan: {args.model}, {workload.problems} problems × G={workload.group} = "
        f"{workload.rows} rows, {workload.prompt_len} prompt + {workload.response_len} response "
        f"tokens, params {args.param_dtype} / compute {args.dtype}, AdamW; budget "
        f"{args.budget:.0%} of HBM; sizes per chip in GiB; compiler: {compiler}; "
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
