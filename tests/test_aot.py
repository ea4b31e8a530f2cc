"""fst_jax.aot: the memory plan on 8 fake CPU devices with a tiny model (the CI-sized run).

Oracles: per-device argument bytes must equal the shard sizes implied by the input shardings
(summed independently here), FSDP must divide the optimizer state across devices versus a
replicated layout, and more micro-batches must shrink the train step's temporaries.
"""

import dataclasses
import importlib
import math

import jax
import numpy as np
import pytest

from fst_jax import aot
from fst_jax.models.config import get_config
from fst_jax.models.decoder import param_shapes

aot_plan = importlib.import_module("fst_jax.aot.plan")  # the module (`aot.plan` is its function)

W = aot.Workload(problems=4, group=4, prompt_len=48, response_len=32, bank_prompts=4, bank_len=16)
MODEL = "tiny_qwen3"


def _full_state_bytes(model: str) -> int:
    shapes = jax.tree.leaves(param_shapes(get_config(model)))
    params = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in shapes)
    return 3 * params  # params + AdamW mu + nu (f32)


@pytest.fixture(scope="module")
def fsdp_run():
    return aot.evaluate_point(
        MODEL, aot.Point(1, 8, 1, "layer", 1), W, param_dtype="float32", dtype="float32"
    )


@pytest.fixture(scope="module")
def mb2_run():
    return aot.evaluate_point(
        MODEL, aot.Point(1, 8, 1, "layer", 2, 2), W, param_dtype="float32", dtype="float32"
    )


@pytest.mark.slow  # AOT compiles
def test_argument_bytes_match_shardings(fsdp_run):
    """The compiled executable's argument size is the sum of per-device shard sizes."""
    cfg = aot.model_for(MODEL, aot.Point(1, 8, 1), "float32", "float32")
    from fst_jax import sharding

    mesh = sharding.make_mesh((1, 8, 1))
    compiled, state_bytes, args = aot.compile_train_step(cfg, mesh, W, 1)
    shard_bytes = 0
    for x in jax.tree.leaves(args):
        shard_bytes += math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    stats = aot.memory_stats(compiled)
    # ref_logps is unused without a KL penalty (kl_coef=0) and jit prunes unused arguments.
    ref = args[1].ref_logps
    unused = math.prod(ref.sharding.shard_shape(ref.shape)) * 4
    assert stats["arguments"] == shard_bytes - unused
    assert stats == fsdp_run["train"]
    assert state_bytes == fsdp_run["train_state"]
    # Donation: the whole train state is aliased into the new state.
    assert stats["aliased"] == state_bytes
    rows_bytes = W.rows * W.seq_len * 4 * 4 // 8 + W.rows * 4 * 4 // 8  # 4 used [B,S] + 4 [B]
    assert stats["arguments"] == state_bytes + rows_bytes


@pytest.mark.slow  # AOT compiles
def test_fsdp_divides_the_state(fsdp_run):
    full = _full_state_bytes(MODEL)
    replicated = aot.evaluate_point(
        MODEL,
        aot.Point(8, 1, 1, "layer", 1),
        W,
        param_dtype="float32",
        dtype="float32",
        sampler=False,
    )
    # data-only: every device holds the whole state (+ two int32 counters and AdamW's count).
    assert full <= replicated["train_state"] <= full + 64
    # fsdp=8: ~1/8 of it (norm scales whose size is not divisible stay replicated).
    assert fsdp_run["train_state"] < full / 8 * 1.25
    assert fsdp_run["train_state"] >= full / 8


@pytest.mark.slow  # AOT compiles
def test_microbatches_shrink_temps(fsdp_run, mb2_run):
    assert mb2_run["train"]["temps"] < fsdp_run["train"]["temps"]
    assert mb2_run["train_state"] == fsdp_run["train_state"]
    # Half the rows per sampler call: smaller prefill/decode, same resident state.
    assert mb2_run["prefill"]["total"] < fsdp_run["prefill"]["total"]


