"""`fst_jax.sampling.batching` alone (host numpy, no compile): buckets, task padding, the call
checks, the context/pair dedup and the context-store fill inputs, each against what the rows
themselves say. The sampler's outputs on these inputs are compared with references in
test_sampling_decode / test_sampling_context_cache."""

from __future__ import annotations

import numpy as np
import pytest

from fst_jax.sampling import SamplingParams, batching
from fst_jax.sampling import sampler as sampler_mod

BUCKETS = (1, 2, 4, 8)


def test_buckets_round_up_and_batches_never_fail():
    assert [batching.bucket(n, BUCKETS, "x") for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="Context length of 9 exceeds the largest bucket 8"):
        batching.bucket(9, BUCKETS, "Context length")
    # past the largest batch bucket: the next multiple of it
    assert [batching.batch_bucket(n, BUCKETS) for n in (3, 8, 9, 17)] == [4, 8, 16, 24]


def test_pad_task_rows_pads_to_the_task_bucket():
    t = batching.pad_task_rows([[5, 6, 7], [9]], (2, 4), pad_id=0, fingerprint="fp")
    np.testing.assert_array_equal(t.tokens, [[5, 6, 7, 0], [9, 0, 0, 0]])
    np.testing.assert_array_equal(t.lengths, [3, 1])
    assert t.fingerprint == "fp" and t.tokens.dtype == np.int32
    with pytest.raises(ValueError, match="Empty batch"):
        batching.pad_task_rows([], (2, 4), 0, "fp")
    with pytest.raises(ValueError, match="zero tokens"):
        batching.pad_task_rows([[1], []], (2, 4), 0, "fp")


def _tasks(rows, fp):
    return batching.pad_task_rows(rows, (8, 16), pad_id=0, fingerprint=fp)


def test_check_call_returns_indices_and_row_ids_and_names_each_bad_input(bank):
    sp = SamplingParams(max_new_tokens=4)
    tasks = _tasks([[3, 4], [5], [6, 7, 8]], bank.fingerprint)
    kw = dict(fingerprint=bank.fingerprint, max_positions=1024)
    idx, rid, n = batching.check_call(bank, [0, 1, bank.no_context], tasks, None, sp, **kw)
    assert n == 3 and idx.dtype == np.int32 and rid.dtype == np.int32
    np.testing.assert_array_equal(idx, [0, 1, bank.no_context])
    np.testing.assert_array_equal(rid, [0, 1, 2])
    _, rid, _ = batching.check_call(
        bank, [0, 0, 0], tasks, np.asarray([7, 3, 9], np.int64), sp, **kw
    )
    assert rid.dtype == np.int32 and rid.tolist() == [7, 3, 9]
    with pytest.raises(ValueError, match="different tokenizer"):
        batching.check_call(bank, [0, 0, 0], _tasks([[1], [1], [1]], "other"), None, sp, **kw)
    with pytest.raises(ValueError, match="3 prompt indices, 2 task rows"):
        batching.check_call(bank, [0, 0, 0], _tasks([[1], [1]], bank.fingerprint), None, sp, **kw)
    with pytest.raises(ValueError, match=r"row_ids must be int\[3\]"):
        batching.check_call(bank, [0, 0, 0], tasks, [0.5, 1, 2], sp, **kw)
    total = bank.max_len + 8 + bank.suffix.shape[0]
    with pytest.raises(ValueError, match=f"Prompt bucket {total} \\+ max_new_tokens 4 exceeds"):
        batching.check_call(bank, [0, 0, 0], tasks, None, sp, fingerprint=bank.fingerprint,
                            max_positions=total + 3)  # fmt: skip


