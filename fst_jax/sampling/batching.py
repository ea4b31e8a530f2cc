"""Host-side batch assembly for the sampler: static buckets, input checks, deduplication.

Every jitted sampler call sees shapes from a few buckets (batch rows, task tokens, context
tokens), so only a new bucket compiles. This module turns one call's requests (bank rows, task
tokens, row ids) into those padded host arrays: `check_call` validates them before any device
work, `shared_inputs` deduplicates contexts and (context, task) pairs for
`engine.prefill_shared`, `context_fill_inputs` pads the contexts a `ContextCache` lacks for
`engine.store_contexts`, and `padded_args` pads the per-row inputs to the batch bucket. Pure
numpy (plus `replicated` for multi-host arrays); `fst_jax.sampling.sampler.Sampler` calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fst_jax.sampling.prompt_bank import PromptBank
from fst_jax.sampling.select import SamplingParams

__all__ = [
    "DEFAULT_BATCH_BUCKETS",
    "DEFAULT_PREFIX_BUCKETS",
    "DEFAULT_TASK_BUCKETS",
    "TaskTokens",
    "batch_bucket",
    "bucket",
    "check_call",
    "context_fill_inputs",
    "pad_task_rows",
    "padded_args",
    "replicated",
    "shared_inputs",
]

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_TASK_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_PREFIX_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


class TaskTokens(NamedTuple):
    """Task (user-turn) tokens padded to a bucket: tokens int32[B, Lt], lengths int32[B]."""

    tokens: np.ndarray
    lengths: np.ndarray
    fingerprint: str  # tokenizer fingerprint the rows were encoded with


def bucket(n: int, buckets: Sequence[int], what: str) -> int:
    """The smallest of `buckets` (sorted) holding `n`; past the largest, an error naming `what`."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(
        f"{what} of {n} exceeds the largest bucket {buckets[-1]}; pass larger buckets to Sampler"
    )