@pytest.mark.slow  # AOT compiles
def test_sampler_accounting(fsdp_run):
    r = fsdp_run
    for k in ("prefill", "decode"):
        assert r[k]["arguments"] > 0 and r[k]["temps"] >= 0
    # The context store is resident through decode (and an argument of prefill).
    assert 0 < r["context_store"] <= r["prefill"]["arguments"]
    peak = max(r["prefill"]["total"], r["decode"]["total"] + r["context_store"])
    assert r["sample_total"] == r["train_state"] + peak
    assert r["peak"] == max(r["train"]["total"], r["sample_total"])
    # The decode state (KV cache) is donated into the loop.
    assert r["decode"]["aliased"] > 0


@pytest.mark.slow  # AOT compiles
def test_streaming_decode_chunk_is_planned(fsdp_run):
    """With `stream_chunk` the plan also compiles `engine.decode_chunk` (what fst-serve runs) on
    prefill's output state: its state is donated like decode's, it holds the same KV cache, and
    sampling's peak counts whichever of the two decodes is larger."""
    w = dataclasses.replace(W, stream_chunk=4)
    point = aot.Point(1, 8, 1, "layer", 1)
    r = aot.evaluate_sampler(MODEL, point, w, fsdp_run["train_state"], param_dtype="float32",
                             dtype="float32")  # fmt: skip
    chunk, dec = r["decode_chunk"], fsdp_run["decode"]
    assert chunk["aliased"] > 0 and chunk["aliased"] == dec["aliased"]  # the same donated state
    assert chunk["arguments"] == dec["arguments"]  # same params + state in
    assert chunk["outputs"] > dec["outputs"]  # + the packed [rows, window + 4] int32 info
    decode = max(dec["total"], chunk["total"])
    assert r["sample_total"] == fsdp_run["train_state"] + max(
        r["prefill"]["total"], decode + r["context_store"]
    )
    assert "decode_chunk" not in fsdp_run  # stream_chunk=0: not compiled
    with pytest.raises(ValueError, match="stream chunk=0"):
        aot.compile_decode_chunk(get_config(MODEL), None, W, W.rows, 0)


@pytest.mark.slow  # AOT compiles
def test_plan_subprocess_and_table():
    """The CI command: a fresh 8-device subprocess, a candidate, table + recommendation."""
    res = aot.plan(
        MODEL,
        ["cpu-8"],
        W,
        points=[aot.Point(2, 2, 2, "none")],
        param_dtype="float32",
        dtype="float32",
        timeout_s=600,
        log=lambda s: None,
    )
    rows = res["cpu-8"]
    assert [(r["point"]["data"], r["point"]["tensor"]) for r in rows] == [(2, 2)]
    assert all(r["fits"] and r["compiles"] == 2 for r in rows)  # KiBs vs a nominal 16 GiB
    best = aot.recommend(rows)
    assert best is not None and best["point"]["microbatches"] == 1
    table = aot.markdown_table(res, 0.8)
    assert table.count("\n") == 2 and "| **cpu-8** |" in table and "2×2×2 | none" in table
    assert "cpu-8" in aot.recommendations(res)


@pytest.mark.slow  # AOT compiles
def test_search_raises_splits_until_it_fits(fsdp_run, mb2_run):
    """A budget between the split=1 and split=2 footprints: the search must end at split 2 and
    fit — micro-batches for the train step, sampler calls for sampling."""
    mb2 = mb2_run
    t1, t2 = fsdp_run["train"]["total"], mb2["train"]["total"]
    s1, s2 = fsdp_run["sample_total"], mb2["sample_total"]
    assert t2 < t1 and s2 < s1
    logs = []
    sl = aot.Slice("cpu-8", 8, (t1 + t2) / 2 / aot.GIB)
    res = aot.search_point(
        MODEL,
        sl,
        W,
        aot.Point(1, 8, 1, "layer"),
        budget=1.0,
        param_dtype="float32",
        dtype="float32",
        sampler=False,
        log=logs.append,
    )
    assert res["fits"] and res["point"]["microbatches"] == 2 and res["train"] == mb2["train"]
    assert res["compiles"] == len(logs) == 2
    sl = aot.Slice("cpu-8", 8, (s1 + s2) / 2 / aot.GIB)
    res = aot.search_point(
        MODEL,
        sl,
        W,
        aot.Point(1, 8, 1, "layer", 2),
        budget=1.0,
        param_dtype="float32",
        dtype="float32",
    )
    assert res["point"]["sample_chunks"] == 2 and res["sample_total"] == s2
    assert res["compiles"] == 3  # train at the micro-batch cap, then sampler calls 1 → 2
    assert not res["fits"]  # the train step is over this budget: reported, not hidden


