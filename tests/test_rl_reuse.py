"""Rollout reuse (`fst_jax.rl.reuse`, `fst_jax.rl.collect`, the evaluator's store, the config
check, the train step's importance-weight monitors) on a tiny random model.

Oracles: the model forward under θ_c (`rl.make_logps_fn`) for stored log-probs; the sampler's own
rows (a row's sample depends only on its key, row id and prompt) and `rl.make_batch` on the
fully sampled batch for the merged batch; ρ = exp(old shift) for the importance weights.
"""

from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest

from fst_jax import config_checks, gepa, rl, sampling
from fst_jax import sharding as shd
from fst_jax.errors import ConfigError
from fst_jax.gepa_eval import SamplerEvaluator
from fst_jax.models import get_config, init_params
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.rl.collect import ARRAY_FIELDS, pad_columns
from fst_jax.rows import RowShardedSampler
from fst_jax.sampling.prompt_bank import spread_contexts
from fst_jax.tasks.base import Example

CONTEXTS = ["Be brief.", "Think first.", "Answer in one word."]
SP = sampling.SamplingParams(max_new_tokens=8)


class LengthTask:
    """Reward = completion length mod 3 / 2: deterministic, varied, independent of the model."""

    def verify_batch(self, rows, texts):
        return [types.SimpleNamespace(reward=float(len(t) % 3) / 2, feedback="") for t in texts]


@pytest.fixture(scope="module")
def tiny():
    cfg = dataclasses.replace(get_config("tiny_llama"), dtype="float32")
    tok = tiny_tokenizer()
    params = init_params(cfg, jax.random.key(0))
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    sampler = RowShardedSampler(sampling.Sampler(cfg, tok), shd.batch_sharding(mesh), trim_to=16)
    bank = sampling.build_bank(tok, [], max_prompts=4, max_len=96)
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return types.SimpleNamespace(cfg=cfg, tok=tok, params=params, mesh=mesh, sampler=sampler,
                                 bank=bank, pad=pad)  # fmt: skip


def problems(n=3):
    return [Example(f"p{i}", f"Question {i}: " + "why? " * (i % 3), None) for i in range(n)]


def population(texts):
    pop = gepa.PopulationState.new(texts[:1], seed=0)
    for t in texts[1:]:
        pop.candidates.append(dataclasses.replace(pop.candidates[0], text=t))
    return pop


def evaluator(t, store, exs, pop):
    return SamplerEvaluator(
        population=pop, bank=t.bank, sampler=t.sampler, task=LengthTask(), params=t.params,
        examples={ex.id: ex for ex in exs}, sampling=SP, store=store,
        key_for=lambda call, lo: jax.random.fold_in(jax.random.key(7), call * 100 + lo),
    )  # fmt: skip


# ----------------------------------------------------------------------------- the store


def _row(reward=0.0, n=3):
    return rl.StoredRollout(np.arange(5, dtype=np.int32), np.zeros(n, np.float32), 5 - n,
                            reward, True)  # fmt: skip


def test_store_take_consumes_in_order_prunes_bounds_and_checks_sampling():
    store = rl.RolloutStore(SP, max_rows=3)
    assert store.add("a", "p0", _row(0.0)) and store.add("a", "p0", _row(1.0))
    assert store.add("b", "p0", _row(0.5))
    assert not store.add("a", "p1", _row()) and store.dropped == 1 and len(store) == 3
    assert store.take("a", "p0", SP).reward == 0.0  # oldest first
    assert store.take("a", "p0", SP).reward == 1.0 and store.take("a", "p0", SP) is None
    store.keep_contexts(["a"])  # "b" was not exported
    assert len(store) == 0 and store.count("b", "p0") == 0
    with pytest.raises(ValueError, match="same settings"):
        store.take("a", "p0", dataclasses.replace(SP, temperature=0.7))
    with pytest.raises(ValueError, match="max_rows"):
        rl.RolloutStore(SP, 0)


def test_evaluator_keeps_only_whole_anchor_set_rollouts_and_scores_unchanged(tiny):
    """Rule: a candidate's rollouts are kept when the call scores it on every anchor; minibatch
    calls are not kept. Scores equal the store-less evaluator's (same samples)."""
    exs, pop = problems(3), population(CONTEXTS[:2])
    store = rl.RolloutStore(SP, 100)
    ev, plain = evaluator(tiny, store, exs, pop), evaluator(tiny, None, exs, pop)
    cids, eids = [0, 0, 0, 1, 1], ["p0", "p1", "p2", "p0", "p2"]  # cand 1: a minibatch
    assert ev(cids, eids) == plain(cids, eids)
    assert len(store) == 3 and all(store.count(CONTEXTS[0], e) == 1 for e in ("p0", "p1", "p2"))
    assert store.count(CONTEXTS[1], "p0") == 0
    ev([1], ["p1"])  # a minibatch call alone keeps nothing
    assert len(store) == 3