def batch_bucket(n: int, buckets: Sequence[int]) -> int:
    """Rows → a batch bucket; past the largest, the next multiple of it (batches never fail)."""
    if n <= buckets[-1]:
        return bucket(n, buckets, "batch")
    return -(-n // buckets[-1]) * buckets[-1]


def _prefix_width(longest: int, width: int, prefix_buckets: Sequence[int]) -> int:
    """Context columns kept: a bucket of the longest context's length, at most the bank width."""
    if max(longest, 1) <= prefix_buckets[-1]:
        return min(bucket(max(longest, 1), prefix_buckets, "Context length"), width)
    return width


def pad_task_rows(
    rows: Sequence[Sequence[int]], task_buckets: Sequence[int], pad_id: int, fingerprint: str
) -> TaskTokens:
    """Already-tokenised task rows → TaskTokens padded to the task bucket."""
    if not rows:
        raise ValueError("Empty batch: pass at least one task")
    longest = max(len(r) for r in rows)
    if min(len(r) for r in rows) == 0:
        raise ValueError("A task has zero tokens; every row needs a non-empty task")
    lt = bucket(longest, task_buckets, "Task length (tokens)")
    tokens = np.full((len(rows), lt), pad_id, np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    lengths = np.asarray([len(r) for r in rows], np.int32)
    return TaskTokens(tokens, lengths, fingerprint)


def check_call(
    bank: PromptBank,
    prompt_idx: Any,
    tasks: TaskTokens,
    row_ids: Any,
    sampling: SamplingParams,
    *,
    fingerprint: str,
    max_positions: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every host check of one sampler call, before any device work: (bank indices int32[n],
    row ids int32[n], n). Errors name the inconsistent input and how to pass it."""
    if tasks.fingerprint != fingerprint:
        raise ValueError(
            "Task tokens were encoded with a different tokenizer; re-encode them with "
            "sampler.encode_tasks(bank, texts)"
        )
    idx = bank.validate_indices(prompt_idx)
    n = tasks.tokens.shape[0]
    if idx.shape[0] != n or tasks.lengths.shape != (n,):
        raise ValueError(
            f"Inconsistent batch: {idx.shape[0]} prompt indices, {n} task rows, "
            f"{tasks.lengths.shape} task lengths; pass one index and one task per row"
        )
    if (tasks.lengths < 1).any() or (tasks.lengths > tasks.tokens.shape[1]).any():
        raise ValueError(
            f"Task lengths must be in [1, {tasks.tokens.shape[1]}]; got {tasks.lengths}"
        )
    rid = np.arange(n, dtype=np.int32) if row_ids is None else np.asarray(row_ids)
    if rid.shape != (n,) or not np.issubdtype(rid.dtype, np.integer):
        raise ValueError(f"row_ids must be int[{n}], got shape {rid.shape} {rid.dtype}")
    total = bank.max_len + tasks.tokens.shape[1] + bank.suffix.shape[0]
    if total + sampling.max_new_tokens > max_positions:
        raise ValueError(
            f"Prompt bucket {total} + max_new_tokens {sampling.max_new_tokens} exceeds the "
            f"model's max_position_embeddings={max_positions}; use "
            "shorter buckets / bank max_len or fewer new tokens"
        )
    return idx, rid.astype(np.int32), n


def shared_inputs(
    bank: PromptBank,
    idx: np.ndarray,
    tasks: TaskTokens,
    *,
    batch_buckets: Sequence[int],
    prefix_buckets: Sequence[int],
    pad_id: int,
) -> tuple[tuple[Any, ...], np.ndarray]:
    """Host dedup for `engine.prefill_shared`: the distinct contexts in use (cut to a bucket
    of their real length) and the distinct (context, task) pairs; returns the replicated
    inputs (contexts, suffix, pairs) and each row's pair index."""
    ctx_ids, row_ctx = np.unique(idx, return_inverse=True)
    row_ctx = row_ctx.reshape(-1)
    pairs: dict[tuple[int, bytes], int] = {}
    row_pair = np.empty(idx.shape[0], np.int32)
    first: list[int] = []
    for b in range(idx.shape[0]):
        k = (int(row_ctx[b]), tasks.tokens[b, : tasks.lengths[b]].tobytes())
        j = pairs.setdefault(k, len(first))
        if j == len(first):
            first.append(b)
        row_pair[b] = j
    c, u = len(ctx_ids), len(first)
    cb, ub = (batch_bucket(m, batch_buckets) for m in (c, u))
    lens = bank.lengths_host[ctx_ids]
    lp = _prefix_width(int(lens.max()), bank.max_len, prefix_buckets)
    ctx_tok = np.full((cb, lp), pad_id, np.int32)
    ctx_tok[:c] = bank.host_table()[ctx_ids, :lp]
    ctx_len = np.zeros((cb,), np.int32)
    ctx_len[:c] = lens
    sel = np.asarray(first)
    pair_ctx = np.zeros((ub,), np.int32)
    pair_ctx[:u] = row_ctx[sel]
    pair_tok = np.full((ub, tasks.tokens.shape[1]), pad_id, np.int32)
    pair_tok[:u] = tasks.tokens[sel]
    pair_len = np.ones((ub,), np.int32)
    pair_len[:u] = tasks.lengths[sel]
    fixed = (ctx_tok, ctx_len, bank.suffix, bank.suffix_length, pair_ctx, pair_tok, pair_len)
    return fixed, row_pair


def context_fill_inputs(
    table: np.ndarray,
    ctx_ids: np.ndarray,
    lens: np.ndarray,
    missing: Sequence[int],
    slots: np.ndarray,
    *,
    store_slots: int,
    batch_buckets: Sequence[int],
    prefix_buckets: Sequence[int],
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`engine.store_contexts`' inputs for the contexts a `ContextCache` lacks (`missing`:
    indices into `ctx_ids` / `lens` / `slots`): (tokens [mb, lm], lengths [mb], destination
    slots [mb]), rows padded to a batch bucket with destination ``store_slots`` (dropped)."""
    m = len(missing)
    mb = batch_bucket(m, batch_buckets)
    width = table.shape[1]
    lm = _prefix_width(int(lens[missing].max()), width, prefix_buckets)
    tok = np.full((mb, lm), pad_id, np.int32)
    tok[:m] = table[ctx_ids[missing], :lm]
    mlen = np.zeros((mb,), np.int32)
    mlen[:m] = lens[missing]
    dst = np.full((mb,), store_slots, np.int32)  # padding rows: dropped
    dst[:m] = slots[missing]
    return tok, mlen, dst


def padded_args(
    fixed: tuple[Any, ...],
    rows: tuple[np.ndarray, ...],
    fills: tuple[Any, ...],
    batch_buckets: Sequence[int],
) -> list[Any]:
    """A call's inputs as device arguments: the shared inputs (`fixed`) as they are, the
    per-row inputs (`rows`, row ids last) padded to the batch bucket with `fills` (padding rows
    get row ids -1, -2, ...)."""
    n = rows[0].shape[0]
    pad = batch_bucket(n, batch_buckets) - n
    padded = [
        np.concatenate([x, np.full((pad, *x.shape[1:]), f, x.dtype)])
        for x, f in zip(rows[:-1], fills)
    ]
    padded.append(np.concatenate([rows[-1], -1 - np.arange(pad, dtype=np.int32)]))
    fixed = tuple(jnp.asarray(x) if isinstance(x, np.ndarray) else x for x in fixed)
    return [*fixed, *(jnp.asarray(x) for x in padded)]


def replicated(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array (the same on every process) replicated over `sharding`'s devices."""
    if isinstance(x, dict) or (isinstance(x, jax.Array) and jax.process_count() == 1):
        return x  # a dict: the context store, already laid out over the mesh
    x = np.asarray(x)
    if isinstance(sharding, jax.sharding.NamedSharding):
        rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        return jax.make_array_from_process_local_data(rep, x, x.shape)
    return jnp.asarray(x)
