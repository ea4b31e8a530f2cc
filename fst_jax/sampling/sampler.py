"""Host-side sampler: validation, static buckets, one prefill + one decode call, text decoding.

`Sampler.sample(params, bank, prompt_idx, tasks, key, sampling)` is the one call every rollout
goes through (RL steps, GEPA evaluations, validation). It checks every input on the host before
any device work, pads the batch and the task tokens to static buckets (so only a new bucket or
new `SamplingParams` compile), runs the jitted prefill (`engine.prefill_stored` by default,
contexts read from the `ContextCache`) and `engine.decode`, slices the
padding rows away and decodes completion texts once per batch. `Sampler.sample_stream` is the
same call decoded in chunks of steps (`fst_jax.sampling.stream`), for token streaming.

`generate_chat(config, params, tokenizer, conversations, sampling, key)` renders whole chat
conversations with the tokenizer's template and samples replies (reflection LM, demos).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fst_jax.models import decoder
from fst_jax.models.config import ModelConfig
from fst_jax.rows import row_blocks, rows_of
from fst_jax.sampling import engine
from fst_jax.sampling.context_cache import ContextCache
from fst_jax.sampling.prompt_bank import PromptBank, raw_bank, tokenizer_fingerprint
from fst_jax.sampling.select import SamplingParams
from fst_jax.sampling.stream import SampleStream, check_chunk

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_TASK_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_PREFIX_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# Contexts kept across calls: an RL step's K contexts + the no-context row, a GEPA candidate
# between its minibatch and anchor evaluations, the evaluation's best prompt.
DEFAULT_CONTEXT_SLOTS = 16


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedParams:
    """Weights as the engine reads them (cast, re-laid out), made once per parameter version.

    `Sampler.prepare_params` returns one; `Sampler.sample` accepts it in place of raw params and
    then skips the preparation (~150 ms per call for SmolLM2 on CPU). `config` is the engine
    config the weights are laid out for; a sampler with another engine config rejects them.
    """

    params: Any
    config: ModelConfig


class TaskTokens(NamedTuple):
    """Task (user-turn) tokens padded to a bucket: tokens int32[B, Lt], lengths int32[B]."""

    tokens: np.ndarray
    lengths: np.ndarray
    fingerprint: str  # tokenizer fingerprint the rows were encoded with


@dataclasses.dataclass
class Rollouts:
    """Sampler output in the RL training layout ([B, S]; see `engine.training_layout`).

    `logps` are under the sampling distribution (temperature/top-k/top-p; raw for greedy),
    `raw_logps` under the model at the sampling temperature without truncation (the RL π_old,
    see `select.py`). `finished[b]`: row b emitted a stop token
    (False = cut at max_new_tokens). `texts` are the completions decoded without specials.
    """

    tokens: jax.Array
    positions: jax.Array
    completion_mask: jax.Array
    logps: jax.Array
    raw_logps: jax.Array
    prompt_lengths: jax.Array
    completion_lengths: jax.Array
    finished: jax.Array
    completion_tokens: np.ndarray  # host int32[B, max_new_tokens], pad after the completion
    texts: list[str]
    # Sampled with `sharding=`: the rows above are this process's rows [lo, hi) of the batch
    # (host numpy arrays); None = all rows.
    row_range: tuple[int, int] | None = None

    def batch(self) -> dict[str, jax.Array]:
        """The four arrays of the sampler → RL contract."""
        return {
            "tokens": self.tokens,
            "positions": self.positions,
            "completion_mask": self.completion_mask,
            "logps": self.logps,
        }


def _bucket(n: int, buckets: Sequence[int], what: str) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(
        f"{what} of {n} exceeds the largest bucket {buckets[-1]}; pass larger buckets to Sampler"
    )


def _batch_bucket(n: int, buckets: Sequence[int]) -> int:
    if n <= buckets[-1]:
        return _bucket(n, buckets, "batch")
    return -(-n // buckets[-1]) * buckets[-1]


@jax.jit
def _cast_tree(params: Any, dtype_probe: jax.Array) -> Any:
    dt = dtype_probe.dtype
    return jax.tree.map(
        lambda x: x.astype(dt) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating) else x,
        params,
    )


def cast_params_for_sampling(config: ModelConfig, params: Any) -> Any:
    """Matrices → `config.dtype` once per call (bf16 decode reads half the bytes per step);
    norms and biases stay in their own dtype. A no-op when they already match."""
    dt = jnp.dtype(config.dtype)
    leaves = jax.tree.leaves(params)
    if all(x.dtype == dt for x in leaves if x.ndim >= 2):
        return params
    return _cast_tree(params, jnp.zeros((), dt))


@functools.partial(jax.jit, static_argnames=("config", "layout"))
def _to_layout(config: ModelConfig, params: Any, layout: str) -> Any:
    return decoder.to_kernel_layout(config, params, layout)[1]


def _replicated(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array (the same on every process) replicated over `sharding`'s devices."""
    if isinstance(x, dict) or (isinstance(x, jax.Array) and jax.process_count() == 1):
        return x  # a dict: the context store, already laid out over the mesh
    x = np.asarray(x)
    if isinstance(sharding, jax.sharding.NamedSharding):
        rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        return jax.make_array_from_process_local_data(rep, x, x.shape)
    return jnp.asarray(x)


