"""Checkpoint round trips, keep-N, foreign-run refusal, and a failed save keeping the last step."""

import errno
import json
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from fst_jax import checkpoint as ckpt


def _state(seed: int):
    params = {"w": jax.random.normal(jax.random.key(seed), (4, 3)), "b": jnp.arange(3.0)}
    opt = optax.adamw(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"params": params, "opt_state": opt_state, "rng": ckpt.key_to_data(jax.random.key(seed))}


FLAT = {"mode": "fst", "rl.lr": 1e-3, "num_cycles": 2, "task.name": "math"}


def _meta(step):
    gepa = {
        "candidates": [{"text": "seed", "parents": []}],
        "scores": [[1.0, 0.0]],
        "cache": {"k": "v"},
    }
    return {"data_position": step * 3, "gepa": gepa, "metrics_offset": 10 * step}


def test_round_trip_restores_everything(tmp_path):
    c = ckpt.Checkpointer(tmp_path, FLAT, max_to_keep=2)
    state = _state(0)
    c.save(6, state, _meta(6))
    restored, meta = c.restore(ckpt.abstract_like(_state(1)))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # optax namedtuple structure survives (the optimizer can consume it directly).
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert meta["step"] == 6 and meta["data_position"] == 18
    assert meta["gepa"]["cache"] == {"k": "v"}
    assert meta["fingerprint"] == ckpt.config_fingerprint(FLAT)
    key = ckpt.key_from_data(restored["rng"])
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(key)), np.asarray(state["rng"]))


def test_keep_n_and_latest(tmp_path):
    c = ckpt.Checkpointer(tmp_path, FLAT, max_to_keep=2)
    for s in (1, 2, 3):
        c.save(s, _state(s), _meta(s))
    assert c.all_steps() == [2, 3]
    c2 = ckpt.Checkpointer(tmp_path, {**FLAT, "num_cycles": 9})  # length change = same run
    assert c2.latest_step() == 3
    _, meta = c2.restore(ckpt.abstract_like(_state(0)), step=2)
    assert meta["data_position"] == 6
    with pytest.raises(ckpt.CheckpointError, match="available"):
        c2.restore(ckpt.abstract_like(_state(0)), step=1)


def test_refuses_foreign_run_unless_told(tmp_path):
    ckpt.Checkpointer(tmp_path, FLAT).save(1, _state(0), _meta(1))
    other = {**FLAT, "rl.lr": 5e-4}
    with pytest.raises(ckpt.CheckpointError, match=r"another run.*rl\.lr.*--config.resume=force"):
        ckpt.Checkpointer(tmp_path, other)
    c = ckpt.Checkpointer(tmp_path, other, allow_foreign=True)
    assert c.latest_step() == 1


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    c = ckpt.Checkpointer(tmp_path, FLAT)
    good = _state(0)
    c.save(1, good, _meta(1))

    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The meta item's file write hits a full disk after the state item was already written.
    with (
        mock.patch.object(ocp.JsonCheckpointHandler, "_save_fn", disk_full),
        pytest.raises(
            ckpt.CheckpointError, match=r"previous checkpoint \(step 1\) is intact.*disk is full"
        ),
    ):
        c.save(2, _state(5), _meta(2))
    assert c.all_steps() == [1]
    assert not [p for p in c.directory.iterdir() if "tmp" in p.name]
    # A fresh manager (the resumed process) sees step 1 only, and it restores intact.
    c2 = ckpt.Checkpointer(tmp_path, FLAT)
    assert c2.latest_step() == 1
    restored, _ = c2.restore(ckpt.abstract_like(good))
    for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c2.save(2, _state(5), _meta(2))  # and saving works again afterwards
    assert c2.all_steps() == [1, 2]


def test_restore_params_only(tmp_path):
    state = _state(3)
    ckpt.Checkpointer(tmp_path, FLAT).save(4, state, _meta(4))
    params, meta = ckpt.restore_params(tmp_path, ckpt.abstract_like(state["params"]))
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(state["params"]["w"]))
    assert meta["step"] == 4
    with pytest.raises(ckpt.CheckpointError, match="not a workdir"):
        ckpt.restore_params(tmp_path / "nope", ckpt.abstract_like(state["params"]))


def test_meta_must_be_json(tmp_path):
    c = ckpt.Checkpointer(tmp_path, FLAT)
    with pytest.raises(ckpt.CheckpointError, match="JSON"):
        c.save(1, _state(0), {"bad": object()})
    assert json.dumps(ckpt.flatten_config({"a": {"b": (1, 2)}})) == '{"a.b": [1, 2]}'
