"""The jitted train step: micro-batch exactness, skipped updates, KL penalty, distill, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import random_rollouts

from fst_jax import sharding
from fst_jax.models import forward, get_config, init_params
from fst_jax.rl import (
    LossConfig,
    RLConfig,
    host_metrics,
    make_batch,
    make_logps_fn,
    make_train_step,
)

CFG = get_config("tiny_llama")


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def mesh1():
    return sharding.single_device_mesh()


def _batch(seed=0, batch=8, seq_len=16, group_size=2, **kw):
    r = random_rollouts(
        seed, batch=batch, seq_len=seq_len, vocab_size=CFG.vocab_size, group_size=group_size
    )
    b, stats = make_batch(
        r["tokens"],
        r["positions"],
        r["completion_mask"],
        r["logps"],
        r["rewards"],
        r["group_ids"],
        group_size=group_size,
        **kw,
    )
    return b, stats, r


def _run(params, mesh, rl_cfg, batches):
    step = make_train_step(CFG, mesh, rl_cfg)
    state = step.init(params)
    mets = []
    for b in batches:
        state, m = step(state, b)
        mets.append(host_metrics(m))
    return jax.device_get(state), mets


def test_microbatches_give_the_same_update(params, mesh1):
    """1, 2 and 4 micro-batches: same loss, grad norm and params after 2 AdamW steps."""
    batches = [_batch(0)[0], _batch(1)[0]]
    out = {}
    for m in (1, 2, 4):
        cfg = RLConfig(learning_rate=1e-3, warmup_steps=1, num_microbatches=m)
        out[m] = _run(params, mesh1, cfg, batches)
    ref_state, ref_m = out[1]
    assert ref_m[0]["skipped"] == 0 and ref_m[0]["update_norm"] > 0
    for m in (2, 4):
        state, mets = out[m]
        for a, b in zip(mets, ref_m):
            for k in (
                "loss",
                "grad_norm",
                "entropy",
                "clip_frac",
                "logp_mismatch_mean",
                "logp_mismatch_max",
                "tokens",
                "dropped_groups",
            ):
                np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-7, err_msg=k)
        # State tolerance: AdamW divides each coordinate by its own gradient scale, so a
        # float-rounding difference in a near-zero gradient can move that coordinate by a
        # fraction of the learning rate; params must agree to 5 % of lr (5e-5) everywhere.
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=5e-5),
            state.params,
            ref_state.params,
        )


def test_token_budget_picks_microbatches_and_matches_explicit_count(params, mesh1):
    """microbatch_tokens raises the count to fit the budget (to a divisor of the rows), and the
    update equals the one with that count configured explicitly."""
    step = make_train_step(CFG, mesh1, RLConfig(microbatch_tokens=32))
    assert step.microbatches_for(8, 16) == 4  # 128 tokens / 32
    assert step.microbatches_for(8, 12) == 4  # 96 / 32 = 3 does not divide 8 rows: next, 4
    assert step.microbatches_for(8, 1000) == 8  # one row per micro-batch at most
    assert make_train_step(CFG, mesh1, RLConfig()).microbatches_for(8, 1000) == 1  # off
    two = make_train_step(CFG, mesh1, RLConfig(num_microbatches=2, microbatch_tokens=10**6))
    assert two.microbatches_for(8, 16) == 2  # never below the configured count
    batches = [_batch(0)[0], _batch(1)[0]]
    lr = dict(learning_rate=1e-3, warmup_steps=1)
    auto_state, auto_m = _run(params, mesh1, RLConfig(microbatch_tokens=32, **lr), batches)
    ref_state, ref_m = _run(params, mesh1, RLConfig(num_microbatches=4, **lr), batches)
    for a, b in zip(auto_m, ref_m):
        assert a == b
    jax.tree.map(np.testing.assert_array_equal, auto_state.params, ref_state.params)


def test_nonfinite_reward_skips_update_and_counts(params, mesh1):
    good, _, r = _batch(2)
    rewards = r["rewards"].copy()
    rewards[2] = np.nan
    bad, stats = make_batch(
        r["tokens"],
        r["positions"],
        r["completion_mask"],
        r["logps"],
        rewards,
        r["group_ids"],
        group_size=2,
    )
    assert stats["nonfinite_groups"] == 1
    step = make_train_step(CFG, mesh1, RLConfig(learning_rate=1e-2, warmup_steps=1))
    state = step.init(params)
    before = jax.device_get(state.params)
    state, m = step(state, bad)
    m = host_metrics(m)
    assert m["skipped"] == 1 and m["skipped_total"] == 1 and m["update_norm"] == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)
    state, m = step(state, good)
    m = host_metrics(m)
    assert m["skipped"] == 0 and m["skipped_total"] == 1 and int(state.step) == 2
    # The learning rate follows applied updates only (warm-up not consumed by the skip).
    assert m["learning_rate"] == pytest.approx(1e-2)


def test_all_groups_flat_is_a_counted_skip(params, mesh1):
    _, _, r = _batch(3)
    b, stats = make_batch(
        r["tokens"],
        r["positions"],
        r["completion_mask"],
        r["logps"],
        np.ones(8),
        r["group_ids"],
        group_size=2,
    )
    assert stats["dropped_groups"] == 4
    step = make_train_step(CFG, mesh1, RLConfig())
    _state, m = step(step.init(params), b)
    m = host_metrics(m)
    assert m["skipped"] == 1 and m["dropped_groups"] == 4 and m["train_tokens"] == 0


def test_bad_batches_raise_named_errors(params):
    mesh = sharding.make_mesh((4, 1, 1), jax.devices()[:4])
    step = make_train_step(CFG, mesh, RLConfig(num_microbatches=4))
    b, _, _ = _batch(0, batch=8)
    with pytest.raises(ValueError, match="data×fsdp shards"):
        step.check_batch(b)
    b6, _, _ = _batch(0, batch=6)
    with pytest.raises(ValueError, match="does not divide"):
        step.check_batch(b6)
    with pytest.raises(ValueError, match="advantages has shape"):
        step.check_batch(b.replace(advantages=b.advantages[:4]))
    d = make_train_step(CFG, mesh, RLConfig(loss=LossConfig(name="fst_distill")))
    with pytest.raises(ValueError, match="teacher view"):
        d.check_batch(_batch(0, batch=8)[0])


def _dense_logps(params, b):
    """log π(tokens[t] | <t) from the full (un-chunked) logits, in float64 numpy."""
    logits = np.asarray(forward(CFG, params, b.tokens, b.positions)[0], np.float64)
    z = logits - logits.max(-1, keepdims=True)
    lsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp = np.take_along_axis(lsm[:, :-1], np.asarray(b.tokens)[:, 1:, None], -1)[..., 0]
    return np.pad(lp, ((0, 0), (1, 0))) * (b.completion_mask > 0)


def test_kl_penalty_loss_matches_reference(params, mesh1):
    """loss = Σ_b w_b Σ_t [−min(ρ, 4)·A·log π_θ + β·k3(log π_θ, log π_base)], base ≠ θ."""
    b, _, _r = _batch(4)
    base = init_params(CFG, jax.random.PRNGKey(7))
    ref = np.asarray(
        make_logps_fn(CFG, mesh1, chunk=5)(base, b.tokens, b.positions, b.completion_mask)
    )
    np.testing.assert_allclose(ref, _dense_logps(base, b), rtol=1e-4, atol=1e-5)
    b = b.replace(ref_logps=ref)
    cur = _dense_logps(params, b)
    beta = 0.1
    m = _run(params, mesh1, RLConfig(loss=LossConfig(kl_coef=beta)), [b])[1][0]
    mask = b.completion_mask > 0
    log_r = ref - cur
    k3 = np.where(mask, np.exp(log_r) - 1 - log_r, 0.0)
    rho = np.exp(cur - b.old_logps)
    pg = np.where(mask, -np.minimum(rho, 4.0) * b.advantages[:, None] * cur, 0.0)
    assert (b.row_weight[:, None] * beta * k3).sum() > 1e-3  # the penalty is not negligible
    expected = (b.row_weight[:, None] * (pg + beta * k3)).sum()
    np.testing.assert_allclose(m["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(m["kl"], k3.sum() / mask.sum(), rtol=1e-4)


def test_fst_distill_matches_dense_reference(params, mesh1):
    """Reverse KL(student ‖ sg teacher) per completion token, vs dense logits in numpy."""
    rng = np.random.default_rng(0)
    B, P, C, K, S = 4, 3, 5, 4, 12  # prompt, completion, context lengths
    ctx = rng.integers(1, CFG.vocab_size, (B, K))
    prompt = rng.integers(1, CFG.vocab_size, (B, P))
    comp = rng.integers(1, CFG.vocab_size, (B, C))
    st = np.zeros((B, S), np.int32)
    st[:, : P + C] = np.concatenate([prompt, comp], 1)
    sp = np.where(np.arange(S) < P + C, np.arange(S), -1).astype(np.int32)[None].repeat(B, 0)
    sm = np.zeros((B, S), np.float32)
    sm[:, P : P + C] = 1
    tt = np.zeros((B, S), np.int32)
    tt[:, : K + P + C] = np.concatenate([ctx, prompt, comp], 1)
    tp = np.where(np.arange(S) < K + P + C, np.arange(S), -1).astype(np.int32)[None].repeat(B, 0)
    tm = np.zeros((B, S), np.float32)
    tm[:, K + P : K + P + C] = 1
    b, _ = make_batch(
        st,
        sp,
        sm,
        np.zeros((B, S)),
        None,
        np.arange(B) // 2,
        advantage=None,
        teacher=(tt, tp, tm),
        aggregation="token_mean",
    )
    m = _run(params, mesh1, RLConfig(loss=LossConfig(name="fst_distill")), [b])[1][0]
    ls = np.asarray(jax.nn.log_softmax(forward(CFG, params, st, sp)[0], -1), np.float64)
    lt = np.asarray(jax.nn.log_softmax(forward(CFG, params, tt, tp)[0], -1), np.float64)
    # Token t of the completion is predicted from index t−1 in each view.
    s_idx = np.arange(P - 1, P + C - 1)
    t_idx = s_idx + K
    kl = (np.exp(ls[:, s_idx]) * (ls[:, s_idx] - lt[:, t_idx])).sum(-1)
    np.testing.assert_allclose(m["distill_kl"], kl.mean(), rtol=1e-4)
    np.testing.assert_allclose(m["loss"], kl.mean(), rtol=1e-4)
    assert m["update_norm"] > 0
    # Same view for teacher and student: zero KL, zero gradient.
    b0, _ = make_batch(
        st, sp, sm, np.zeros((B, S)), None, np.arange(B) // 2, advantage=None, teacher=(st, sp, sm)
    )
    m0 = _run(params, mesh1, RLConfig(loss=LossConfig(name="fst_distill")), [b0])[1][0]
    assert abs(m0["loss"]) < 1e-6 and m0["grad_norm"] < 1e-5


def test_learning_raises_reward_for_chosen_token(mesh1):
    """Reward = fraction of completion tokens equal to TARGET; CISPO on own samples learns it."""
    cfg = get_config("tiny_llama", vocab_size=16)
    params = init_params(cfg, jax.random.PRNGKey(1))
    target, n_prob, g, p_len, n_new = 7, 8, 8, 3, 6
    s = p_len + n_new

    @functools.partial(jax.jit, static_argnums=())
    def sample(params, prompts, key):
        toks = jnp.concatenate([prompts, jnp.zeros((prompts.shape[0], n_new), jnp.int32)], 1)

        def body(i, carry):
            toks, lps, key = carry
            key, sub = jax.random.split(key)
            logits = forward(cfg, params, toks)[0]
            lg = jax.lax.dynamic_index_in_dim(logits, p_len - 1 + i, 1, keepdims=False)
            y = jax.random.categorical(sub, lg).astype(jnp.int32)
            lp = jnp.take_along_axis(jax.nn.log_softmax(lg), y[:, None], 1)[:, 0]
            toks = jax.lax.dynamic_update_index_in_dim(toks, y, p_len + i, 1)
            lps = jax.lax.dynamic_update_index_in_dim(lps, lp, p_len + i, 1)
            return toks, lps, key

        init = (toks, jnp.zeros(toks.shape, jnp.float32), key)
        return jax.lax.fori_loop(0, n_new, body, init)[:2]

    step = make_train_step(cfg, mesh1, RLConfig(learning_rate=3e-3, warmup_steps=1))
    state = step.init(params)
    rng = np.random.default_rng(0)
    positions = np.broadcast_to(np.arange(s, dtype=np.int32), (n_prob * g, s))
    mask = np.zeros((n_prob * g, s), np.float32)
    mask[:, p_len:] = 1
    rewards_hist = []
    for i in range(8):
        prompts = np.repeat(rng.integers(1, cfg.vocab_size, (n_prob, p_len)), g, 0)
        toks, lps = sample(state.params, jnp.asarray(prompts, jnp.int32), jax.random.PRNGKey(i))
        toks = np.asarray(toks)
        rewards = (toks[:, p_len:] == target).mean(1)
        rewards_hist.append(rewards.mean())
        batch, _ = make_batch(
            toks,
            positions,
            mask,
            np.asarray(lps),
            rewards,
            np.repeat(np.arange(n_prob), g),
            group_size=g,
        )
        state, m = step(state, batch)
        m = host_metrics(m)
        assert m["skipped"] == 0, (i, rewards_hist, m)  # (a saturated, all-flat batch would skip)
        # On-policy: sampler and trainer log-probs agree up to float noise (ρ ≈ 1).
        assert m["logp_mismatch_max"] < 1e-3 and m["clip_frac"] == 0
    first, last = np.mean(rewards_hist[:2]), np.mean(rewards_hist[-2:])
    assert first < 0.15, rewards_hist  # ≈ 1/16 at random init
    assert last > first + 0.3, rewards_hist