def test_shared_inputs_dedup_keeps_every_rows_prompt(bank):
    rows = [[3, 4], [3, 4], [5], [3, 4], [5]]
    idx = np.asarray([0, 0, 0, 2, bank.no_context], np.int32)
    tasks = _tasks(rows, bank.fingerprint)
    fixed, row_pair = batching.shared_inputs(
        bank, idx, tasks, batch_buckets=BUCKETS, prefix_buckets=(16, 32, 64), pad_id=-7
    )
    ctx_tok, ctx_len, suffix, suffix_len, pair_ctx, pair_tok, pair_len = fixed
    assert suffix is bank.suffix and suffix_len is bank.suffix_length
    # distinct contexts 0, 2, no_context (3 → bucket 4); distinct pairs: 4 (→ bucket 4)
    assert ctx_tok.shape[0] == 4 and pair_ctx.shape == (4,) and row_pair.max() == 3
    table, lens = bank.host_table(), bank.lengths_host
    assert ctx_tok.shape[1] == min(
        batching.bucket(int(lens[[0, 2, 3]].max()), (16, 32, 64), "c"), bank.max_len
    )
    for b, row in enumerate(rows):  # each row's (context, task) is recovered from its pair
        j = row_pair[b]
        c = pair_ctx[j]
        n = ctx_len[c]
        np.testing.assert_array_equal(ctx_tok[c, :n], table[idx[b], : lens[idx[b]]])
        assert pair_len[j] == len(row) and pair_tok[j, : len(row)].tolist() == row
    assert row_pair[0] == row_pair[1] != row_pair[2]  # same context + task share one pair
    assert (ctx_tok[3] == -7).all() and ctx_len[3] == 0  # bucket padding


def test_context_fill_inputs_pad_with_a_dropped_slot(bank):
    table, lens = bank.host_table(), bank.lengths_host
    ctx_ids = np.asarray([0, 1, 2])
    slots = np.asarray([5, 2, 7], np.int32)
    tok, mlen, dst = batching.context_fill_inputs(
        table, ctx_ids, lens[ctx_ids], [0, 2], slots, store_slots=8, batch_buckets=BUCKETS,
        prefix_buckets=(16, 32, 64), pad_id=-1,
    )  # fmt: skip
    assert tok.shape[0] == 2 and mlen.tolist() == [lens[0], lens[2]] and dst.tolist() == [5, 7]
    for r, c in enumerate((0, 2)):
        np.testing.assert_array_equal(tok[r, : lens[c]], table[c, : lens[c]])
    tok, mlen, dst = batching.context_fill_inputs(
        table, ctx_ids, lens[ctx_ids], [0, 1, 2], slots, store_slots=8, batch_buckets=BUCKETS,
        prefix_buckets=(16, 32, 64), pad_id=-1,
    )  # fmt: skip
    assert dst.tolist() == [5, 2, 7, 8] and mlen[3] == 0 and (tok[3] == -1).all()


def test_padded_args_pad_rows_and_give_padding_negative_row_ids():
    fixed = (np.zeros(3, np.int32), "not an array")
    rows = (
        np.asarray([4, 5, 6], np.int32),
        np.ones((3, 2), np.float32),
        np.asarray([0, 1, 2], np.int32),
    )
    args = batching.padded_args(fixed, rows, (9, 0.0), BUCKETS)
    assert args[1] == "not an array" and len(args) == 5
    assert np.asarray(args[2]).tolist() == [4, 5, 6, 9]
    assert np.asarray(args[3])[3].tolist() == [0.0, 0.0]
    assert np.asarray(args[4]).tolist() == [0, 1, 2, -1]


def test_the_sampler_module_still_exports_what_moved():
    for name in ("TaskTokens", "DEFAULT_BATCH_BUCKETS", "PreparedParams", "default_kernel_layout",
                 "cast_params_for_sampling", "_bucket", "_batch_bucket", "_replicated", "_to_layout",
                 "_cast_tree", "DEFAULT_CONTEXT_SLOTS", "Rollouts", "Sampler", "generate_chat"):  # fmt: skip
        assert hasattr(sampler_mod, name), name
    assert sampler_mod.TaskTokens is batching.TaskTokens
