"""Group advantages: hand-computed cases, flat groups, mixed contexts, bad input."""

import numpy as np
import pytest
from fixtures import random_rollouts

from fst_jax.rl import compute_advantages, list_advantages, make_batch


def test_grpo_hand_computed_sample_and_population_std():
    # Problem 0: rewards 1, 0, 0, 1 → mean 0.5; sample std = sqrt(1/3); population std = 0.5.
    r = np.array([1.0, 0.0, 0.0, 1.0])
    g = np.array([0, 0, 0, 0])
    a = compute_advantages(r, g, "grpo", eps=0.0).advantages
    a0 = 0.5 / np.sqrt(1 / 3)
    np.testing.assert_allclose(a, [a0, -a0, -a0, a0], rtol=1e-6)
    a = compute_advantages(r, g, "grpo", eps=0.0, std="population").advantages
    np.testing.assert_allclose(a, [1, -1, -1, 1], rtol=1e-6)
    a = compute_advantages(r, g, "grpo", eps=1e-6).advantages
    np.testing.assert_allclose(a[0], 0.5 / (np.sqrt(1 / 3) + 1e-6), rtol=1e-6)


def test_rloo_and_dr_grpo_hand_computed():
    r = np.array([1.0, 0.0, 0.5, 0.0, 2.0, 1.0])
    g = np.array([3, 3, 3, 8, 8, 8])
    # RLOO: r_i − mean of the others.
    exp = [1 - 0.25, 0 - 0.75, 0.5 - 0.5, 0 - 1.5, 2 - 0.5, 1 - 1.0]
    np.testing.assert_allclose(compute_advantages(r, g, "rloo").advantages, exp, rtol=1e-6)
    exp = [0.5, -0.5, 0.0, -1.0, 1.0, 0.0]
    np.testing.assert_allclose(compute_advantages(r, g, "dr_grpo").advantages, exp, atol=1e-6)
    assert {"grpo", "rloo", "dr_grpo"} <= set(list_advantages())


def test_flat_groups_are_dropped_and_counted():
    r = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0], np.float32)
    g = np.repeat([5, 6, 7], 4)
    out = compute_advantages(r, g, "grpo", group_size=4)
    assert out.dropped_groups == 2 and out.num_groups == 3 and out.nonfinite_groups == 0
    np.testing.assert_array_equal(out.valid, [0] * 4 + [1] * 4 + [0] * 4)
    np.testing.assert_array_equal(out.advantages[:4], 0.0)
    np.testing.assert_array_equal(out.advantages[8:], 0.0)
    assert out.advantages[5] > 0 > out.advantages[4]


def test_one_group_per_problem_across_contexts():
    """Rows of one problem produced by different prompts share one group (not one per prompt)."""
    r = np.array([1.0, 1.0, 0.0, 0.0])  # prompt A: 1, 1 (flat alone); prompt B: 0, 0 (flat alone)
    problem = np.array([0, 0, 0, 0])
    out = compute_advantages(r, problem, "grpo", std="population", eps=0.0)
    np.testing.assert_allclose(out.advantages, [1, 1, -1, -1])
    assert out.dropped_groups == 0
    # Interleaved row order (G/K rows per prompt, problems mixed) gives the same per-row values.
    perm = np.array([2, 0, 3, 1])
    out2 = compute_advantages(r[perm], problem[perm], "grpo", std="population", eps=0.0)
    np.testing.assert_allclose(out2.advantages, out.advantages[perm])


def test_nonfinite_rewards_are_not_hidden():
    r = np.array([1.0, np.nan, 0.0, 1.0])
    g = np.array([0, 0, 1, 1])
    out = compute_advantages(r, g, "grpo")
    assert out.nonfinite_groups == 1
    assert np.all(np.isnan(out.advantages[:2])) and np.all(np.isfinite(out.advantages[2:]))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="does not divide"):
        compute_advantages(np.zeros(6), np.repeat([0, 1, 2], 2), group_size=4)
    with pytest.raises(ValueError, match="exactly G=2"):
        compute_advantages(np.arange(4.0), np.array([0, 0, 0, 1]), group_size=2)
    with pytest.raises(ValueError, match="one reward and one problem id"):
        compute_advantages(np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        compute_advantages(np.array([0.0, 1.0]), np.array([0, 1]), "rloo")
    with pytest.raises(KeyError, match="Unknown advantage"):
        compute_advantages(np.zeros(2), np.zeros(2), "gae")
    with pytest.raises(ValueError, match="'sample'"):
        compute_advantages(np.arange(2.0), np.zeros(2), "grpo", std="unbiased")


def test_make_batch_layout_and_errors():
    r = random_rollouts(0, batch=8, seq_len=12, vocab_size=50, group_size=2)
    batch, stats = make_batch(
        r["tokens"],
        r["positions"],
        r["completion_mask"],
        r["logps"],
        r["rewards"],
        r["group_ids"],
        group_size=2,
    )
    assert stats["completion_tokens"] == r["completion_mask"].sum()
    assert stats["valid_rows"] == batch.row_valid.sum()
    np.testing.assert_array_equal(batch.row_weight > 0, batch.row_valid > 0)
    valid_tokens = (r["completion_mask"].sum(1) * batch.row_weight).sum()
    assert np.isclose(valid_tokens, 1.0 if batch.row_valid.any() else 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="nothing to train on"):
        make_batch(
            r["tokens"],
            r["positions"],
            0 * r["completion_mask"],
            r["logps"],
            r["rewards"],
            r["group_ids"],
        )
    bad_mask = r["completion_mask"].copy()
    bad_mask[0, 0] = 1
    with pytest.raises(ValueError, match="index 0"):
        make_batch(r["tokens"], r["positions"], bad_mask, r["logps"], r["rewards"], r["group_ids"])
    with pytest.raises(ValueError, match="must both be"):
        make_batch(
            r["tokens"],
            r["positions"],
            r["completion_mask"][:, :-1],
            r["logps"],
            r["rewards"],
            r["group_ids"],
        )
    with pytest.raises(ValueError, match="old_logps"):
        make_batch(
            r["tokens"],
            r["positions"],
            r["completion_mask"],
            r["logps"][:, :5],
            r["rewards"],
            r["group_ids"],
        )