def default_kernel_layout() -> str:
    """ "out_in" on CPU (XLA:CPU's small-batch matmuls run ~1.8x faster on [out, in] kernels),
    "in_out" elsewhere (TPU/GPU lay out dot operands themselves: no copy of the weights)."""
    return "out_in" if jax.default_backend() == "cpu" else "in_out"


class Sampler:
    """Holds the tokenizer, stop tokens and buckets; the jitted core is pure (`engine`).

    `config` describes the params callers pass (the trainer's); the engine runs on
    `engine_config`, whose kernel layout may differ: the (cast) weights are re-laid out once per
    parameter version (`prepare_params`; see `default_kernel_layout`).

    `prefix_cache` (default): each call prefills every distinct context once and every distinct
    (context, task) pair once, on top of the context's keys/values, then broadcasts the pair
    caches to the rows that share them (`engine.prefill_shared`); context and task widths are
    buckets of the real lengths (`prefix_buckets`, `task_buckets`), not the bank's `max_len`.
    False: every row prefills its whole padded prompt (`engine.prefill`; the reference path).

    `context_cache` (slots, 0 = off; needs `prefix_cache`): contexts' keys/values are also kept
    across calls for the current parameter version (`ContextCache`, least recently used out),
    so a call prefills only the contexts it has not seen under these params
    (`engine.prefill_stored`). Not used for `sharding=` calls (multi-host), which prefill their
    contexts per call.
    """

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Any,
        *,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        task_buckets: Sequence[int] = DEFAULT_TASK_BUCKETS,
        cast_params: bool = True,
        kernel_layout: str = "auto",
        prefix_cache: bool = True,
        prefix_buckets: Sequence[int] = DEFAULT_PREFIX_BUCKETS,
        context_cache: int = DEFAULT_CONTEXT_SLOTS,
    ) -> None:
        if len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"Tokenizer has {len(tokenizer)} tokens but model {config.name!r} has "
                f"vocab_size={config.vocab_size}; pair the model with its own tokenizer"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no eos_token_id; set one so decoding can stop")
        self.config = config
        self.tokenizer = tokenizer
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.task_buckets = tuple(sorted(task_buckets))
        self.cast_params = cast_params
        layout = default_kernel_layout() if kernel_layout == "auto" else kernel_layout
        if layout not in ("in_out", "out_in"):
            raise ValueError(f"kernel_layout={kernel_layout!r}; use 'auto', 'in_out' or 'out_in'")
        self.engine_config = config.replace(kernel_layout=layout)
        self.prefix_cache = prefix_cache
        self.prefix_buckets = tuple(sorted(prefix_buckets))
        if context_cache < 0:
            raise ValueError(f"context_cache={context_cache}; use a slot count >= 0 (0 = off)")
        self.context_cache = ContextCache(context_cache) if context_cache else None
        self._raw_bank: PromptBank | None = None
        self._prepared: tuple[list[Any], PreparedParams] | None = None

    def prepare_params(self, params: Any) -> PreparedParams:
        """The caller's params as the engine reads them: matrices cast to the compute dtype
        (`cast_params`) and kernels in `engine_config.kernel_layout` (a no-op when both hold).

        Memoised on the identity of the params' arrays: calls with the same arrays (a GEPA
        round's many evaluations on frozen θ) prepare once; a train update makes new arrays.
        """
        if isinstance(params, PreparedParams):
            if params.config != self.engine_config:
                raise ValueError(
                    "PreparedParams were made for another engine config (dtype/kernel layout); "
                    "prepare them with this sampler's prepare_params"
                )
            return params
        leaves = jax.tree.leaves(params)
        memo = self._prepared
        same = memo is not None and len(memo[0]) == len(leaves)
        if same and all(a is b for a, b in zip(memo[0], leaves)):
            return memo[1]
        self._prepared = None  # drop the old version before making the new one
        out = params
        if self.cast_params:
            out = cast_params_for_sampling(self.config, out)
        if self.engine_config.kernel_layout != self.config.kernel_layout:
            out = _to_layout(self.config, out, self.engine_config.kernel_layout)
        prepared = PreparedParams(out, self.engine_config)
        self._prepared = (leaves, prepared)
        return prepared

    def release_prepared(self) -> None:
        """Forgets the memoised prepared weights and the memo's hold on their source arrays, so
        neither outlives a train update that replaces them (the next call prepares anew)."""
        self._prepared = None

    # -------------------------------------------------------------- host-side encoding

    def encode_tasks(self, bank: PromptBank, tasks: Sequence[str]) -> TaskTokens:
        """Tokenise task texts once (as the bank's template places them) into a task bucket."""
        self._check_bank(bank)
        if isinstance(tasks, str):
            raise ValueError("tasks must be a sequence of strings, not one string")
        rows = [bank.layout.encode_task(t) for t in tasks]
        return self.pad_tasks(rows)

    def pad_tasks(self, rows: Sequence[Sequence[int]]) -> TaskTokens:
        """Already-tokenised rows → TaskTokens padded to the task bucket."""
        if not rows:
            raise ValueError("Empty batch: pass at least one task")
        longest = max(len(r) for r in rows)
        if min(len(r) for r in rows) == 0:
            raise ValueError("A task has zero tokens; every row needs a non-empty task")
        lt = _bucket(longest, self.task_buckets, "Task length (tokens)")
        tokens = np.full((len(rows), lt), self._pad_id(), np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        lengths = np.asarray([len(r) for r in rows], np.int32)
        return TaskTokens(tokens, lengths, self.fingerprint)

    def _pad_id(self) -> int:
        t = self.tokenizer
        return int(t.pad_token_id if t.pad_token_id is not None else t.eos_token_id)

    def _check_bank(self, bank: PromptBank) -> None:
        if bank.fingerprint != self.fingerprint:
            raise ValueError(
                "The prompt bank was built with a different tokenizer/chat template than this "
                "sampler's; rebuild it with build_bank(sampler.tokenizer, ...)"
            )

    def stop_ids(self, sampling: SamplingParams) -> tuple[int, ...]:
        eos = () if sampling.ignore_eos else (int(self.tokenizer.eos_token_id),)
        return tuple(sorted({*eos, *sampling.stop_token_ids}))

    # -------------------------------------------------------------- sampling

    def sample(
        self,
        params: Any,
        bank: PromptBank,
        prompt_idx: Any,
        tasks: Sequence[str] | TaskTokens,
        key: jax.Array,
        sampling: SamplingParams,
        *,
        row_ids: Any = None,
        timings: dict[str, float] | None = None,
        sharding: jax.sharding.Sharding | None = None,
    ) -> Rollouts:
        """Sample one completion per row: row b's prompt = bank row prompt_idx[b] + task b.

        row_ids int[B] (default 0..B-1) is folded into `key` per row, so a row's sample depends
        only on (key, its row id, its prompt) — not on the rest of the batch.
        `timings`, if given, receives prefill_s / decode_s / steps (adds two host syncs).

        `sharding` (a batch sharding on the params' mesh; multi-host runs): every process passes
        the same whole batch, the rows are split into one block per batch shard
        (`fst_jax.rows.row_blocks`), and each process decodes only the rows its devices
        sampled: the result holds this process's rows [lo, hi) = `row_range`, as host arrays.
        """
        call = self._prepare(params, bank, prompt_idx, tasks, sampling, row_ids, sharding, timings)
        params, fn, fixed, rows, fills, n = call
        if sharding is not None:
            return self._sample_sharded(
                params, fn, fixed, rows, (*fills, -1), key, sampling, sharding, timings
            )
        out = self._run(params, sampling, key, timings, fn, *self._padded(fixed, rows, fills))
        return self._host_rollouts(out, n)

    def sample_stream(
        self,
        params: Any,
        bank: PromptBank,
        prompt_idx: Any,
        tasks: Sequence[str] | TaskTokens,
        key: jax.Array,
        sampling: SamplingParams,
        *,
        row_ids: Any = None,
        chunk: int = 16,
        prefetch: bool = True,
    ) -> SampleStream:
        """`sample`, decoded `chunk` steps per jitted call: iterate the returned `SampleStream`
        for each chunk's new tokens per row, then `.result()` is the `Rollouts` that `sample`
        returns for the same inputs (bit for bit). Single-process batches only (no sharding)."""
        chunk = check_chunk(chunk)
        call = self._prepare(params, bank, prompt_idx, tasks, sampling, row_ids, None, None)
        params, fn, fixed, rows, fills, n = call
        weights, state = self._start(params, sampling, key, fn, *self._padded(fixed, rows, fills))
        pad_id, stop_ids = self._pad_id(), self.stop_ids(sampling)
        return SampleStream(
            self._host_rollouts, self.engine_config, weights, state, n, sampling, pad_id,
            stop_ids, chunk=chunk, prefetch=prefetch,
        )  # fmt: skip

    def _prepare(
        self,
        params: Any,
        bank: PromptBank,
        prompt_idx: Any,
        tasks: Sequence[str] | TaskTokens,
        sampling: SamplingParams,
        row_ids: Any,
        sharding: jax.sharding.Sharding | None,
        timings: dict[str, float] | None,
    ) -> tuple[Any, Any, tuple[Any, ...], tuple[np.ndarray, ...], tuple[Any, ...], int]:
        """Host checks + inputs of one call: (params, prefill fn, the inputs every row shares,
        the per-row inputs with their padding fills, batch size)."""
        self._check_bank(bank)
        if not isinstance(tasks, TaskTokens):
            tasks = self.encode_tasks(bank, tasks)
        if tasks.fingerprint != self.fingerprint:
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
        if total + sampling.max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(
                f"Prompt bucket {total} + max_new_tokens {sampling.max_new_tokens} exceeds the "
                f"model's max_position_embeddings={self.config.max_position_embeddings}; use "
                "shorter buckets / bank max_len or fewer new tokens"
            )

        if self.prefix_cache:
            fixed, row_pair = self._shared_inputs(bank, idx, tasks)
            fn, rows, fills = engine.prefill_shared, (row_pair,), (0,)
            if self.context_cache is not None:
                params = self.prepare_params(params)
                stored = self._stored(params, bank, idx, fixed, sharding, timings)
                if stored is not None:  # None: more contexts than slots
                    fixed, fn = stored, engine.prefill_stored
        else:
            fixed = (bank.table, bank.lengths, bank.suffix, bank.suffix_length)
            fn = engine.prefill
            rows, fills = (idx, tasks.tokens, tasks.lengths), (bank.no_context, 0, 1)
        return params, fn, fixed, (*rows, rid.astype(np.int32)), fills, n

    def _padded(
        self, fixed: tuple[Any, ...], rows: tuple[np.ndarray, ...], fills: tuple[Any, ...]
    ) -> list[Any]:
        """`_prepare`'s inputs as device arguments, rows padded to the batch bucket (padding
        rows get row ids -1, -2, ...)."""
        n = rows[0].shape[0]
        pad = _batch_bucket(n, self.batch_buckets) - n
        padded = [
            np.concatenate([x, np.full((pad, *x.shape[1:]), f, x.dtype)])
            for x, f in zip(rows[:-1], fills)
        ]
        padded.append(np.concatenate([rows[-1], -1 - np.arange(pad, dtype=np.int32)]))
        fixed = tuple(jnp.asarray(x) if isinstance(x, np.ndarray) else x for x in fixed)
        return [*fixed, *(jnp.asarray(x) for x in padded)]

    def _host_rollouts(self, out: dict[str, jax.Array], n: int) -> Rollouts:
        """The first n rows of a layout dict (the rest is bucket padding) as `Rollouts`."""
        if out["tokens"].shape[0] != n:
            out = {k: v[:n] for k, v in out.items()}
        gen, gen_len = jax.device_get((out["completion_tokens"], out["completion_lengths"]))
        return self._rollouts(out, np.asarray(gen), gen_len)

    def _shared_inputs(
        self, bank: PromptBank, idx: np.ndarray, tasks: TaskTokens
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
        cb, ub = (_batch_bucket(m, self.batch_buckets) for m in (c, u))
        lens = bank.lengths_host[ctx_ids]
        longest = max(int(lens.max()), 1)
        lp = bank.max_len
        if longest <= self.prefix_buckets[-1]:
            lp = min(_bucket(longest, self.prefix_buckets, "Context length"), bank.max_len)
        pad_id = self._pad_id()
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

    def _stored(
        self,
        prepared: PreparedParams,
        bank: PromptBank,
        idx: np.ndarray,
        fixed: tuple[Any, ...],
        sharding: jax.sharding.Sharding | None = None,
        timings: dict[str, float] | None = None,
    ) -> tuple[Any, ...] | None:
        """`prefill_stored`'s inputs: the context store and each context's slot, after
        prefilling the contexts the store lacks (`fixed` as made by `_shared_inputs`); None
        when the call has more distinct contexts than the cache has slots. `timings` gets
        context_store_s (the prefill of the new contexts; `_run` adds it to prefill_s)."""
        cache = self.context_cache
        assert cache is not None
        ctx_ids = np.unique(idx)
        lens = bank.lengths_host[ctx_ids]
        table = bank.host_table()
        keys = [table[c, :n].tobytes() for c, n in zip(ctx_ids, lens)]
        width = table.shape[1]
        rep = None  # sharded calls: the store is replicated over the mesh, like the bank
        if isinstance(sharding, jax.sharding.NamedSharding):
            rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        got = cache.assign(prepared, self.engine_config, width, keys, rep)
        if got is None:
            return None
        store, slots, missing = got
        if missing:
            m = len(missing)
            mb = _batch_bucket(m, self.batch_buckets)
            longest = max(int(lens[missing].max()), 1)
            lm = width
            if longest <= self.prefix_buckets[-1]:
                lm = min(_bucket(longest, self.prefix_buckets, "Context length"), width)
            tok = np.full((mb, lm), self._pad_id(), np.int32)
            tok[:m] = table[ctx_ids[missing], :lm]
            mlen = np.zeros((mb,), np.int32)
            mlen[:m] = lens[missing]
            dst = np.full((mb,), cache.slots, np.int32)  # padding rows: dropped
            dst[:m] = slots[missing]
            args = (tok, mlen, dst)
            if rep is not None:
                args = tuple(_replicated(x, rep) for x in args)
            t0 = time.perf_counter()
            try:
                store = engine.store_contexts(self.engine_config, prepared.params, store, *args)
                if timings is not None:
                    jax.block_until_ready(store)
                    timings["context_store_s"] = time.perf_counter() - t0
            except BaseException:
                cache.clear()  # the keys were assigned but not filled (and the store donated)
                raise
            cache.update(width, store, rep)
        ctx_slots = np.full((fixed[0].shape[0],), slots[0], np.int32)  # bucket padding
        ctx_slots[: len(slots)] = slots
        return (store, ctx_slots, *fixed)

    def _rollouts(
        self, out: dict[str, Any], gen: np.ndarray, gen_len: np.ndarray, **extra: Any
    ) -> Rollouts:
        """`Rollouts` from a layout dict, the host completion tokens decoded to text once."""
        texts = self.tokenizer.batch_decode(
            [row[:m].tolist() for row, m in zip(gen, gen_len)], skip_special_tokens=True
        )
        fields = (
            "tokens", "positions", "completion_mask", "logps", "raw_logps", "prompt_lengths",
            "completion_lengths", "finished",
        )  # fmt: skip
        return Rollouts(
            **{k: out[k] for k in fields}, completion_tokens=gen, texts=list(texts), **extra
        )

    def _run(
        self,
        params: Any,
        sampling: SamplingParams,
        key: jax.Array,
        timings: dict[str, float] | None,
        prefill_fn: Any,
        *args: jax.Array,
    ) -> dict[str, jax.Array]:
        """The jitted prefill (`prefill_fn` on `args`) + decode + layout; shared by the
        single-array and the per-shard-block paths."""
        t0 = time.perf_counter()
        weights, state = self._start(params, sampling, key, prefill_fn, *args)
        pad_id, stop_ids = self._pad_id(), self.stop_ids(sampling)
        if timings is not None:
            jax.block_until_ready(state)
            t1 = time.perf_counter()
        state = engine.decode(self.engine_config, sampling, pad_id, stop_ids, weights, state)
        if timings is not None:
            timings["steps"] = int(jax.block_until_ready(state).step)
            timings["prefill_s"] = t1 - t0 + timings.pop("context_store_s", 0.0)
            timings["decode_s"] = time.perf_counter() - t1
        return engine.finalize(state, pad_id=pad_id)

    def _start(
        self, params: Any, sampling: SamplingParams, key: jax.Array, prefill_fn: Any, *args: Any
    ) -> tuple[Any, engine.DecodeState]:
        """(engine weights, the decode state after the jitted prefill `prefill_fn` on `args`)."""
        weights = self.prepare_params(params).params
        pad_id, stop_ids = self._pad_id(), self.stop_ids(sampling)
        state = prefill_fn(self.engine_config, sampling, pad_id, stop_ids, weights, *args, key)
        return weights, state

    def _sample_sharded(
        self,
        params: Any,
        prefill_fn: Any,
        fixed: tuple[Any, ...],
        rows: tuple[np.ndarray, ...],
        fills: tuple[Any, ...],
        key: jax.Array,
        sampling: SamplingParams,
        sharding: jax.sharding.Sharding,
        timings: dict[str, float] | None = None,
    ) -> Rollouts:
        """`sample` with the batch split into per-shard blocks; returns this process's rows.

        `rows` (per-row inputs, padded with `fills`) are laid out over the batch shards; the
        `fixed` inputs (bank or deduplicated contexts/pairs) are replicated on the mesh."""
        n = rows[0].shape[0]
        plan = row_blocks(n, sharding, bucket=lambda m: _batch_bucket(m, self.batch_buckets))
        lo, hi = plan.lo, plan.hi
        local = [plan.pad_local(x[lo:hi], f) for x, f in zip(rows, fills)]
        row_g = [plan.to_global(x, sharding) for x in local]
        fixed_g = [_replicated(x, sharding) for x in fixed]
        out = self._run(params, sampling, key, timings, prefill_fn, *fixed_g, *row_g)
        start, stop = plan.local_padded_range
        host = {k: plan.unpad_local(rows_of(v, start, stop)) for k, v in out.items()}
        gen, gen_len = host["completion_tokens"], host["completion_lengths"]
        return self._rollouts(host, gen, gen_len, row_range=(lo, hi))

    def generate_chat(
        self,
        params: Any,
        conversations: Sequence[Sequence[dict[str, str]]],
        sampling: SamplingParams,
        key: jax.Array,
    ) -> list[str]:
        """Reply to each chat (list of {"role", "content"} messages) using the chat template."""
        if not conversations:
            raise ValueError("No conversations given")
        rows = []
        for i, conv in enumerate(conversations):
            if not conv or not all(isinstance(m, dict) and "role" in m for m in conv):
                raise ValueError(
                    f"Conversation {i} must be a non-empty list of {{'role', 'content'}} dicts"
                )
            text = self.tokenizer.apply_chat_template(
                list(conv), tokenize=False, add_generation_prompt=True
            )
            rows.append(list(self.tokenizer.encode(text, add_special_tokens=False)))
        if self._raw_bank is None:
            self._raw_bank = raw_bank(self.tokenizer)
        bank = self._raw_bank
        idx = np.full((len(rows),), bank.no_context, np.int32)
        return self.sample(params, bank, idx, self.pad_tasks(rows), key, sampling).texts


def generate_chat(
    config: ModelConfig,
    params: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    sampling: SamplingParams | None = None,
    key: jax.Array | None = None,
) -> list[str]:
    """List of chat message lists → list of reply strings (one jitted sampler call).

    Defaults: temperature 1.0, 256 new tokens, key PRNGKey(0).
    """
    sampling = sampling or SamplingParams(max_new_tokens=256)
    key = jax.random.PRNGKey(0) if key is None else key
    return Sampler(config, tokenizer).generate_chat(params, conversations, sampling, key)
