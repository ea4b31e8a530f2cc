"""Mesh construction, logical rules, and the sharded step on 8 fake CPU devices vs 1 device."""

import jax
import numpy as np
import pytest
from fixtures import random_rollouts
from jax.sharding import PartitionSpec as P

from fst_jax import sharding
from fst_jax.models import get_config, init_params
from fst_jax.rl import RLConfig, host_metrics, make_batch, make_measure_kl, make_train_step

CFG = get_config("tiny_llama")


def test_resolve_mesh_shape():
    assert sharding.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    assert sharding.resolve_mesh_shape(sharding.MeshConfig(1, 2, 4).shape, 8) == (1, 2, 4)
    with pytest.raises(ValueError, match="at most one"):
        sharding.resolve_mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="uses 4 devices"):
        sharding.resolve_mesh_shape((2, 2, 1), 8)
    with pytest.raises(ValueError, match="3 entries"):
        sharding.resolve_mesh_shape((8, 1), 8)


def test_make_mesh_axes():
    mesh = sharding.make_mesh((2, 4, 1))
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sharding.batch_shard_count(mesh) == 8


def test_logical_rules_and_fallbacks():
    mesh = sharding.make_mesh((1, 2, 4))
    spec = sharding.logical_to_mesh_spec(P("embed", "heads", "head_dim"), (64, 4, 16), mesh)
    assert spec == P("fsdp", "tensor", None)
    # 2 KV heads on a tensor axis of 4: replicated rather than an invalid split.
    spec = sharding.logical_to_mesh_spec(P("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh)
    assert spec == P("fsdp", None, None)
    # A mesh axis is never used twice in one spec.
    rules = (("a", "tensor"), ("b", "tensor"))
    assert sharding.logical_to_mesh_spec(P("a", "b"), (8, 8), mesh, rules) == P("tensor", None)
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_mesh_spec(P("experts"), (8,), mesh)
    shards = sharding.param_shardings(CFG, mesh)
    desc = sharding.describe_shardings(shards)
    assert desc["['layers_0']['mlp']['gate_proj']['kernel']"] == str(P("fsdp", "tensor"))
    assert desc["['lm_head']['kernel']"] == str(P("fsdp", "tensor"))


def test_shard_params_and_batch_errors():
    mesh = sharding.make_mesh((8, 1, 1))
    with pytest.raises(ValueError, match="multiple of 8"):
        sharding.shard_batch({"tokens": np.zeros((6, 4), np.int32)}, mesh)
    params = init_params(CFG, jax.random.PRNGKey(0))
    wrong = init_params(get_config("tiny_qwen3"), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="do not match config"):
        sharding.shard_params(wrong, CFG, mesh)
    placed, shards = sharding.shard_params(params, CFG, sharding.make_mesh((1, 2, 4)))
    emb = placed["embed_tokens"]["embedding"]
    assert emb.sharding == shards["embed_tokens"]["embedding"]
    assert len(emb.addressable_shards) == 8


@pytest.fixture(scope="module")
def reference():
    """Two single-device steps: the result every mesh must reproduce."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    batches = []
    for seed in (0, 1):
        r = random_rollouts(seed, batch=8, seq_len=16, vocab_size=CFG.vocab_size, group_size=2)
        b, _ = make_batch(
            r["tokens"],
            r["positions"],
            r["completion_mask"],
            r["logps"],
            r["rewards"],
            r["group_ids"],
            group_size=2,
        )
        batches.append(b)
    cfg = RLConfig(learning_rate=1e-3, warmup_steps=1)
    step = make_train_step(CFG, sharding.single_device_mesh(), cfg)
    state = step.init(params)
    mets = []
    for b in batches:
        state, m = step(state, b)
        mets.append(host_metrics(m))
    return params, batches, cfg, jax.device_get(state.params), mets


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (1, 2, 4)])
def test_sharded_step_equals_single_device(reference, shape):
    params, batches, cfg, ref_params, ref_mets = reference
    mesh = sharding.make_mesh(shape)
    step = make_train_step(CFG, mesh, cfg)
    state = step.init(params)
    for b, ref_m in zip(batches, ref_mets):
        state, m = step(state, b)
        m = host_metrics(m)
        for k in ("loss", "grad_norm", "entropy", "tokens", "logp_mismatch_max", "dropped_groups"):
            np.testing.assert_allclose(m[k], ref_m[k], rtol=2e-5, atol=1e-7, err_msg=k)
    # Params really are distributed as the rules say.
    gate = state.params["layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert gate.sharding.spec == step.param_shardings["layers_0"]["mlp"]["gate_proj"]["kernel"].spec
    # Same state tolerance as the micro-batch test (AdamW: 5 % of lr).
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=5e-5),
        jax.device_get(state.params),
        ref_params,
    )


def test_measure_kl_sharded(reference):
    params, batches, _, trained, _ = reference
    mesh = sharding.make_mesh((2, 2, 2))
    measure = make_measure_kl(CFG, mesh, chunk=5)
    same = {k: float(v) for k, v in measure(params, params, batches[0]).items()}
    for k in ("k1", "k2", "k3", "full"):
        assert abs(same[k]) < 1e-6, same
    moved = {k: float(v) for k, v in measure(trained, params, batches[0]).items()}
    assert moved["k3"] >= 0 and moved["k2"] > 0 and moved["full"] > 0
    assert moved["tokens"] == batches[0].completion_mask.sum()
    with pytest.raises(ValueError, match="no completion tokens"):
        measure(params, params, batches[0].replace(completion_mask=0 * batches[0].completion_mask))
