"""Per-host rows on one process with 8 fake devices: the block layout, the sharded sampler against
the plain one-device sampler, the gathering wrappers, and their errors.

The 2-process side (each process samples/verifies only its blocks) is in test_distributed.py
(helpers) and test_distributed_fst.py (the whole FST loop).
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fst_jax import distributed, sampling
from fst_jax import sharding as shd
from fst_jax.models import get_config, init_params
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.rows import RowShardedSampler, RowShardedTask, gather_rows, row_blocks, rows_of


def batch_sharding(shape):
    return shd.batch_sharding(shd.make_mesh(shape))


@pytest.mark.parametrize(
    "mesh_shape, n, bucket, blocks, chunk, block_len",
    [
        ((8, 1, 1), 7, None, 8, 1, 1),
        ((4, 1, 2), 7, None, 4, 2, 2),
        ((2, 2, 2), 9, None, 4, 3, 3),
        ((4, 1, 2), 9, lambda m: 1 << (m - 1).bit_length(), 4, 3, 4),
        ((1, 1, 8), 5, None, 1, 5, 5),  # tensor only: one block holds every row
        ((8, 1, 1), 3, None, 8, 1, 1),  # fewer rows than blocks: trailing blocks are padding
    ],
)
def test_row_blocks_layout(mesh_shape, n, bucket, blocks, chunk, block_len):
    plan = row_blocks(n, batch_sharding(mesh_shape), bucket)
    assert (plan.num_blocks, plan.chunk, plan.block_len) == (blocks, chunk, block_len)
    assert (plan.lo, plan.hi, plan.first, plan.last) == (0, n, 0, blocks)  # one process: all
    assert plan.global_rows == blocks * block_len
    x = np.arange(n * 2).reshape(n, 2) + 100
    padded = plan.pad_local(x, -7)
    # Reference: block j = rows [j*chunk, (j+1)*chunk) of x, then filler up to block_len.
    expect = np.full((blocks * block_len, 2), -7)
    for j in range(blocks):
        rows = x[j * chunk : (j + 1) * chunk]
        expect[j * block_len : j * block_len + len(rows)] = rows
    np.testing.assert_array_equal(padded, expect)
    np.testing.assert_array_equal(plan.unpad_local(padded), x)
    g = plan.to_global(padded, batch_sharding(mesh_shape))
    assert g.shape == (plan.global_rows, 2)
    np.testing.assert_array_equal(rows_of(g, 0, plan.global_rows), expect)


def test_row_blocks_errors():
    sh = batch_sharding((4, 1, 2))
    with pytest.raises(ValueError, match="at least one row"):
        row_blocks(0, sh)
    with pytest.raises(ValueError, match=r"bucket\(2\) returned 1"):
        row_blocks(7, sh, bucket=lambda m: 1)
    plan = row_blocks(7, sh)
    with pytest.raises(ValueError, match=r"got 3 rows; this process owns rows \[0, 7\)"):
        plan.pad_local(np.zeros((3, 1)), 0)


def test_rows_of_reads_only_whole_row_shards():
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    x = np.arange(8 * 6).reshape(8, 6)
    by_rows = jax.device_put(x, NamedSharding(mesh, P("a")))
    np.testing.assert_array_equal(rows_of(by_rows, 2, 7), x[2:7])
    # Columns split too: every shard is a partial row, but the array is fully addressable here.
    both = jax.device_put(x, NamedSharding(mesh, P("a", "b")))
    np.testing.assert_array_equal(rows_of(both, 1, 3), x[1:3])


def test_gather_rows_single_process_and_errors():
    out = gather_rows({"t": ["a", "b"], "x": np.arange(4).reshape(2, 2)}, 0, 2, 2)
    assert out["t"] == ["a", "b"]
    np.testing.assert_array_equal(out["x"], np.arange(4).reshape(2, 2))
    assert distributed.allgather_objects({"k": 1}) == [{"k": 1}]
    with pytest.raises(ValueError, match=r"field 't' has 1 rows but this process holds rows"):
        gather_rows({"t": ["a"]}, 0, 2, 2)
    with pytest.raises(RuntimeError, match=r"rows \[2\] of the 3-row batch came from no process"):
        gather_rows({"t": ["a", "b"]}, 0, 2, 3)


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("tiny_llama")
    tok = tiny_tokenizer()
    params = init_params(cfg, jax.random.key(0))
    bank = sampling.build_bank(tok, ["Be brief.", "Think first."], max_prompts=4, max_len=96)
    return cfg, tok, params, bank


def _batch(bank):
    questions = [f"Question {i}: " + "why? " * (i % 3) for i in range(7)]
    idx = np.array([0, 1, bank.no_context, 0, 1, bank.no_context, 0], np.int32)
    return questions, idx


def test_sharded_sampler_matches_one_device_sampler(tiny):
    """Blocks over data×fsdp (tensor replicas share a block): every row equals the plain sampler's
    row on one device — same key folding by global row id, whatever block the row lands in."""
    cfg, tok, params, bank = tiny
    questions, idx = _batch(bank)
    sp = sampling.SamplingParams(max_new_tokens=8)
    key = jax.random.key(3)
    s = sampling.Sampler(cfg, tok)
    ref = s.sample(params, bank, idx, questions, key, sp)
    mesh = shd.make_mesh((2, 2, 2))
    placed = jax.device_put(params, NamedSharding(mesh, P()))
    out = s.sample(placed, bank, idx, questions, key, sp, sharding=shd.batch_sharding(mesh))
    assert out.row_range == (0, 7)
    assert out.texts == ref.texts
    for f in ("tokens", "positions", "completion_mask", "completion_lengths", "finished"):
        np.testing.assert_array_equal(getattr(out, f), np.asarray(getattr(ref, f)), err_msg=f)
    np.testing.assert_array_equal(out.completion_tokens, ref.completion_tokens)
    np.testing.assert_allclose(out.logps, np.asarray(ref.logps), atol=1e-5)
    # Explicit global row ids pick the same per-row streams as the default ids.
    rid = np.arange(7, dtype=np.int32)
    timings = {}
    again = s.sample(placed, bank, idx, questions, key, sp, row_ids=rid, timings=timings,
                     sharding=shd.batch_sharding(mesh))  # fmt: skip
    assert again.texts == ref.texts
    assert timings["steps"] == int(np.asarray(ref.completion_lengths).max())
    assert timings["prefill_s"] > 0 and timings["decode_s"] > 0


def test_row_sharded_wrappers_return_the_whole_batch(tiny):
    cfg, tok, params, bank = tiny
    questions, idx = _batch(bank)
    sp = sampling.SamplingParams(max_new_tokens=8)
    key = jax.random.key(5)
    rows = batch_sharding((4, 1, 2))
    sampler = RowShardedSampler(sampling.Sampler(cfg, tok), rows, trim_to=16)
    full = sampling.Sampler(cfg, tok).sample(params, bank, idx, questions, key, sp)
    out = sampler.sample(params, bank, idx, questions, key, sp)
    assert out.texts == full.texts
    width = out.tokens.shape[1]
    used = int((np.asarray(full.positions) >= 0).sum(1).max())
    assert width == -(-used // 16) * 16 < full.tokens.shape[1]
    np.testing.assert_array_equal(out.tokens, np.asarray(full.tokens)[:, :width])
    assert (np.asarray(full.positions)[:, width:] == -1).all()  # only padding was trimmed
    np.testing.assert_array_equal(out.completion_tokens, full.completion_tokens)
    lean = sampler.sample(params, bank, idx, questions, key, sp, arrays=False)
    assert lean.texts == full.texts and lean.tokens is None and lean.completion_tokens is None
    np.testing.assert_array_equal(lean.finished, np.asarray(full.finished))
    assert sampler.task_buckets == sampler.sampler.task_buckets  # delegation

    class Recorder:
        seed_prompt = "S"

        def __init__(self):
            self.calls = []

        def verify_batch(self, examples, completions):
            self.calls.append(list(examples))
            return [f"{e}:{c}" for e, c in zip(examples, completions)]

    task = RowShardedTask(Recorder(), rows)
    assert task.verify_batch(["a", "b", "c"], ["1", "2", "3"]) == ["a:1", "b:2", "c:3"]
    assert task.calls == [["a", "b", "c"]] and task.seed_prompt == "S"
    assert task.verify_batch([], []) == [] and len(task.calls) == 1
    with pytest.raises(ValueError, match="2 examples but 1 completions"):
        task.verify_batch(["a", "b"], ["1"])


def test_random_model_spec_fields():
    from fst_jax import run_setup

    c = controller_config()
    c.model.spec = "random:tiny_llama,max_position_embeddings=4096,tie_word_embeddings=true"
    mcfg, _, _ = run_setup.load_model(c)
    assert mcfg.max_position_embeddings == 4096 and mcfg.tie_word_embeddings
    assert mcfg.name == "tiny_llama" and mcfg.dtype == c.model.dtype
    for spec, match in [
        ("random:tiny_llama,max_position_embedings=9", "did you mean 'max_position_embeddings'"),
        ("random:tiny_llama,max_position_embeddings=big", "max_position_embeddings='big' is not a valid int"),
        ("random:tiny_llama,tie_word_embeddings=maybe", "is not a valid bool"),
        ("random:tiny_llama,rope_scaling=2", "is not field=value of a ModelConfig field"),
        ("random:tiny_llama,4096", "is not field=value"),
    ]:  # fmt: skip
        c.model.spec = spec
        with pytest.raises(run_setup.ConfigError, match=match):
            run_setup.load_model(c)


def controller_config():
    import ml_collections

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(spec="", dtype="float32", param_dtype="float32", remat="none", scan_layers=False)
    )
    return c
