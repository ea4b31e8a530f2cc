"""Losses and KL estimators against independent torch / numpy references (TRL / MiniMax-M1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fst_jax.rl import LossConfig, get_loss, kl_estimate, list_losses, row_weights
from fst_jax.rl.logprobs import full_kl_from_hidden, logps_from_hidden
from fst_jax.rl.losses import TokenInputs

B, S, V = 6, 7, 11


def _fixture(seed=0):
    """Logits, tokens, old log-probs (some far below → truncated weights), mask, advantages."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, S, V)).astype(np.float32)
    tokens = rng.integers(0, V, (B, S))
    mask = np.zeros((B, S), np.float32)
    for b in range(B):
        p = rng.integers(1, 3)
        c = rng.integers(1, S - p + 1)
        mask[b, p : p + c] = 1
    logp_now = np.take_along_axis(
        logits - np.log(np.exp(logits).sum(-1, keepdims=True)), tokens[..., None], -1
    )[..., 0]
    old = logp_now + rng.normal(scale=0.5, size=(B, S)).astype(np.float32)
    old[0, :] -= 3.0  # ρ ≈ e^3 > 4: truncated row
    old[1, :] += 3.0  # ρ ≈ e^-3 ≪ 1: untouched by CISPO (no lower clip)
    adv = rng.normal(size=B).astype(np.float32)
    groups = np.array([0, 0, 1, 1, 2, 2])
    return logits, tokens, old.astype(np.float32), mask, adv, groups


def _jax_loss(cfg, logits, tokens, old, mask, adv, w):
    def f(lg):
        lp = jnp.take_along_axis(jax.nn.log_softmax(lg, -1), tokens[..., None], -1)[..., 0]
        a = jnp.broadcast_to(adv[:, None], lp.shape)
        per_tok, _ = get_loss(cfg.name).fn(TokenInputs(lp, old, a), cfg)
        return jnp.sum(jnp.where(mask > 0, w[:, None] * per_tok, 0.0))

    return jax.value_and_grad(f)(jnp.asarray(logits))


def _torch_prompt_level(per_token_fn, logits, tokens, mask, groups):
    """Σ_x [(1/Σ_i|y_i|) Σ_i Σ_t ℓ] / |X| — the paper's Eq. 4, written independently."""
    lg = torch.tensor(logits, requires_grad=True)
    lp = torch.log_softmax(lg, -1).gather(-1, torch.tensor(tokens)[..., None])[..., 0]
    ell = per_token_fn(lp) * torch.tensor(mask)
    total = 0.0
    uniq = np.unique(groups)
    for g in uniq:
        rows = torch.tensor(groups == g)
        total = total + ell[rows].sum() / torch.tensor(mask)[rows].sum()
    loss = total / len(uniq)
    loss.backward()
    return loss.item(), lg.grad.numpy()


@pytest.mark.parametrize("clip_low", [None, 0.5])
def test_cispo_matches_torch_reference(clip_low):
    logits, tokens, old, mask, adv, groups = _fixture()
    cfg = LossConfig(name="cispo", tau=4.0, clip_low=clip_low)
    w = row_weights(mask.sum(1), groups, np.ones(B, bool), "prompt_token_mean")

    def trl_cispo(lp):  # TRL loss_type="cispo": clamp(ratio, max=ε_high).detach() · A · logp
        ratio = torch.exp(lp - torch.tensor(old))
        weight = torch.clamp(ratio, min=clip_low, max=4.0) if clip_low else ratio.clamp(max=4.0)
        return -weight.detach() * torch.tensor(adv)[:, None] * lp

    ref_loss, ref_grad = _torch_prompt_level(trl_cispo, logits, tokens, mask, groups)
    loss, grad = _jax_loss(cfg, logits, tokens, old, mask, adv, w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
    # The fixture really truncates: row 0 has weights at τ.
    ratio = np.exp(
        np.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0] - old
    )
    assert np.any((ratio > 4.0) & (mask > 0))


def test_cispo_gradient_does_not_flow_through_weight():
    """d ℓ / d log π = −clip(ρ, 0, τ) · A exactly (a weight with gradient would add ρ·A·log π)."""
    _, _, old, _, adv, _ = _fixture(1)
    rng = np.random.default_rng(3)
    lp = jnp.asarray(old + rng.normal(scale=1.5, size=old.shape).astype(np.float32))
    cfg = LossConfig(name="cispo")
    a = jnp.broadcast_to(adv[:, None], lp.shape)
    grad = jax.grad(lambda x: jnp.sum(get_loss("cispo").fn(TokenInputs(x, old, a), cfg)[0]))(lp)
    expected = -np.minimum(np.exp(np.asarray(lp) - old), 4.0) * adv[:, None]
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    _, clipped = get_loss("cispo").fn(TokenInputs(lp, old, a), cfg)
    np.testing.assert_array_equal(np.asarray(clipped) > 0, np.exp(np.asarray(lp) - old) > 4.0)


