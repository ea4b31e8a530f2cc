"""Rollout reuse through the controller on the tiny model (`test_controller_e2e`'s parity task).

1. ``rl.reuse_gepa_rollouts=off`` reproduces the RL step as it was before reuse existed, bit for
   bit: the oracle is that step's code, kept verbatim below and patched in for a second run.
2. ``cycle``: reused rows appear in every step with per-context counts of `spread_contexts`;
   the cycle's first step is on-policy (ρ of reused rows = 1); a crash in the middle of a cycle
   (after its store was drawn from) resumes from the last cycle end, rebuilds the same store
   and ends with the uninterrupted run's metrics and weights — nothing lost or used twice.
"""

from __future__ import annotations

import hashlib
import time

import jax
import numpy as np
import pytest
from test_controller_e2e import tiny_config

from fst_jax import controller, gepa, metrics, rl
from fst_jax.rl.distill import teacher_view
from fst_jax.sampling.prompt_bank import spread_contexts

pytestmark = pytest.mark.slow  # whole tiny runs (tens of seconds each)


def legacy_rl_step(self, task, stream) -> None:
    """`Controller._rl_step` before rollout reuse (commit 19a53b2), verbatim but for names."""
    c, G = self.config, self.G
    t0 = time.time()
    problems = stream.take(c.rl.batch_size)
    rows = [ex for ex in problems for _ in range(G)]
    group_ids = np.repeat(np.arange(len(problems), dtype=np.int32), G)
    contexts = self.rs.exported[: self.K] if c.mode != "rl" else [self.rs.exported[0]]
    ctx_slot = np.tile(spread_contexts(G, len(contexts)), len(problems)).astype(np.int32)
    bank = self.bank.with_contexts(contexts)
    distill = c.mode == "fst_distill"
    idx = np.full_like(ctx_slot, bank.no_context) if distill else ctx_slot
    key = controller._fold(self.key, controller._TAG_RL, self.rs.step)
    self.sampler.phase = f"rl step {self.rs.step + 1}"
    out = self.sampler.sample(self.state.params, bank, idx, [ex.question for ex in rows], key,
                              self.sampling, row_ids=np.arange(len(rows), dtype=np.int32))  # fmt: skip
    t_sample = time.time() - t0
    verdicts = task.verify_batch(rows, out.texts)
    rewards = np.asarray([v.reward for v in verdicts], np.float32)
    tokens, positions, mask = out.tokens, out.positions, out.completion_mask
    roll = {"tokens": tokens, "positions": positions, "completion_mask": mask,
            "logps": out.raw_logps}  # fmt: skip
    if distill:
        roll["teacher"] = teacher_view(bank, ctx_slot, rows, out)
    if self.ref_logps is not None:
        roll["ref_logps"] = np.asarray(self.ref_logps(self.start_params, tokens, positions, mask))
    self.state, per_update, stats = rl.update_on_rollouts(
        self.train_step, self.state, roll, rewards, group_ids,
        advantage=None if distill else c.rl.advantage, aggregation=c.rl.aggregation,
        group_size=G, advantage_kwargs=self.advantage_kwargs,
        max_completion_len=c.sampling.max_new_tokens,
    )  # fmt: skip
    tm = {k: float(np.mean([u[k] for u in per_update])) for k in per_update[0]}
    tm.update({k: per_update[-1][k] for k in ("skipped_total", "learning_rate")})
    tm["updates"] = len(per_update)
    self.rs.step += 1
    lengths = np.asarray(out.completion_lengths)
    m = {f"train/{k}": v for k, v in tm.items()}
    m.update({
        "rollout/reward_mean": float(rewards.mean()),
        "rollout/reward_std": float(rewards.std()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(1.0 - np.asarray(out.finished).mean()),
        "rollout/num_contexts": len(contexts),
        "rollout/dropped_groups": stats["dropped_groups"],
        "rollout/num_groups": stats["num_groups"],
        "time/sample_s": t_sample,
        "time/step_s": time.time() - t0,
        "data/position": stream.position,
    })  # fmt: skip
    for j in range(len(contexts)):
        sel = ctx_slot == j
        m[f"rollout/reward_context_{j}"] = float(rewards[sel].mean())
        m[f"rollout/rollouts_context_{j}"] = int(sel.sum())
    self.writer.write(self.rs.step, m)


def content_lm(conversations):
    """A reflection LM whose reply depends only on its prompt (a resumed run must propose what
    the uninterrupted one proposed; a call counter would restart at 0)."""
    h = [hashlib.sha256(str(conv).encode()).hexdigest()[:6] for conv in conversations]
    return [f"```\nReply with one word. Hint {x}.\n```" for x in h]


def run(workdir, reuse="off", cycles=2):
    c = tiny_config("fst")
    c.rl.reuse_gepa_rollouts = reuse
    c.num_cycles, c.eval.quadrants, c.summary = cycles, False, False
    ctl = controller.Controller(
        c, workdir, reflection_lm=gepa.get_reflection_lm("local", generate=content_lm)
    )
    ctl.run()
    return ctl


def records(workdir):
    recs = metrics.read_metrics(workdir)
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in recs]


