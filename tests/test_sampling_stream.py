"""Chunked (streaming) decode against the one-shot sampler, on a tiny random fp32 model.

The oracle is `Sampler.sample` (one jitted while_loop): with the same inputs and key, the
streamed chunks concatenate to its completion tokens bit for bit and `result()` equals its
`Rollouts` field for field (log-probs exactly, fp32), including rows that stop early on a
stop token and rows cut at max_new_tokens.
"""

import itertools

import jax
import numpy as np
import pytest

from fst_jax.sampling import Sampler, SamplingParams, num_compilations

TASKS = ["What is 2+2?", "Name a color.", "Say hi", "Count to three.", "Why?", "Spell cat."]
FIELDS = (
    "tokens", "positions", "completion_mask", "logps", "raw_logps", "prompt_lengths",
    "completion_lengths", "finished", "completion_tokens",
)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tok, model, bank):
    """conftest's shared tiny model and bank, with one sampler for the file."""
    cfg, params = model
    return Sampler(cfg, tok), params, bank


def _batch(bank, rows=5):
    idx = [0, 1, 2, bank.no_context, 1][:rows]
    return idx, TASKS[:rows], np.asarray([7, 3, 11, 5, 2][:rows], np.int32)


def _with_early_stop(sampler, params, bank, sp):
    """sp plus an extra stop token that ends some rows early while others run to the cut."""
    idx, tasks, rid = _batch(bank)
    r = sampler.sample(params, bank, idx, tasks, jax.random.PRNGKey(1), sp, row_ids=rid)
    gen = np.asarray(r.completion_tokens)
    pad = sampler._pad_id()
    for col in range(2, sp.max_new_tokens // 2):
        for b in range(gen.shape[0]):
            t = int(gen[b, col])
            if any(t not in gen[o] for o in range(gen.shape[0])) and t not in (2, pad):
                return sp.replace(stop_token_ids=(t,))
    raise AssertionError("no token ends one row early but not all; change the seeds")


def _assert_same(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), f)
    assert a.texts == b.texts


@pytest.mark.parametrize(
    "sp, chunk, prefetch",
    [
        (SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=24), 5, True),
        (SamplingParams(greedy=True, max_new_tokens=24), 1, False),
        (SamplingParams(temperature=0.7, max_new_tokens=24), 64, True),  # chunk > buffer
    ],
)
def test_streamed_tokens_and_result_equal_the_one_shot_sampler(setup, sp, chunk, prefetch):
    sampler, params, bank = setup
    sp = _with_early_stop(sampler, params, bank, sp)
    idx, tasks, rid = _batch(bank)
    key = jax.random.PRNGKey(1)
    want = sampler.sample(params, bank, idx, tasks, key, sp, row_ids=rid)
    fin, lens = np.asarray(want.finished), np.asarray(want.completion_lengths)
    assert fin.any() and (lens < sp.max_new_tokens).any()  # some rows stop early...
    assert (~fin).any() and (lens == sp.max_new_tokens).any()  # ...others hit the cut

    stream = sampler.sample_stream(
        params, bank, idx, tasks, key, sp, row_ids=rid, chunk=chunk, prefetch=prefetch
    )
    chunks = list(stream)
    got = stream.result()
    _assert_same(got, want)
    gen = np.asarray(want.completion_tokens)
    for b in range(len(idx)):
        streamed = np.concatenate([c.tokens[b] for c in chunks])
        np.testing.assert_array_equal(streamed, gen[b, : lens[b]])
    # Chunk sizes: the first also carries the prefill's token; rows that stopped get nothing.
    assert all(len(t) <= chunk + 1 for t in chunks[0].tokens)
    assert all(len(t) <= chunk for c in chunks[1:] for t in c.tokens)
    assert len(chunks) == max(1, -(-(int(lens.max()) - 1) // chunk))
    np.testing.assert_array_equal(chunks[-1].lengths, lens)
    np.testing.assert_array_equal(chunks[-1].done, fin)
    for c, d in itertools.pairwise(chunks):
        assert all(len(t) == 0 for t, done in zip(d.tokens, c.done) if done)
    assert stream.result() is got  # memoised; iterating again yields nothing
    assert list(stream) == []


def test_stream_calls_and_chunks_do_not_recompile(setup):
    sampler, params, bank = setup
    sp = SamplingParams(temperature=1.0, max_new_tokens=16)
    idx, tasks, rid = _batch(bank, 3)
    s = sampler.sample_stream(params, bank, idx, tasks, jax.random.PRNGKey(0), sp, chunk=3)
    s.result()
    compiled = num_compilations()
    s2 = sampler.sample_stream(
        params, bank, idx[::-1], TASKS[3:6], jax.random.PRNGKey(9), sp, row_ids=rid + 1, chunk=3
    )
    s2.result()
    assert s2.chunks > 1 and num_compilations() == compiled


def test_stop_ends_the_call_at_a_chunk_boundary(setup):
    sampler, params, bank = setup
    sp = SamplingParams(temperature=1.0, max_new_tokens=32, ignore_eos=True)
    idx, tasks, rid = _batch(bank, 4)
    key = jax.random.PRNGKey(4)
    want = sampler.sample(params, bank, idx, tasks, key, sp, row_ids=rid)
    for prefetch in (False, True):
        s = sampler.sample_stream(
            params, bank, idx, tasks, key, sp, row_ids=rid, chunk=4, prefetch=prefetch
        )
        first = next(iter(s))
        s.stop()
        r = s.result()
        lens = np.asarray(r.completion_lengths)
        # Without prefetch the call ends with the chunk read; with it, one more was decoded.
        assert (lens == (5 if not prefetch else 9)).all() and not np.asarray(r.finished).any()
        np.testing.assert_array_equal(first.lengths, [5] * 4)
        gen, full = np.asarray(r.completion_tokens), np.asarray(want.completion_tokens)
        np.testing.assert_array_equal(gen[:, : lens[0]], full[:, : lens[0]])
        mask = np.asarray(r.completion_mask) > 0
        np.testing.assert_array_equal(np.asarray(r.logps)[mask], np.asarray(want.logps)[mask])


@pytest.mark.parametrize("chunk", [0, -3, True, 2.5, "8"])
def test_bad_chunk_sizes_are_refused_before_any_work(setup, chunk):
    sampler, params, bank = setup
    sp = SamplingParams(max_new_tokens=8)
    with pytest.raises(ValueError, match="decode steps per call"):
        sampler.sample_stream(params, bank, [0], ["x"], jax.random.PRNGKey(0), sp, chunk=chunk)
