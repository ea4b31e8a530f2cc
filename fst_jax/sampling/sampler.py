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

The host-side batch assembly (buckets, input checks, context/pair dedup) is in
`fst_jax.sampling.batching`, the weight preparation (cast, kernel layout) in
`fst_jax.sampling.weights`; the names they took from here are re-exported.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fst_jax.models.config import ModelConfig
from fst_jax.rows import row_blocks, rows_of
from fst_jax.sampling import batching, engine

# Re-exported: names this module held before batching.py and weights.py were split off.
from fst_jax.sampling.batching import (
    DEFAULT_BATCH_BUCKETS,
    DEFAULT_PREFIX_BUCKETS,
    DEFAULT_TASK_BUCKETS,
    TaskTokens,
)
from fst_jax.sampling.batching import batch_bucket as _batch_bucket
from fst_jax.sampling.batching import bucket as _bucket  # noqa: F401
from fst_jax.sampling.batching import replicated as _replicated
from fst_jax.sampling.context_cache import ContextCache
from fst_jax.sampling.prompt_bank import PromptBank, raw_bank, tokenizer_fingerprint
from fst_jax.sampling.select import SamplingParams
from fst_jax.sampling.stream import SampleStream, check_chunk
from fst_jax.sampling.weights import (  # noqa: F401
    PreparedParams,
    _cast_tree,
    _to_layout,
    cast_params_for_sampling,
    default_kernel_layout,
    prepare_weights,
)

# Contexts kept across calls: an RL step's K contexts + the no-context row, a GEPA candidate
# between its minibatch and anchor evaluations, the evaluation's best prompt.
DEFAULT_CONTEXT_SLOTS = 16


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
        prepared = prepare_weights(self.config, self.engine_config, params, cast=self.cast_params)
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
        return batching.pad_task_rows(rows, self.task_buckets, self._pad_id(), self.fingerprint)

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
        idx, rid, n = batching.check_call(
            bank, prompt_idx, tasks, row_ids, sampling, fingerprint=self.fingerprint,
            max_positions=self.config.max_position_embeddings,
        )  # fmt: skip
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
        return params, fn, fixed, (*rows, rid), fills, n

    def _padded(
        self, fixed: tuple[Any, ...], rows: tuple[np.ndarray, ...], fills: tuple[Any, ...]
    ) -> list[Any]:
        """`_prepare`'s inputs as device arguments, rows padded to the batch bucket (padding
        rows get row ids -1, -2, ...)."""
        return batching.padded_args(fixed, rows, fills, self.batch_buckets)

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
        return batching.shared_inputs(
            bank, idx, tasks, batch_buckets=self.batch_buckets,
            prefix_buckets=self.prefix_buckets, pad_id=self._pad_id(),
        )  # fmt: skip

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
        assert self.context_cache is not None
        return self.context_cache.stored_inputs(
            prepared, self.engine_config, bank, idx, fixed, sharding=sharding, timings=timings,
            batch_buckets=self.batch_buckets, prefix_buckets=self.prefix_buckets,
            pad_id=self._pad_id(),
        )  # fmt: skip

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
