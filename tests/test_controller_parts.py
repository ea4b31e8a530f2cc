"""The pieces the controller's loop is built from, each alone: `run_setup.build_parts` (config →
run components), `run_state.save_run` / `restore_run` (checkpoint round trip and log cut-back),
`rl.train_rollouts` / `rl.step_metrics` (one RL step's update inputs and record) and
`evaluation.stream_metrics` (a stream's evaluation record). The whole loop runs in
test_controller_e2e / test_main_resume (slow)."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import checkpoint as ckpt
from fst_jax import evaluation, rl, run_setup
from fst_jax.errors import ConfigError
from fst_jax.gepa.lineage import GEPA_LOG_FILE
from fst_jax.metrics import METRICS_FILE
from fst_jax.rl.distill import teacher_view
from fst_jax.run_state import RunState, restore_run, save_run

# ----------------------------------------------------------------------------- build_parts


def test_build_parts_follows_the_config(model, tok):
    c = tiny_config("fst")
    lm = ScriptedLM()
    cfg, params = model  # conftest's tiny_llama (a model injected like the tests' controllers)
    p = run_setup.build_parts(c, model=(cfg, params, tok), reflection_lm=lm,
                              reflect_key_for=lambda conv: None)  # fmt: skip
    assert list(p.tasks) == ["ctl_parity"] and p.tasks["ctl_parity"].name == "ctl_parity"
    assert (c.rl.steps_per_cycle, c.rl.group_size, c.gepa.k) == (p.T, p.G, p.K)
    assert p.row_multiple == 1 and p.mesh.devices.size == 1  # mesh.devices = 1
    assert p.model_config is cfg and p.base_params is params and p.reflector.lm is lm
    # no init_from: the run starts from the base weights, and there is no probe reference
    assert p.start_params is p.base_params and p.init_params is None
    assert p.tokenizer is tok
    assert p.pad_id == (tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    assert p.sampling.max_new_tokens == c.sampling.max_new_tokens
    assert p.sampling.temperature == c.sampling.temperature
    assert p.bank.max_prompts == c.gepa.max_pool and p.bank.max_len == c.sampling.max_context_len
    assert p.ref_logps is None  # rl.kl_coef = 0 in the default config
    assert c.rl.kl_coef == 0
    assert p.gepa_config.acceptance == c.gepa.acceptance


def test_build_parts_checks_the_config_before_loading_anything(monkeypatch):
    c = tiny_config("fst")
    c.gepa.k = 3  # does not divide rl.group_size = 4

    def no_load(_):
        raise AssertionError("the model was loaded before the config check")

    monkeypatch.setattr(run_setup, "load_model", no_load)
    with pytest.raises(ConfigError, match=r"gepa.k=3 contexts must divide rl.group_size=4"):
        run_setup.build_parts(c, reflect_key_for=lambda conv: None)


# ----------------------------------------------------------------------------- save / restore


def _run_state(step: int) -> RunState:
    rs = RunState.new(["a", "b"], "seed ctx", seed=3, minibatch_size=2)
    rs.step, rs.cycle = step, 2
    rs.positions["a"] = 7
    rs.exported = ["best", "second"]
    rs.running_max.update(0.25)
    rs.task_running_max["b"].update(0.5)
    rs.last_eval = {"val/mean@1": 0.25}
    return rs


def _write_lines(path, n: int) -> list[bytes]:
    lines = [(json.dumps({"step": i, "x": i / 3}) + "\n").encode() for i in range(n)]
    path.write_bytes(b"".join(lines))
    return lines


def _checkpointer(workdir) -> ckpt.Checkpointer:
    return ckpt.Checkpointer(workdir, {"seed": 3, "mode": "fst"}, max_to_keep=2)


def test_save_then_restore_round_trips_and_cuts_the_logs_back(tmp_path):
    train = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "n": jnp.int32(4)}
    key = jax.random.key(11)
    rs = _run_state(step=5)
    metrics_lines = _write_lines(tmp_path / METRICS_FILE, 3)
    gepa_lines = _write_lines(tmp_path / GEPA_LOG_FILE, 4)
    m_off, g_off = len(metrics_lines[0]) + len(metrics_lines[1]), len(gepa_lines[0])
    save_run(_checkpointer(tmp_path), rs, train, key, metrics_offset=m_off, gepa_log_offset=g_off)
    # a later attempt wrote more records, then died before its next checkpoint
    with open(tmp_path / METRICS_FILE, "ab") as f:
        f.write(b'{"step": 9}\n')

    fresh = {"w": jnp.zeros((2, 3), jnp.float32), "n": jnp.int32(0)}
    out = restore_run(_checkpointer(tmp_path), tmp_path, fresh, jax.random.key(0), ["a", "b"],
                      resume="auto", is_main=True)  # fmt: skip
    assert out is not None
    train2, key2, rs2 = out
    np.testing.assert_array_equal(np.asarray(train2["w"]), np.asarray(train["w"]))
    assert int(train2["n"]) == 4
    np.testing.assert_array_equal(jax.random.key_data(key2), jax.random.key_data(key))
    assert rs2.to_json(m_off) == rs.to_json(m_off)
    assert rs2.running_max.value == 0.25 and rs2.task_running_max["b"].value == 0.5
    # records after the checkpoint are gone (they get redone), the ones before are untouched
    assert (tmp_path / METRICS_FILE).read_bytes() == b"".join(metrics_lines[:2])
    assert (tmp_path / GEPA_LOG_FILE).read_bytes() == gepa_lines[0]


def test_restore_without_a_checkpoint_empties_a_dead_attempts_logs(tmp_path):
    _write_lines(tmp_path / METRICS_FILE, 2)
    _write_lines(tmp_path / GEPA_LOG_FILE, 2)
    out = restore_run(_checkpointer(tmp_path), tmp_path, {"w": jnp.zeros(2)}, jax.random.key(0),
                      ["a"], resume="auto", is_main=True)  # fmt: skip
    assert out is None
    assert (tmp_path / METRICS_FILE).read_bytes() == b""
    assert (tmp_path / GEPA_LOG_FILE).read_bytes() == b""


def test_restore_elsewhere_than_process_0_leaves_the_logs(tmp_path):
    lines = _write_lines(tmp_path / METRICS_FILE, 2)
    restore_run(_checkpointer(tmp_path), tmp_path, {"w": jnp.zeros(2)}, jax.random.key(0), ["a"],
                resume="auto", is_main=False)  # fmt: skip
    assert (tmp_path / METRICS_FILE).read_bytes() == b"".join(lines)


def test_resume_never_refuses_a_workdir_with_checkpoints(tmp_path):
    train = {"w": jnp.ones(2)}
    save_run(_checkpointer(tmp_path), _run_state(step=1), train, jax.random.key(1),
             metrics_offset=0, gepa_log_offset=0)  # fmt: skip
    with pytest.raises(ConfigError, match=r"latest step 1.*resume=never.*fresh --workdir"):
        restore_run(_checkpointer(tmp_path), tmp_path, train, jax.random.key(1), ["a"],
                    resume="never", is_main=True)  # fmt: skip


def test_a_checkpoint_without_a_gepa_log_offset_empties_the_log(tmp_path):
    """Checkpoints written before gepa_log.jsonl existed: nothing in the log predates them."""
    train = {"w": jnp.ones(2)}
    cp = _checkpointer(tmp_path)
    host = _run_state(step=2).to_json(0)  # the old host item: no gepa_log_offset
    cp.save(2, {"train": train, "rng": ckpt.key_to_data(jax.random.key(2))}, {"host": host})
    _write_lines(tmp_path / GEPA_LOG_FILE, 3)
    out = restore_run(_checkpointer(tmp_path), tmp_path, train, jax.random.key(0), ["a", "b"],
                      resume="auto", is_main=True)  # fmt: skip
    assert out is not None and out[2].step == 2
    assert (tmp_path / GEPA_LOG_FILE).read_bytes() == b""


# ----------------------------------------------------------------------------- one RL step


def _step_rollouts(n_problems=2, g=4, width=10, reused=None, seed=0) -> rl.StepRollouts:
    rng = np.random.default_rng(seed)
    n = n_problems * g
    lengths = rng.integers(1, 5, n)
    comp = rng.integers(3, 50, (n, 5)).astype(np.int32)
    mask = (np.arange(width)[None] >= width - 5) & (
        np.arange(width)[None] < width - 5 + lengths[:, None]
    )
    arrays = {
        "tokens": rng.integers(0, 50, (n, width)).astype(np.int32),
        "positions": np.tile(np.arange(width, dtype=np.int32), (n, 1)),
        "completion_mask": mask.astype(np.float32),
        "logps": -rng.random((n, width)).astype(np.float32),
    }
    rows = [
        types.SimpleNamespace(question=f"question {p}") for p in range(n_problems) for _ in range(g)
    ]
    return rl.StepRollouts(
        rows=rows, group_ids=np.repeat(np.arange(n_problems, dtype=np.int32), g),
        ctx_slot=np.tile(np.arange(g, dtype=np.int32) % 2, n_problems), arrays=arrays,
        rewards=rng.integers(0, 2, n).astype(np.float32), completion_lengths=lengths,
        finished=lengths < 4, reused=np.zeros(n, bool) if reused is None else reused,
        sampled=types.SimpleNamespace(completion_tokens=comp, completion_lengths=lengths),
        sample_s=1.5,
    )  # fmt: skip


def test_train_rollouts_is_the_batch_plus_what_the_loss_needs(bank):
    r = _step_rollouts()
    plain = rl.train_rollouts(r)
    assert set(plain) == {"tokens", "positions", "completion_mask", "logps"}  # no reuse flags
    for k, v in r.arrays.items():
        np.testing.assert_array_equal(plain[k], v)

    calls = []

    def ref_logps(params, tokens, positions, mask):  # a stand-in reference model
        calls.append(params)
        return jnp.asarray(tokens * 0.5 + positions - mask)

    with_ref = rl.train_rollouts(r, ref_logps=ref_logps, ref_params="θ_start")
    assert calls == ["θ_start"] and isinstance(with_ref["ref_logps"], np.ndarray)
    a = r.arrays
    np.testing.assert_allclose(
        with_ref["ref_logps"], a["tokens"] * 0.5 + a["positions"] - a["completion_mask"]
    )

    bank2 = bank.with_contexts(["ctx zero", "ctx one"])
    distill = rl.train_rollouts(r, teacher_bank=bank2)
    tok, _, msk = distill["teacher"]
    for got, want in zip(distill["teacher"], teacher_view(bank2, r.ctx_slot, r.rows, r.sampled)):
        np.testing.assert_array_equal(got, want)
    # each row's teacher completion is the student's own completion tokens, after its context
    lengths = r.sampled.completion_lengths
    np.testing.assert_array_equal(msk.sum(1), lengths)
    for b in range(len(r.rows)):
        np.testing.assert_array_equal(
            tok[b][msk[b] == 1], r.sampled.completion_tokens[b, : lengths[b]]
        )
    assert not np.array_equal(tok[0][: int(np.argmax(msk[0]))], tok[1][: int(np.argmax(msk[1]))])


def test_train_rollouts_keeps_reuse_flags_only_when_rows_were_reused():
    reused = np.zeros(8, bool)
    reused[[1, 6]] = True
    roll = rl.train_rollouts(_step_rollouts(reused=reused))
    np.testing.assert_array_equal(roll["reused"], reused)


def test_step_metrics_is_the_steps_record_in_its_order():
    r = _step_rollouts()
    per_update = [
        {"loss": 1.0, "tokens": 10.0, "skipped_total": 0, "learning_rate": 0.1},
        {"loss": 3.0, "tokens": 12.0, "skipped_total": 1, "learning_rate": 0.2},
    ]
    m = rl.step_metrics(r, per_update, {"dropped_groups": 1, "num_groups": 2}, num_contexts=2,
                        reuse=False)  # fmt: skip
    lengths = r.completion_lengths
    want = {
        "train/loss": 2.0, "train/tokens": 11.0, "train/skipped_total": 1,
        "train/learning_rate": 0.2, "train/updates": 2,
        "rollout/reward_mean": float(r.rewards.mean()), "rollout/reward_std": float(r.rewards.std()),
        "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(1 - r.finished.mean()), "rollout/num_contexts": 2,
        "rollout/reward_context_0": float(r.rewards[r.ctx_slot == 0].mean()),
        "rollout/rollouts_context_0": 4,
        "rollout/reward_context_1": float(r.rewards[r.ctx_slot == 1].mean()),
        "rollout/rollouts_context_1": 4,
        "rollout/dropped_groups": 1, "rollout/num_groups": 2, "time/sample_s": 1.5,
    }  # fmt: skip
    assert m == want
    assert list(m) == list(want)  # metrics.jsonl's key order is the record's


# ----------------------------------------------------------------------------- evaluation


def test_stream_metrics_prefixes_each_task_and_averages_the_headline_keys():
    per_task = {
        "a": {"val/mean@4": 0.2, "val/mean@4_no_context": 0.1, "val/kl_to_base": 0.3, "val/n": 5},
        "b": {"val/mean@4": 0.6, "val/mean@4_no_context": 0.3, "val/n": 7},
    }
    rmax = evaluation.RunningMax()
    m = evaluation.stream_metrics(per_task, 4, rmax)
    assert m["val/a/mean@4"] == 0.2 and m["val/b/n"] == 7 and m["val/a/kl_to_base"] == 0.3
    assert m["val/mean@4"] == pytest.approx(0.4)
    assert m["val/mean@4_no_context"] == pytest.approx(0.2)
    assert "val/kl_to_base" not in m  # not measured on every task: no stream mean
    assert "val/n" not in m  # not a headline key
    assert m["val/mean@4_running_max"] == pytest.approx(0.4) == rmax.value
    # the running max keeps the best stream mean across evaluations
    lower = {n: dict(t, **{"val/mean@4": 0.0}) for n, t in per_task.items()}
    assert evaluation.stream_metrics(lower, 4, rmax)["val/mean@4_running_max"] == pytest.approx(0.4)