def params_of(ctl):
    return [np.asarray(x) for x in jax.tree.leaves(ctl.state.params)]


def test_reuse_off_is_the_rl_step_before_reuse(tmp_path, monkeypatch):
    new = run(tmp_path / "new", cycles=1)
    monkeypatch.setattr(controller.Controller, "_rl_step", legacy_rl_step)
    old = run(tmp_path / "old", cycles=1)
    assert records(tmp_path / "new") == records(tmp_path / "old")
    for a, b in zip(params_of(new), params_of(old), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any("reused" in k for r in records(tmp_path / "new") for k in r)


def test_reuse_cycle_counts_on_policy_first_step_and_mid_cycle_resume(tmp_path, monkeypatch):
    whole = run(tmp_path / "whole", "cycle")
    recs = records(tmp_path / "whole")
    train = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["train/reused_frac"] > 0 for r in train)
    for r in train:
        k, g = r["rollout/num_contexts"], 4
        spread = spread_contexts(g, k)
        assert [r[f"rollout/rollouts_context_{j}"] for j in range(k)] == [
            2 * int((spread == j).sum()) for j in range(k)
        ]
        assert r["rollout/reused_rows"] == round(r["train/reused_frac"] * 8)
        assert r["rollout/reused_tokens"] > 0 and r["rollout/sampled_tokens"] > 0
    for r in train[::2]:  # the first step of each cycle: θ = θ_c, so ρ = 1 on reused rows
        np.testing.assert_allclose(r["train/is_weight_reused"], 1.0, atol=1e-4)
    gepa_rows = [r for r in recs if "gepa/reuse_stored_rows" in r]
    assert len(gepa_rows) == 2 and all(r["gepa/reuse_store_dropped"] == 0 for r in gepa_rows)
    # Crash in cycle 2's second RL step, after its first step drew from the store.
    calls, real = {"n": 0}, rl.update_on_rollouts

    def crash_on_4th(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected crash")
        return real(*a, **kw)

    monkeypatch.setattr(rl, "update_on_rollouts", crash_on_4th)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path / "resumed", "cycle")
    monkeypatch.setattr(rl, "update_on_rollouts", real)
    resumed = run(tmp_path / "resumed", "cycle")  # resumes at the end of cycle 1
    assert resumed.rs.step == 4 and records(tmp_path / "resumed") == recs
    for a, b in zip(params_of(resumed), params_of(whole), strict=True):
        np.testing.assert_array_equal(a, b)


def test_reuse_first_step_only_reuses_on_each_cycles_first_step(tmp_path):
    run(tmp_path, "first_step")
    train = [r for r in records(tmp_path) if "train/loss" in r]
    assert [r["train/reused_frac"] > 0 for r in train] == [True, False, True, False]
    assert all(r["rollout/reused_tokens"] == 0 for r in train[1::2])
    assert all("train/is_weight_reused" not in r for r in train[1::2])
