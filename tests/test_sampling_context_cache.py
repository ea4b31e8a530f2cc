"""Contexts' keys/values kept across sampler calls (`ContextCache`), checked against the sampler
with no cache at all (every row prefills its whole prompt): same tokens, log-probs within fp32
tolerance, over calls that hit, miss, evict, overflow and change params."""

import jax
import numpy as np
import pytest

from fst_jax.sampling import Sampler, SamplingParams, num_compilations
from fst_jax.sampling.context_cache import ContextCache

TASKS = ["What is 2+2?", "Name a color.", "Say hi", "Count to three."]
SP = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=5)


def _same(a, b):
    """Same samples and layout; the reference's layout is wider (the whole bank row width), so
    columns are compared up to the longest row."""
    assert a.completion_tokens.tolist() == b.completion_tokens.tolist()
    assert a.texts == b.texts
    for name in ("prompt_lengths", "completion_lengths", "finished"):
        assert np.asarray(getattr(a, name)).tolist() == np.asarray(getattr(b, name)).tolist()
    used = int(np.max(np.asarray(b.prompt_lengths) + np.asarray(b.completion_lengths)))
    for name in ("tokens", "positions", "completion_mask"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x[:, :used].tolist() == y[:, :used].tolist(), name
    for name in ("logps", "raw_logps"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        np.testing.assert_allclose(x[:, :used], y[:, :used], atol=3e-5, err_msg=name)


def _kv_bytes(cfg, slots, width):
    """Independent count of a [slots, width] cache: K and V per layer + positions + index."""
    per = slots * width * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize
    return 2 * cfg.num_layers * per + slots * width * 4 + 4


def test_cached_contexts_equal_the_uncached_sampler_over_calls(tok, model, bank):
    cfg, params = model
    ref = Sampler(cfg, tok, prefix_cache=False, context_cache=0)
    cached = Sampler(cfg, tok, context_cache=4)
    nc = bank.no_context
    calls = [  # (indices, tasks): contexts {0, 1}; {1, 2, none}; {0, 1} again; {2}
        ([0, 0, 1, 1], TASKS),
        ([1, 2, nc, 2], TASKS[::-1]),
        ([1, 0, 0, 1], TASKS[1:] + TASKS[:1]),
        ([2, 2], TASKS[:2]),
    ]
    expect = [(0, 2), (1, 4), (3, 4), (4, 4)]  # cumulative (hits, misses)
    for i, ((idx, tasks), counts) in enumerate(zip(calls, expect)):
        key = jax.random.PRNGKey(i)
        _same(
            cached.sample(params, bank, idx, tasks, key, SP),
            ref.sample(params, bank, idx, tasks, key, SP),
        )
        cc = cached.context_cache
        assert (cc.hits, cc.misses) == counts, i
    assert cached.context_cache.nbytes() == _kv_bytes(cfg, 4, bank.max_len)


def test_lru_eviction_bounds_memory_and_stays_exact(tok, model, bank):
    cfg, params = model
    ref = Sampler(cfg, tok, prefix_cache=False, context_cache=0)
    cached = Sampler(cfg, tok, context_cache=2)
    cc = cached.context_cache
    table = bank.host_table()

    def key_of(c):
        return table[c, : bank.lengths_host[c]].tobytes()

    for i, (idx, lru) in enumerate(
        [([0, 1], [0, 1]), ([2], [1, 2]), ([0, 0], [2, 0]), ([2, 0], [0, 2])]
    ):
        tasks = TASKS[: len(idx)]
        key = jax.random.PRNGKey(10 + i)
        _same(
            cached.sample(params, bank, idx, tasks, key, SP),
            ref.sample(params, bank, idx, tasks, key, SP),
        )
        assert cc.cached(bank.max_len) == [key_of(c) for c in lru], i
        assert cc.nbytes() == _kv_bytes(cfg, 2, bank.max_len)
    assert (cc.hits, cc.misses) == (2, 4)
    # More distinct contexts than slots: this call prefills them itself, the store is untouched.
    idx = [0, 1, 2]
    key = jax.random.PRNGKey(20)
    _same(
        cached.sample(params, bank, idx, TASKS[:3], key, SP),
        ref.sample(params, bank, idx, TASKS[:3], key, SP),
    )
    assert (cc.hits, cc.misses) == (2, 4)
    assert cc.cached(bank.max_len) == [key_of(0), key_of(2)]


def test_new_params_invalidate_the_cache(tok, model, bank):
    """A stale store would attend to the old params' keys/values: the outputs would differ from
    the uncached sampler under the new params."""
    cfg, params = model
    ref = Sampler(cfg, tok, prefix_cache=False, context_cache=0)
    cached = Sampler(cfg, tok, context_cache=4)
    cc = cached.context_cache
    idx, tasks, key = [0, 1, 0], TASKS[:3], jax.random.PRNGKey(3)
    cached.sample(params, bank, idx, tasks, key, SP)
    new = jax.tree.map(lambda x: x * 1.05 if x.ndim >= 2 else x, params)  # an update
    a = cached.sample(new, bank, idx, tasks, key, SP)
    _same(a, ref.sample(new, bank, idx, tasks, key, SP))
    assert (cc.hits, cc.misses, cc.invalidations) == (0, 4, 1)
    old = ref.sample(params, bank, idx, tasks, key, SP)
    assert not np.allclose(np.asarray(a.raw_logps), np.asarray(old.raw_logps), atol=1e-3)
    # The same new params again (also prepared ahead, as the RL step does): hits.
    _same(cached.sample(cached.prepare_params(new), bank, idx, tasks, key, SP), a)
    assert (cc.hits, cc.misses, cc.invalidations) == (2, 4, 1)


def test_new_contexts_do_not_recompile(tok, model, bank):
    cfg, params = model
    sampler = Sampler(
        cfg, tok, batch_buckets=(8,), task_buckets=(32,), prefix_buckets=(64,), context_cache=8
    )
    sampler.sample(params, bank, [0, 1, 2, 0], TASKS, jax.random.PRNGKey(0), SP)
    before = num_compilations()
    rng = np.random.default_rng(0)
    for call in range(4):  # 0-2 new contexts per call, evictions from the 5th on
        new_bank = bank.with_contexts([f"Ctx {call}.", "Other.", f"Third {call}"])
        idx = rng.choice([0, 1, 2, new_bank.no_context], size=4).tolist()
        sampler.sample(params, new_bank, idx, TASKS, jax.random.PRNGKey(call), SP)
    assert num_compilations() == before
    assert sampler.context_cache.hits > 0


def test_bad_settings_are_named(tok, model):
    cfg, _ = model
    with pytest.raises(ValueError, match="context_cache=-1"):
        Sampler(cfg, tok, context_cache=-1)
    with pytest.raises(ValueError, match="slots=0"):
        ContextCache(0)