def test_split_helpers():
    assert (
        aot_plan._max_split(16, 8) == 2
        and aot_plan._max_split(256, 16) == 16
        and aot_plan._max_split(6, 4) == 1
    )
    # total 100, 20 fixed, budget 40 → the scalable 80 must shrink 4× → 1 → 4.
    assert aot_plan._grow(1, 100, 40, 20, 64) == 4
    assert aot_plan._grow(1, 100, 40, 20, 2) == 2  # capped
    assert aot_plan._grow(2, 100, 40, 20, 2) is None
    assert aot_plan._grow(1, 100, 40, 50, 64) is None  # fixed part alone exceeds the budget


def test_errors_are_named():
    with pytest.raises(ValueError, match="needs 16 devices but this process has 8"):
        aot.evaluate_point(MODEL, aot.Point(1, 16, 1), W, param_dtype="float32", dtype="float32")
    with pytest.raises(ValueError, match="cannot be split over data×fsdp=8"):
        aot.evaluate_point(
            MODEL, aot.Point(1, 8, 1, "layer", 4), W, param_dtype="float32", dtype="float32"
        )
    with pytest.raises(ValueError, match="Unknown slice"):
        aot.plan(MODEL, ["v9-1"], W)
    with pytest.raises(ValueError, match="expected 'data,fsdp,tensor"):
        aot_plan._parse_mesh("1,2")
    with pytest.raises(SystemExit):
        aot.main(["--slices=cpu-8", "--mesh=1,4,1"])
    with pytest.raises(SystemExit):
        aot.main(["--slices=cpu-8", "--stream_chunk=-1"])


# ------------------------------------------------------------------ the real TPU compiler (libtpu)

TPU_TARGET = "v5p:2x2x1"  # 4 chips: the smallest v5p slice


def _needs_libtpu():
    from fst_jax.aot import tpu

    if not tpu.libtpu_available():
        pytest.fail("libtpu is not installed: pip install -e '.[test]' (jax[tpu] is a test dep)")


def _hlo(compiled) -> str:
    return compiled.as_text()


# The fast tier's XLA cache (conftest) also stores these compile-only TPU executables, which JAX
# cannot read back without a TPU client: it warns and compiles again, so the checks still hold.
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry")
@pytest.mark.slow  # AOT compiles (~9 s, the fast tier's second-largest test); the full suite runs it
def test_tiny_step_prefill_decode_compile_for_tpu():
    """CI's TPU gate: the tiny config's CISPO step, prefill and decode compile with XLA:TPU for a
    v5p slice — a TPU-only lowering failure (Pallas kernel, sharding, dtype) fails here. Splash
    attention is a TPU custom call in the step and prefill; decode (one query) stays XLA."""
    _needs_libtpu()
    from fst_jax import sharding
    from fst_jax.aot import tpu

    devices = tpu.topology_devices(TPU_TARGET)
    assert len(devices) == 4 and devices[0].device_kind == "TPU v5"
    point = aot.Point(1, 2, 2, "layer", 2)
    cfg = aot.model_for("tiny_llama", point, "float32", "bfloat16", TPU_TARGET)
    assert cfg.attention == "splash"
    mesh = sharding.make_mesh((1, 2, 2), devices)
    step, state_bytes, args = aot.compile_train_step(cfg, mesh, W, point.microbatches)
    pre, dec, pbytes = aot.compile_sampler(cfg, mesh, W, W.rows)
    fill = aot.compile_context_store(cfg, mesh, W, W.rows)
    stream = aot.compile_decode_chunk(cfg, mesh, W, W.rows, 4, pre)  # fst-serve's streaming
    assert "prefill_stored" in _hlo(pre)  # what Sampler.sample runs, contexts from the store
    assert "decode_chunk" in _hlo(stream)
    # HBM accounting: arguments hold at least the per-chip shards of the inputs (TPU layouts pad
    # the minor dimensions to (8, 128) tiles, so tiny arrays take more), and the donated train
    # state is aliased into the new state.
    shard = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(args)
    )
    ref = args[1].ref_logps  # unused without a KL penalty: jit prunes it
    stats = aot.memory_stats(step)
    assert stats["arguments"] >= shard - math.prod(ref.sharding.shard_shape(ref.shape)) * 4
    assert stats["aliased"] >= state_bytes
    assert stats["total"] == (
        stats["arguments"] + stats["outputs"] - stats["aliased"] + stats["temps"] + stats["code"]
    )
    assert aot.memory_stats(dec)["aliased"] > 0  # the decode state (KV cache) is donated
    assert aot.memory_stats(stream)["aliased"] > 0  # ... and so is decode_chunk's
    assert aot.memory_stats(fill)["aliased"] > 0  # the context store is filled in place
    assert pbytes < state_bytes  # bf16 sampler weights vs f32 params + AdamW
    for c in (step, pre, dec, fill, stream):
        cost = aot.cost_stats(c)
        assert cost["flops"] > 0 and cost["bytes accessed"] > 0
    assert all("tpu_custom_call" in _hlo(c) for c in (step, pre, fill))
    assert "tpu_custom_call" not in _hlo(dec) and "tpu_custom_call" not in _hlo(stream)