def test_stored_rows_rebuild_the_sampled_layout_and_equal_a_forward_under_theta_c(tiny):
    exs, pop = problems(3), population(CONTEXTS[:1])
    store = rl.RolloutStore(SP, 100)
    ev = evaluator(tiny, store, exs, pop)
    scores, _, _ = ev([0, 0, 0], ["p0", "p1", "p2"])
    # The very call the evaluator made (first call, first chunk): same key, bank, rows.
    out = tiny.sampler.sample(tiny.params, tiny.bank.with_contexts(CONTEXTS[:1]),
                              np.zeros(3, np.int32), [e.question for e in exs],
                              ev.key_for(0, 0), SP)  # fmt: skip
    rows = [store.take(CONTEXTS[0], e.id, SP) for e in exs]
    assert [r.reward for r in rows] == scores
    width = out.tokens.shape[1]
    laid = rl.reuse.layout_rows(rows, width, tiny.pad)
    for k, ref in (("tokens", out.tokens), ("positions", out.positions),
                   ("completion_mask", out.completion_mask), ("logps", out.raw_logps)):  # fmt: skip
        np.testing.assert_array_equal(laid[k], np.asarray(ref), err_msg=k)
    # Independent oracle: the trainer's forward under the same θ_c and temperature.
    logps_fn = rl.make_logps_fn(tiny.cfg, tiny.mesh, temperature=SP.temperature)
    ref = np.asarray(logps_fn(tiny.params, laid["tokens"], laid["positions"],
                              laid["completion_mask"]))  # fmt: skip
    np.testing.assert_allclose(laid["logps"], ref, atol=2e-5)
    assert laid["completion_mask"].sum() > 0
    with pytest.raises(ValueError, match="batch width"):
        rl.reuse.layout_rows(rows, 2, tiny.pad)


# ----------------------------------------------------------------------------- the RL batch


def _filled_store(tiny, exs, contexts, per_pair):
    """A store holding `per_pair[(context slot, problem)]` GEPA-like rollouts of each pair."""
    store = rl.RolloutStore(SP, 1000)
    pairs = [(j, ex) for j in range(len(contexts)) for ex in exs for _ in range(per_pair(j, ex))]
    out = tiny.sampler.sample(tiny.params, tiny.bank.with_contexts(contexts),
                              np.asarray([j for j, _ in pairs], np.int32),
                              [ex.question for _, ex in pairs], jax.random.key(11), SP)  # fmt: skip
    rewards = [v.reward for v in LengthTask().verify_batch(None, out.texts)]
    added: dict[tuple[str, str], list] = {}
    for (j, ex), row in zip(pairs, rl.reuse.compact_rows(out, rewards)):
        store.add(contexts[j], ex.id, row)
        added.setdefault((contexts[j], ex.id), []).append(row)
    return store, added


