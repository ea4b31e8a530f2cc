"""Issue 12 points 2 and 9 on the RL side: π_old under tempered/truncated sampling, GSPO, and
several updates per rollout batch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import random_rollouts

from fst_jax import sharding
from fst_jax.models import get_config, init_params
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.rl import LossConfig, RLConfig, make_batch, make_train_step
from fst_jax.rl.losses import TokenInputs, get_loss
from fst_jax.rl.train_step import update_on_rollouts
from fst_jax.sampling import Sampler, SamplingParams, build_bank

CFG = get_config("tiny_llama")
TASKS = ["What is 2+2?", "Name a color.", "Say hi", "Count to three."]


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def rollouts(params):
    """Real sampler rollouts at temperature 0.7 with top-p 0.9 (2 problems × G=4)."""
    tok = tiny_tokenizer()
    bank = build_bank(tok, ["Be brief.", "Think."], max_prompts=4, max_len=48)
    sp = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=12)
    tasks = [TASKS[0]] * 4 + [TASKS[1]] * 4
    out = Sampler(CFG, tok).sample(params, bank, [0, 0, 1, 1] * 2, tasks, jax.random.PRNGKey(5), sp)
    return out


@functools.cache
def _step(temperature: float):
    """One compiled train step per temperature (the two 0.7 checks share one compile)."""
    return make_train_step(CFG, sharding.single_device_mesh(), RLConfig(temperature=temperature))


def _one_step_metrics(params, out, old, temperature):
    rewards = np.asarray([0, 1, 0, 1, 1, 0, 0, 0], np.float32)
    batch, _ = make_batch(
        out.tokens, out.positions, out.completion_mask, old, rewards,
        np.repeat(np.arange(2), 4), group_size=4,
    )  # fmt: skip
    step = _step(temperature)
    _, m = step(step.init(params), batch)
    return {k: float(v) for k, v in jax.device_get(m).items()}


def test_on_policy_ratio_is_one_at_temperature_07_top_p_09(params, rollouts):
    m = _one_step_metrics(params, rollouts, rollouts.raw_logps, temperature=0.7)
    # |log ρ| ≤ 5e-5 on every token: ρ = 1 within fp32 (cached vs full-forward sum order).
    assert m["logp_mismatch_max"] < 5e-5 and m["clip_frac"] == 0.0
    # The two inconsistent pairings this replaces are far from on-policy.
    assert _one_step_metrics(params, rollouts, rollouts.logps, 0.7)["logp_mismatch_max"] > 1e-2
    assert _one_step_metrics(params, rollouts, rollouts.raw_logps, 1.0)["logp_mismatch_max"] > 1e-2


def _gspo_reference(lp, old, adv, mask, eps_low, eps_high):
    """Sequence-level GSPO objective (paper Eq. 5) with a sequence-mean over rows."""
    n = jnp.sum(mask, axis=1)
    s = jnp.exp(jnp.sum((lp - old) * mask, axis=1) / n)
    per_seq = jnp.maximum(-s * adv, -jnp.clip(s, 1 - eps_low, 1 + eps_high) * adv)
    return jnp.mean(per_seq)


@pytest.mark.parametrize("shift", [0.0, 0.05, -0.3, 0.8])
def test_gspo_matches_the_sequence_level_objective(shift):
    rng = np.random.default_rng(3)
    b, t = 6, 9
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        mask[i, 1 : 2 + rng.integers(1, t - 1)] = 1.0
    lp = jnp.asarray(np.where(mask > 0, -rng.exponential(1.0, (b, t)), 0.0), jnp.float32)
    old = lp - shift * jnp.asarray(rng.uniform(0.5, 1.5, (b, t)), jnp.float32) * mask
    adv = jnp.asarray(rng.normal(size=b), jnp.float32)
    cfg = LossConfig(name="gspo", eps_low=0.1, eps_high=0.2)
    spec = get_loss("gspo")
    assert spec.default_aggregation == "sequence_mean"

    def ours(lp_):
        x = TokenInputs(logps=lp_, old_logps=old, advantages=jnp.broadcast_to(adv[:, None], (b, t)),
                        mask=jnp.asarray(mask))  # fmt: skip
        per_token, _ = spec.fn(x, cfg)
        w = 1.0 / jnp.sum(mask, axis=1, keepdims=True) / b  # sequence_mean row weights
        return jnp.sum(per_token * mask * w)

    ref = lambda lp_: _gspo_reference(lp_, old, adv, jnp.asarray(mask), 0.1, 0.2)  # noqa: E731
    np.testing.assert_allclose(ours(lp), ref(lp), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(lp), jax.grad(ref)(lp), rtol=1e-4, atol=1e-6)


def _rollouts(seed=0, batch=8, group=2):
    r = random_rollouts(seed, batch=batch, seq_len=16, vocab_size=CFG.vocab_size, group_size=group)
    r["rewards"] = np.tile(np.asarray([0.0, 1.0], np.float32), batch // 2)  # no flat group
    return r


def test_one_update_per_batch_equals_the_plain_step(params):
    r = _rollouts()
    mesh = sharding.single_device_mesh()
    step = make_train_step(CFG, mesh, RLConfig(learning_rate=1e-3))
    batch, _ = make_batch(r["tokens"], r["positions"], r["completion_mask"], r["logps"],
                          r["rewards"], r["group_ids"], group_size=2)  # fmt: skip
    direct, _ = step(step.init(params), batch)
    via, mets, stats = update_on_rollouts(step, step.init(params), r, r["rewards"], r["group_ids"],
                                          group_size=2)  # fmt: skip
    assert len(mets) == 1 and stats["num_groups"] == 4
    for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(via.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_updates_per_batch_make_the_ratio_act(params):
    """U=2: mini-batch 1 is on-policy (ρ = 1); mini-batch 2 sees π_θ moved by update 1, so ρ ≠ 1
    and CISPO's truncation can bite. Equals two plain steps on the two halves (whole groups)."""
    from fst_jax.rl.logprobs import token_logps

    r = _rollouts(seed=1)
    on_policy, _ = token_logps(CFG, params, r["tokens"], r["positions"])
    r["logps"] = np.where(r["completion_mask"] > 0, np.asarray(on_policy), 0.0)
    mesh = sharding.single_device_mesh()
    cfg = RLConfig(learning_rate=3e-2, updates_per_batch=2, loss=LossConfig(tau=1.0001))
    step = make_train_step(CFG, mesh, cfg)
    state, mets, stats = update_on_rollouts(step, step.init(params), r, r["rewards"],
                                            r["group_ids"], group_size=2)  # fmt: skip
    assert len(mets) == 2 and int(state.step) == 2 and stats["num_groups"] == 4
    assert mets[0]["logp_mismatch_max"] < 1e-4 and mets[0]["clip_frac"] == 0.0
    assert mets[1]["logp_mismatch_max"] > 1e-3 and mets[1]["clip_frac"] > 0.0
    # Oracle: two plain updates on rows 0..3 then 4..7 (problems 0,1 then 2,3).
    plain = make_train_step(CFG, mesh, RLConfig(learning_rate=3e-2, loss=LossConfig(tau=1.0001)))
    s = plain.init(params)
    for rows in (slice(0, 4), slice(4, 8)):
        b, _ = make_batch(*(r[k][rows] for k in ("tokens", "positions", "completion_mask", "logps",
                                                  "rewards", "group_ids")), group_size=2)  # fmt: skip
        s, _ = plain(s, b)
    for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="updates_per_batch=3 must divide the 4 problems"):
        bad = make_train_step(CFG, mesh, RLConfig(updates_per_batch=3))
        update_on_rollouts(bad, bad.init(params), r, r["rewards"], r["group_ids"], group_size=2)
    with pytest.raises(ValueError, match="temperature"):
        RLConfig(temperature=0.0)
