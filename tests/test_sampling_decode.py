"""Jitted sampler on tiny random models, checked against full (uncached) forward passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import BANK_CONTEXTS

from fst_jax.models import default_positions, forward, stack_layers
from fst_jax.sampling import (
    Sampler,
    SamplingParams,
    build_bank,
    generate_chat,
    num_compilations,
    select_tokens,
)

SLOW = pytest.mark.slow  # the heavier cases (more compiles); `pytest -m "not slow"` skips them
TASKS = ["What is 2+2?", "Name a color.", "Say hi", "Count to three.", "Why?", "Spell cat."]


def _full_logits(cfg, params, r):
    logits, _ = forward(cfg, params, r.tokens, r.positions)
    return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def _ref_logp(raw_logits_row, token, sp):
    """Reference: log-prob of `token` under temperature → top-k → top-p, written in numpy."""
    z = raw_logits_row.astype(np.float64) / sp.temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros_like(z, bool)
    keep[order[: sp.top_k or len(z)]] = True
    if sp.top_p < 1.0:
        zk = np.where(keep, z, -np.inf)
        p = np.exp(zk - zk.max())
        p /= p.sum()
        ps = p[order]
        before = np.cumsum(ps) - ps
        nucleus = np.zeros_like(keep)
        nucleus[order[(before < sp.top_p) | (np.arange(len(z)) == 0)]] = True
        keep &= nucleus
    zk = np.where(keep, z, -np.inf)
    lse = zk.max() + np.log(np.exp(zk - zk.max()).sum())
    return zk[token] - lse, keep[token]


def test_greedy_cached_decode_equals_full_forward_argmax(tok, model, bank):
    cfg, params = model
    sp = SamplingParams(greedy=True, max_new_tokens=12)
    idx = [0, 1, 2, bank.no_context]
    r = Sampler(cfg, tok).sample(params, bank, idx, TASKS[:4], jax.random.PRNGKey(3), sp)
    logp_full = _full_logits(cfg, params, r)
    toks, mask = np.asarray(r.tokens), np.asarray(r.completion_mask)
    logps, raw = np.asarray(r.logps), np.asarray(r.raw_logps)
    for b in range(len(idx)):
        p, c = int(r.prompt_lengths[b]), int(r.completion_lengths[b])
        assert c == 12 or toks[b, p + c - 1] == tok.eos_token_id
        for t in range(p, p + c):
            assert mask[b, t] == 1.0
            assert toks[b, t] == np.argmax(logp_full[b, t - 1]), (b, t)
            # Greedy: logps fall back to the raw model log-probs (documented).
            np.testing.assert_allclose(logps[b, t], logp_full[b, t - 1, toks[b, t]], atol=2e-5)
            assert raw[b, t] == logps[b, t]
        assert mask[b].sum() == c and (logps[b, mask[b] == 0] == 0).all()
        assert np.asarray(r.positions)[b].tolist() == [
            *range(p + c),
            *[-1] * (toks.shape[1] - p - c),
        ]
        assert r.completion_tokens[b, :c].tolist() == toks[b, p : p + c].tolist()


@pytest.mark.parametrize(
    "sp",
    [  # the fast tier keeps the case with both truncations; each alone in the slow tier
        pytest.param(SamplingParams(temperature=0.7, top_k=20, max_new_tokens=10), marks=SLOW),
        pytest.param(SamplingParams(temperature=1.3, top_p=0.8, max_new_tokens=10), marks=SLOW),
        SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=10),
    ],
    ids=["topk", "topp", "topk+topp"],
)
def test_returned_logps_equal_separate_forward(tok, model, bank, sp):
    """Tolerance: 5e-5 absolute on f32 log-probs (cached vs uncached attention sum order)."""
    cfg, params = model
    r = Sampler(cfg, tok).sample(
        params, bank, [0, 1, 2, bank.no_context], TASKS[:4], jax.random.PRNGKey(7), sp
    )
    raw_full = _full_logits(cfg, params, r)
    toks, mask = np.asarray(r.tokens), np.asarray(r.completion_mask)
    logps, raw = np.asarray(r.logps), np.asarray(r.raw_logps)
    checked = 0
    for b, t in zip(*np.nonzero(mask)):
        ref, kept = _ref_logp(raw_full[b, t - 1], toks[b, t], sp)
        assert kept, "sampled a token outside the top-k/top-p set"
        np.testing.assert_allclose(logps[b, t], ref, atol=5e-5)
        # raw = tempered, untruncated (the trainer's π_old; see select.py)
        tempered = raw_full[b, t - 1] / sp.temperature
        tempered = tempered - tempered.max() - np.log(np.exp(tempered - tempered.max()).sum())
        np.testing.assert_allclose(raw[b, t], tempered[toks[b, t]], atol=5e-5)
        checked += 1
    assert checked >= 4 * 2


def test_mixed_context_batch_equals_each_row_alone(tok, model, bank):
    cfg, params = model
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10)
    key = jax.random.PRNGKey(11)
    idx = [0, 0, 1, 1, 2, bank.no_context]
    batch = Sampler(cfg, tok, batch_buckets=(8,)).sample(params, bank, idx, TASKS, key, sp)
    # Alone: different batch bucket and a task bucket fitted to one task (padding differs too).
    alone_sampler = Sampler(cfg, tok, batch_buckets=(1,), task_buckets=(16, 64))
    for b in range(len(idx)):
        one = alone_sampler.sample(params, bank, [idx[b]], [TASKS[b]], key, sp, row_ids=[b])
        c = int(batch.completion_lengths[b])
        assert int(one.completion_lengths[0]) == c
        assert one.completion_tokens[0].tolist() == batch.completion_tokens[b].tolist()
        assert one.texts[0] == batch.texts[b]
        p1, pb = int(one.prompt_lengths[0]), int(batch.prompt_lengths[b])
        assert p1 == pb
        np.testing.assert_allclose(
            np.asarray(one.logps)[0, p1 : p1 + c],
            np.asarray(batch.logps)[b, pb : pb + c],
            atol=2e-5,
        )
    # Rows with the same prompt but different row ids draw different samples.
    assert batch.completion_tokens[0].tolist() != batch.completion_tokens[1].tolist()


def test_no_recompilation_across_bank_contents_indices_and_tasks(tok, model, bank):
    """One bucket per dimension (rows, distinct contexts and pairs, context and task length):
    new bank contents, indices and tasks never compile."""
    cfg, params = model
    sampler = Sampler(cfg, tok, batch_buckets=(8,), task_buckets=(32,), prefix_buckets=(64,))
    sp = SamplingParams(temperature=0.9, top_k=40, max_new_tokens=6)
    n = 6  # fixed batch (an RL step's shape); bucket 8 pads it
    sampler.sample(params, bank, [0, 1, 2, 0, 1, 2], TASKS, jax.random.PRNGKey(0), sp)
    before = num_compilations()
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if "backend_compile" in name else None
    )
    rng = np.random.default_rng(0)
    outs = []
    for call in range(5):
        contexts = [f"Ctx {call}: " + "be kind " * int(rng.integers(0, 2)), "Other."]
        new_bank = bank.with_contexts(contexts)
        idx = rng.choice([0, 1, new_bank.no_context], size=n).tolist()
        tasks = [TASKS[int(i)] + f" #{call}" for i in rng.integers(0, len(TASKS), size=n)]
        r = sampler.sample(params, new_bank, idx, tasks, jax.random.PRNGKey(call), sp)
        outs.append(r.completion_tokens)
    assert num_compilations() == before
    assert compiles == []  # not even an eager op compiled
    assert len({o.tobytes() for o in outs}) == 5  # the calls really used new data


def test_stop_token_ends_row_and_layout(tok, model, bank):
    cfg, params = model
    sampler = Sampler(cfg, tok)
    sp = SamplingParams(greedy=True, max_new_tokens=10)
    first = sampler.sample(params, bank, [1], [TASKS[0]], jax.random.PRNGKey(0), sp)
    stop = int(first.completion_tokens[0, 3])
    cut = first.completion_tokens[0].tolist().index(stop) + 1
    r = sampler.sample(
        params, bank, [1], [TASKS[0]], jax.random.PRNGKey(0), sp.replace(stop_token_ids=(stop,))
    )
    assert int(r.completion_lengths[0]) == cut and bool(r.finished[0])
    assert r.completion_tokens[0, :cut].tolist() == first.completion_tokens[0, :cut].tolist()
    assert (r.completion_tokens[0, cut:] == tok.pad_token_id).all()
    p = int(r.prompt_lengths[0])
    assert np.asarray(r.completion_mask)[0].sum() == cut
    assert int(np.asarray(r.tokens)[0, p + cut - 1]) == stop  # the stop token is in the completion
    assert (np.asarray(r.positions)[0, p + cut :] == -1).all()
    assert not bool(first.finished[0]) or int(first.completion_lengths[0]) < 10


def test_scan_layers_match_unrolled(tok, model, bank):
    cfg, params = model
    sp = SamplingParams(greedy=True, max_new_tokens=8)
    args = ([0, bank.no_context], TASKS[:2], jax.random.PRNGKey(0), sp)
    ref = Sampler(cfg, tok).sample(params, bank, *args)
    scfg = cfg.replace(scan_layers=True)
    scan = Sampler(scfg, tok).sample(stack_layers(cfg, params), bank, *args)
    assert scan.completion_tokens.tolist() == ref.completion_tokens.tolist()
    np.testing.assert_allclose(np.asarray(scan.logps), np.asarray(ref.logps), atol=2e-5)


@SLOW  # a third sampler compile; the bf16 model forward is also checked in test_models_hf
def test_bf16_sampler_matches_a_bf16_full_forward(tok, model, bank):
    cfg, params = model
    sp = SamplingParams(greedy=True, max_new_tokens=8)
    args = ([0, bank.no_context], TASKS[:2], jax.random.PRNGKey(0), sp)
    ref = Sampler(cfg, tok).sample(params, bank, *args)
    bcfg = cfg.replace(dtype="bfloat16")
    bf = Sampler(bcfg, tok).sample(params, bank, *args)
    assert bf.tokens.shape == ref.tokens.shape
    # bf16 matmuls (f32 accumulation): log-probs agree with a bf16 full forward to bf16 precision.
    full = _full_logits(bcfg, params, bf)
    mask, toks = np.asarray(bf.completion_mask), np.asarray(bf.tokens)
    for b, t in zip(*np.nonzero(mask)):
        np.testing.assert_allclose(bf.logps[b, t], full[b, t - 1, toks[b, t]], atol=3e-2)


def test_select_tokens_matches_reference_distribution():
    logits = jnp.asarray([[2.0, 1.5, 1.0, 0.0, -1.0, 0.5]])
    sp = SamplingParams(temperature=0.8, top_k=4, top_p=0.9)
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    toks, logp, _ = jax.jit(lambda k: select_tokens(jnp.repeat(logits, n, 0), k, sp))(keys)
    toks, logp = np.asarray(toks), np.asarray(logp)
    ref = np.array([np.exp(_ref_logp(np.asarray(logits[0]), v, sp)[0]) for v in range(6)])
    freq = np.bincount(toks, minlength=6) / n
    np.testing.assert_allclose(freq, ref, atol=0.012)  # ~4 standard errors at n = 20000
    np.testing.assert_allclose(np.exp(logp), ref[toks], rtol=1e-5)
    assert ref[4] == 0 and freq[4] == 0  # truncated by top-k


def test_generate_chat_equals_uncached_greedy(tok, model):
    cfg, params = model
    convs = [
        [{"role": "user", "content": "Hello there"}],
        [
            {"role": "system", "content": "You reflect on failures."},
            {"role": "user", "content": "Task failed: x=3."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Propose a better prompt."},
        ],
    ]
    sp = SamplingParams(greedy=True, max_new_tokens=6)
    replies = generate_chat(cfg, params, tok, convs, sp, jax.random.PRNGKey(0))
    width = 256  # fixed width so the uncached oracle compiles once

    @jax.jit
    def next_token(ids, n):
        logits, _ = forward(cfg, params, ids, default_positions(ids, n))
        return jnp.argmax(logits[0, n[0] - 1])

    for conv, reply in zip(convs, replies):
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        out = []
        for _ in range(6):
            row = np.zeros((1, width), np.int32)
            row[0, : len(ids) + len(out)] = ids + out
            out.append(int(next_token(row, np.asarray([len(ids) + len(out)], np.int32))))
            if out[-1] == tok.eos_token_id:
                break
        assert reply == tok.decode(out, skip_special_tokens=True)
    with pytest.raises(ValueError, match="non-empty list"):
        generate_chat(cfg, params, tok, [[]], sp)


@pytest.mark.parametrize(
    "sp",
    [
        SamplingParams(greedy=True, max_new_tokens=8),
        SamplingParams(temperature=1.0, max_new_tokens=8),
        SamplingParams(temperature=0.8, top_p=0.9, top_k=30, max_new_tokens=8),
    ],
    ids=["greedy", "t1", "topk+topp"],
)
def test_prefix_cache_and_shared_prefill_equal_the_full_prefill(tok, model, sp):
    """fp32: contexts prefilled once, each (context, task) pair once and broadcast to its rows
    (here 2-3 rows share a pair, like an RL step's G/K rollouts) gives the tokens and log-probs
    of every row prefilling its whole padded prompt."""
    cfg, params = model
    bank = build_bank(tok, BANK_CONTEXTS, max_prompts=4, max_len=160)  # rows padded far past use
    idx = [0, 0, 0, 1, 1, 2, 2, 2, bank.no_context, bank.no_context]
    tasks = [TASKS[0]] * 3 + [TASKS[1]] * 2 + [TASKS[2], TASKS[2], TASKS[3]] + [TASKS[4]] * 2
    key = jax.random.PRNGKey(5)
    full = Sampler(cfg, tok, prefix_cache=False).sample(params, bank, idx, tasks, key, sp)
    shared_sampler = Sampler(cfg, tok)
    _, row_pair = shared_sampler._shared_inputs(
        bank, np.asarray(idx, np.int32), shared_sampler.encode_tasks(bank, tasks)
    )
    assert len(set(row_pair.tolist())) == 5  # 10 rows, 5 distinct (context, task) pairs
    shared = shared_sampler.sample(params, bank, idx, tasks, key, sp)
    assert shared.completion_tokens.tolist() == full.completion_tokens.tolist()
    assert shared.texts == full.texts
    for name in ("prompt_lengths", "completion_lengths", "finished"):
        assert (
            np.asarray(getattr(shared, name)).tolist() == np.asarray(getattr(full, name)).tolist()
        )
    # Same layout up to the (narrower) width: the prompt is cut to the real context bucket.
    w = np.asarray(shared.tokens).shape[1]
    assert w < np.asarray(full.tokens).shape[1]
    used = int(np.max(np.asarray(full.prompt_lengths) + np.asarray(full.completion_lengths)))
    assert used <= w
    for name in ("tokens", "positions", "completion_mask"):
        a, b = np.asarray(getattr(shared, name)), np.asarray(getattr(full, name))
        assert a[:, :used].tolist() == b[:, :used].tolist(), name
    for name in ("logps", "raw_logps"):
        a, b = np.asarray(getattr(shared, name)), np.asarray(getattr(full, name))
        np.testing.assert_allclose(a[:, :used], b[:, :used], atol=3e-5, err_msg=name)
    if not sp.greedy:  # rows sharing a pair still draw their own samples
        assert shared.completion_tokens[0].tolist() != shared.completion_tokens[1].tolist()


def test_prepared_params_are_made_once_per_parameter_version(tok, model, bank):
    cfg, params = model
    sampler = Sampler(cfg, tok, kernel_layout="out_in")
    a = sampler.prepare_params(params)
    assert sampler.prepare_params(params) is a  # same arrays: memoised
    assert sampler.prepare_params(a) is a  # already prepared: passed through
    new = jax.tree.map(lambda x: x + 0, params)  # a new parameter version (an update)
    b = sampler.prepare_params(new)
    assert b is not a
    sp = SamplingParams(greedy=True, max_new_tokens=4)
    r1 = sampler.sample(params, bank, [0], [TASKS[0]], jax.random.PRNGKey(0), sp)
    r2 = sampler.sample(
        sampler.prepare_params(params), bank, [0], [TASKS[0]], jax.random.PRNGKey(0), sp
    )
    assert r1.completion_tokens.tolist() == r2.completion_tokens.tolist()
    other = Sampler(cfg, tok, kernel_layout="in_out")
    with pytest.raises(ValueError, match="another engine config"):
        other.sample(a, bank, [0], [TASKS[0]], jax.random.PRNGKey(0), sp)
