"""Issue 12 through the controller on a tiny random model: context spread counts, several
updates per batch, tempered + truncated sampling, disjoint anchors and the answer-leak metric."""

from __future__ import annotations

import pytest
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import controller, gepa, metrics


@pytest.mark.slow
def test_fst_run_with_disjoint_anchors_two_updates_and_top_p(tmp_path):
    c = tiny_config("fst")
    c.gepa.anchors, c.gepa.disjoint_size = "disjoint", 8
    c.rl.updates_per_batch = 2
    c.sampling.temperature, c.sampling.top_p = 0.7, 0.9
    c.eval.quadrants = False
    lm = gepa.get_reflection_lm("local", generate=ScriptedLM())
    ctl = controller.Controller(c, tmp_path, reflection_lm=lm)
    rl_pool, held = ctl._split("ctl_parity")
    assert len(held) == 8 and len(rl_pool) == 16
    assert not {e.id for e in held} & {e.id for e in rl_pool}
    ctl.run()
    assert set(ctl.rs.population.anchor_ids) <= {e.id for e in held}  # GEPA never saw RL problems
    recs = metrics.read_metrics(tmp_path)
    train = [r for r in recs if "train/loss" in r]
    assert len(train) == 4 and all(r["train/updates"] == 2 for r in train)
    for r in train:
        counts = [r[f"rollout/rollouts_context_{j}"] for j in range(int(r["rollout/num_contexts"]))]
        assert sum(counts) == c.rl.batch_size * c.rl.group_size
        assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    rounds = [r for r in recs if "gepa/calls_used" in r]
    assert len(rounds) == 2
    for r in rounds:
        assert 0.0 <= r["gepa/answer_leak"] <= r["gepa/answer_leak_checked"] <= 1.0
        assert "gepa/unaffordable" in r and "gepa/stopped_on_skips" in r