@pytest.mark.slow
def test_loop_corrected_cost_matches_an_unrolled_compile():
    """cost_analysis counts a loop body once; `estimate_costs` extrapolates from 1-/2-layer,
    1-/2-chunk probes. Oracle: a compile with no loops at all (layers unrolled, one logit chunk
    spanning the sequence, one micro-batch), whose counts are exact."""
    _needs_libtpu()
    from fst_jax import sharding
    from fst_jax.aot import tpu

    model, point = "tiny_llama", aot.Point(1, 4, 1, "layer", 1, 1, "xla")
    w = aot.Workload(problems=4, group=4, prompt_len=96, response_len=160, bank_len=16)
    est = aot.estimate_costs(
        model,
        point,
        w,
        param_dtype="float32",
        dtype="bfloat16",
        target=TPU_TARGET,
        sampler=False,
        logit_chunk=64,
    )
    cfg = aot.model_for(model, point, "float32", "bfloat16", TPU_TARGET).replace(scan_layers=False)
    mesh = sharding.make_mesh((1, 4, 1), tpu.topology_devices(TPU_TARGET))
    exact = aot.cost_stats(aot.compile_train_step(cfg, mesh, w, 1, w.seq_len)[0])
    scanned = aot.cost_stats(
        aot.compile_train_step(cfg.replace(scan_layers=True), mesh, w, 1, 64)[0]
    )
    print("estimate", est["train"], "exact", exact, "scanned", scanned)
    assert est["train"]["flops"] == pytest.approx(exact["flops"], rel=0.05)
    assert est["train"]["bytes accessed"] == pytest.approx(exact["bytes accessed"], rel=0.25)
    assert scanned["flops"] < 0.8 * exact["flops"]  # what the uncorrected count would say


def test_tpu_slices_and_missing_libtpu(monkeypatch):
    from fst_jax.aot import tpu

    assert aot.slice_named("v5p-64").topology == "v5p:2x4x4" and aot.SLICES["v5p-64"].chips == 32
    assert aot.slice_named("v6e:4x4").chips == 16 and aot.slice_named("v6e:4x4").hbm_gib == 32
    with pytest.raises(ValueError, match="v5p topologies have 3 dimensions"):
        aot.slice_named("v5p:4x4")
    with pytest.raises(ValueError, match="Unknown slice"):
        aot.slice_named("v9-8")
    monkeypatch.setattr(tpu, "libtpu_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'fst_jax\[tpu\]'.*--compiler=cpu_proxy"):
        aot.plan(MODEL, ["v5p-8"], W)
    with pytest.raises(SystemExit):
        aot.main(["--slices=v5p-8"])