def test_grpo_ppo_clip_matches_torch_reference():
    logits, tokens, old, mask, adv, groups = _fixture(2)
    cfg = LossConfig(name="grpo", eps_low=0.2, eps_high=0.28)
    w = row_weights(mask.sum(1), groups, np.ones(B, bool), "prompt_token_mean")

    def ppo(lp):
        ratio = torch.exp(lp - torch.tensor(old))
        a = torch.tensor(adv)[:, None]
        return -torch.min(ratio * a, torch.clamp(ratio, 0.8, 1.28) * a)

    ref_loss, ref_grad = _torch_prompt_level(ppo, logits, tokens, mask, groups)
    loss, grad = _jax_loss(cfg, logits, tokens, old, mask, adv, w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_aggregation_weights_match_definitions():
    c = np.array([3.0, 5.0, 2.0, 2.0, 4.0, 0.0])
    groups = np.array([7, 7, 9, 9, 4, 4])
    valid = np.array([1, 1, 0, 0, 1, 1], bool)  # group 9 dropped; last row empty
    w = row_weights(c, groups, valid, "prompt_token_mean")
    np.testing.assert_allclose(w, [1 / 8 / 2, 1 / 8 / 2, 0, 0, 1 / 4 / 2, 0], rtol=1e-6)
    assert np.isclose((w * c).sum(), 1.0)
    w = row_weights(c, groups, valid, "token_mean")
    np.testing.assert_allclose(w, [1 / 12, 1 / 12, 0, 0, 1 / 12, 0], rtol=1e-6)
    w = row_weights(c, groups, valid, "sequence_mean")
    np.testing.assert_allclose(w, [1 / 3 / 3, 1 / 5 / 3, 0, 0, 1 / 4 / 3, 0], rtol=1e-6)
    w = row_weights(c, groups, valid, "token_sum_norm", max_completion_len=10)
    np.testing.assert_allclose(w, [1 / 30, 1 / 30, 0, 0, 1 / 30, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="max_completion_len"):
        row_weights(c, groups, valid, "token_sum_norm")
    with pytest.raises(ValueError, match="Unknown aggregation"):
        row_weights(c, groups, valid, "mean_of_means")


def test_kl_estimators():
    rng = np.random.default_rng(0)
    lp = -rng.exponential(2.0, 1000).astype(np.float32)
    ref = lp + rng.normal(scale=1.0, size=1000).astype(np.float32)
    log_r = ref.astype(np.float64) - lp.astype(np.float64)
    np.testing.assert_allclose(kl_estimate(lp, ref, "k1"), -log_r, rtol=1e-6)
    np.testing.assert_allclose(kl_estimate(lp, ref, "k2"), 0.5 * log_r**2, rtol=1e-6)
    np.testing.assert_allclose(
        kl_estimate(lp, ref, "k3"), np.exp(log_r) - 1 - log_r, rtol=1e-5, atol=1e-6
    )
    assert np.all(np.asarray(kl_estimate(lp, ref, "k3")) >= 0)
    for e in ("k1", "k2", "k3"):
        np.testing.assert_array_equal(kl_estimate(lp, lp, e), 0.0)
    assert np.isfinite(kl_estimate(jnp.float32(-200.0), jnp.float32(0.0), "k3"))
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, ref, "k4")


def test_chunked_logps_and_full_kl_match_dense():
    """Chunked projection (chunk not dividing S) equals dense log_softmax / KL in numpy."""
    from fst_jax.models import get_config, init_params

    cfg = get_config("tiny_qwen3")
    params = init_params(cfg, jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 10, cfg.hidden_size)).astype(np.float32)
    h2 = rng.normal(size=(3, 10, cfg.hidden_size)).astype(np.float32)
    toks = rng.integers(0, cfg.vocab_size, (3, 10))
    w = np.asarray(params["lm_head"]["kernel"])

    def logsm(x):
        z = x @ w
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    dense = logsm(h)
    for chunk in (3, 4, 128):
        lp, ent = logps_from_hidden(cfg, params, h, toks, chunk=chunk)
        ref_lp = np.take_along_axis(dense[:, :-1], toks[:, 1:, None], -1)[..., 0]
        np.testing.assert_allclose(lp[:, 1:], ref_lp, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(lp[:, 0], 0.0)
        ref_ent = -(np.exp(dense) * dense).sum(-1)[:, :-1]
        np.testing.assert_allclose(ent[:, 1:], ref_ent, rtol=1e-4, atol=1e-5)
        kl = full_kl_from_hidden(cfg, params, h, params, h2, chunk=chunk)
        d2 = logsm(h2)
        np.testing.assert_allclose(kl, (np.exp(dense) * (dense - d2)).sum(-1), rtol=1e-4, atol=1e-5)


def test_registry_and_config_errors():
    assert {"cispo", "grpo", "dr_grpo", "fst_distill"} <= set(list_losses())
    with pytest.raises(KeyError, match="registered"):
        LossConfig(name="ppo2")
    with pytest.raises(ValueError, match="clip_low"):
        LossConfig(tau=1.0, clip_low=2.0)
    with pytest.raises(ValueError, match="kl_estimator"):
        LossConfig(kl_estimator="k9")