def test_merged_batch_is_the_fresh_batch_of_the_same_rollouts(tiny):
    """Groups, advantages and weights of the merged batch equal `make_batch` on the batch the
    fresh path builds from the same rollouts (reused rows where taken, the full sample's rows
    elsewhere); per-context counts follow `spread_contexts`; each stored row is used once."""
    exs, contexts, g = problems(3), CONTEXTS[:2], 4
    spread = spread_contexts(g, len(contexts))
    # p0: 1 row per context, p1: 3 rows of context 0 only (> its 2 slots), p2: none.
    per_pair = lambda j, ex: {"p0": 1, "p1": 3 if j == 0 else 0}.get(ex.id, 0)  # noqa: E731
    store, order = _filled_store(tiny, exs, contexts, per_pair)
    bank, key = tiny.bank.with_contexts(contexts), jax.random.key(3)
    kw = dict(sampler=tiny.sampler, task=LengthTask(), bank=bank, contexts=contexts,
              problems=exs, spread=spread, params=tiny.params, key=key, sampling=SP,
              pad_id=tiny.pad, width_multiple=16)  # fmt: skip
    merged = rl.collect_rollouts(store=store, **kw)
    full = rl.collect_rollouts(**kw)  # everything sampled: the path without reuse
    n = len(exs) * g
    np.testing.assert_array_equal(merged.ctx_slot, np.tile(spread, 3))
    np.testing.assert_array_equal(merged.group_ids, np.repeat(np.arange(3), g))
    for j in range(len(contexts)):
        assert [(merged.ctx_slot[p * g : (p + 1) * g] == j).sum() for p in range(3)] == [
            (spread == j).sum()
        ] * 3
    # Reused: p0's 2 rows (one per context), p1's 2 context-0 slots; its third row stays.
    assert merged.reused.tolist() == [True, False, True, False, True, True] + [False] * 6
    assert len(store) == 1 and store.count(contexts[0], "p1") == 1
    # Oracle batch: stored rows where reused, the full sample's rows elsewhere.
    width = max(merged.arrays["tokens"].shape[1], full.arrays["tokens"].shape[1])
    reused_rows = [order[(contexts[merged.ctx_slot[i]], merged.rows[i].id)].pop(0)
                   for i in range(n) if merged.reused[i]]  # fmt: skip
    oracle = pad_columns(full.arrays, width, tiny.pad)
    laid = rl.reuse.layout_rows(reused_rows, width, tiny.pad)
    rewards = np.array(full.rewards)
    rewards[merged.reused] = [r.reward for r in reused_rows]
    for k in oracle:
        oracle[k] = np.array(oracle[k])
        oracle[k][merged.reused] = laid[k]
    got = pad_columns(merged.arrays, width, tiny.pad)
    for k in ("tokens", "positions", "completion_mask"):  # the same samples, bit for bit
        np.testing.assert_array_equal(got[k], oracle[k], err_msg=k)
    # Fresh rows' log-probs: the same tokens scored in an 8-row instead of a 12-row sampler
    # batch (another batch bucket): equal up to float rounding; reused rows' exactly.
    np.testing.assert_allclose(got["logps"], oracle["logps"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["logps"][merged.reused], oracle["logps"][merged.reused])
    np.testing.assert_array_equal(merged.rewards, rewards)
    # Reused and fresh rows of one (problem, context) share the prompt: the GEPA bank's chunk and
    # the RL bank render a context identically.
    p0c0 = [i for i in range(g) if merged.ctx_slot[i] == 0]
    pl = int(np.asarray(full.sampled.prompt_lengths)[0])
    np.testing.assert_array_equal(got["tokens"][p0c0[0], :pl], got["tokens"][p0c0[1], :pl])
    kw_b = dict(advantage="grpo", group_size=g)
    a, sa = rl.make_batch(*(got[k] for k in ARRAY_FIELDS), merged.rewards,
                          merged.group_ids, **kw_b)  # fmt: skip
    b, sb = rl.make_batch(*(oracle[k] for k in ARRAY_FIELDS), rewards,
                          merged.group_ids, **kw_b)  # fmt: skip
    assert sa == sb
    for f in ("advantages", "row_weight", "row_valid", "group_ids", "tokens", "completion_mask"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    m = rl.rollout_metrics(merged, len(contexts), reuse=True)
    assert m["train/reused_frac"] == 4 / 12 and m["rollout/reused_rows"] == 4
    assert m["rollout/reused_tokens"] == int(merged.completion_lengths[merged.reused].sum())
    assert m["rollout/rollouts_context_0"] == m["rollout/rollouts_context_1"] == 6


def test_without_a_store_the_batch_is_the_samplers(tiny):
    contexts, exs = CONTEXTS[:1], problems(2)
    kw = dict(sampler=tiny.sampler, task=LengthTask(), bank=tiny.bank.with_contexts(contexts),
              contexts=contexts, problems=exs, spread=spread_contexts(2, 1), params=tiny.params,
              key=jax.random.key(1), sampling=SP, pad_id=tiny.pad)  # fmt: skip
    r = rl.collect_rollouts(**kw)
    out = tiny.sampler.sample(tiny.params, kw["bank"], np.zeros(4, np.int32),
                              [e.question for e in exs for _ in range(2)], kw["key"], SP,
                              row_ids=np.arange(4, dtype=np.int32))  # fmt: skip
    assert r.arrays["logps"] is not None and not r.reused.any() and "reused" not in r.train_inputs()
    np.testing.assert_array_equal(r.arrays["tokens"], out.tokens)
    np.testing.assert_array_equal(r.arrays["logps"], out.raw_logps)
    # A store with nothing for these problems: the same batch, no reuse flags.
    again = rl.collect_rollouts(store=rl.RolloutStore(SP, 5), **kw)
    np.testing.assert_array_equal(again.arrays["tokens"], out.tokens)
    assert "train/reused_frac" not in rl.rollout_metrics(r, 1, reuse=False)


# ----------------------------------------------------------------------------- train-step weights


@pytest.mark.slow  # compiles the train step twice (~30 s on 2 busy cores)
def test_train_step_reports_importance_weights_of_reused_and_fresh_rows(tiny):
    """old_logps = π_θ's own on fresh rows (ρ = 1) and π_θ + 0.25 on reused rows (ρ = e^-0.25),
    summed over two micro-batches; without `reused` the step reports neither."""
    exs, contexts = problems(2), CONTEXTS[:1]
    r = rl.collect_rollouts(sampler=tiny.sampler, task=LengthTask(),
                            bank=tiny.bank.with_contexts(contexts), contexts=contexts,
                            problems=exs, spread=spread_contexts(4, 1), params=tiny.params,
                            key=jax.random.key(2), sampling=SP, pad_id=tiny.pad)  # fmt: skip
    a = dict(r.arrays)
    logps = rl.make_logps_fn(tiny.cfg, tiny.mesh)(tiny.params, a["tokens"], a["positions"],
                                                  a["completion_mask"])  # fmt: skip
    reused = np.array([1, 0, 0, 1, 0, 1, 0, 0], bool)
    a["logps"] = np.asarray(logps) + 0.25 * reused[:, None] * a["completion_mask"]
    rewards = np.array([1, 0, 0.5, 0, 1, 1, 0, 0.5], np.float32)
    cfg = rl.RLConfig(learning_rate=1e-3, num_microbatches=2)
    step = rl.make_train_step(tiny.cfg, tiny.mesh, cfg)
    state = step.init(tiny.params)
    state, per, _ = rl.update_on_rollouts(step, state, {**a, "reused": reused}, rewards,
                                          r.group_ids, group_size=4)  # fmt: skip
    tm = rl.update_metrics(per)
    np.testing.assert_allclose(tm["is_weight_reused"], np.exp(-0.25), rtol=1e-5)
    np.testing.assert_allclose(tm["is_weight_fresh"], 1.0, rtol=1e-5)
    assert per[0]["tokens_reused"] == a["completion_mask"][reused].sum()
    state = step.init(tiny.params)
    _, per, _ = rl.update_on_rollouts(step, state, a, rewards, r.group_ids, group_size=4)
    assert not any(k.startswith(("is_weight", "tokens_reused")) for k in per[0])


def test_update_metrics_weights_by_tokens_and_drops_empty_kinds():
    base = {"loss": 1.0, "tokens": 10.0, "skipped_total": 0.0, "learning_rate": 1e-3}
    per = [dict(base, is_weight_reused=2.0, is_weight_fresh=1.0, tokens_reused=2.0),
           dict(base, is_weight_reused=0.0, is_weight_fresh=3.0, tokens_reused=0.0)]  # fmt: skip
    tm = rl.update_metrics(per)
    assert tm["is_weight_reused"] == 2.0  # the second update had no reused tokens
    assert tm["is_weight_fresh"] == (8 * 1.0 + 10 * 3.0) / 18
    assert "tokens_reused" not in tm and tm["updates"] == 2
    per = [dict(base, is_weight_reused=0.0, is_weight_fresh=1.0, tokens_reused=0.0)]
    assert "is_weight_reused" not in rl.update_metrics(per)


# ----------------------------------------------------------------------------- config


def _config(**over):
    from test_controller_e2e import tiny_config

    c = tiny_config("fst")
    c.rl.reuse_gepa_rollouts = "cycle"
    for k, v in over.items():
        node, *path = k.split("__")
        target = c[node]
        for p in path[:-1]:
            target = target[p]
        if path:
            target[path[-1]] = v
        else:
            c[node] = v
    return c


def test_config_check_refuses_what_reuse_cannot_do(monkeypatch):
    config_checks.validate_config(_config())
    with pytest.raises(
        ConfigError, match=r"rl.reuse_gepa_rollouts='cycles'\): did you mean 'cycle'"
    ):
        config_checks.validate_config(_config(rl__reuse_gepa_rollouts="cycles"))
    for mode in ("rl", "gepa", "fst_distill"):
        with pytest.raises(ConfigError, match="needs mode fst") as e:
            config_checks.validate_config(_config(mode=mode))
        assert "--config.rl.reuse_gepa_rollouts=off" in str(e.value)
    with pytest.raises(ConfigError, match="anchors=lookahead"):
        config_checks.validate_config(_config(gepa__anchors="disjoint"))
    real = config_checks.sampling_settings
    monkeypatch.setattr(config_checks, "sampling_settings", lambda c, p: dict(
        real(c, p), temperature=0.5 if p == "gepa" else 1.0))  # fmt: skip
    with pytest.raises(ConfigError, match=r"sampling temperature \(0.5\) to equal RL's \(1.0\)"):
        config_checks.validate_config(_config())
    config_checks.validate_config(_config(rl__reuse_gepa_rollouts="off"))  # off: not compared
