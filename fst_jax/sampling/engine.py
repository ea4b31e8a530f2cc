"""Pure jitted sampling core: prompt composition, prefill, `lax.while_loop` decode, layout.

The jitted functions, all pure:

* `prefill(...)` gathers each row's prompt from the bank on device (`compose_prompts`), runs the
  padded prompt block through the decoder into a fresh fixed-size KV cache, and samples the first
  token from each row's last prompt position.
* `prefill_shared(...)` does the same from deduplicated inputs: each distinct context (bank row)
  is prefilled once, each distinct (context, task) pair's task + suffix once on top of its
  context's cached keys/values, and the pair caches are broadcast to the rows that share them
  (an RL step's G/K rollouts of one problem and context).
* `prefill_stored(...)` is `prefill_shared` with the contexts' keys/values read from a context
  store (slots of prefilled contexts kept across calls for one parameter version, filled by
  `store_contexts`; see `fst_jax.sampling.context_cache`). The sampler uses it by default.
* `decode(...)` (state donated, so the cache is updated in place) runs one-token decoder steps in a
  `lax.while_loop` until every row has emitted a stop token or `max_new_tokens` tokens.
* `decode_chunk(...)` runs the same loop body for at most `chunk` steps per call, carrying the
  state between calls (token streaming; `fst_jax.sampling.stream`).
* `finalize(state)` assembles the RL "training layout" (see `training_layout`).

Position-based masking in the decoder makes prompt padding free: padded slots have position -1
and are never attended to, and every row's decode tokens carry the row's own positions even though
all rows write the same cache slot. All shapes are static (bank, task bucket, batch bucket,
max_new_tokens), so new bank contents, indices or tasks never recompile.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from fst_jax.models import decoder
from fst_jax.models.config import ModelConfig
from fst_jax.sampling.select import SamplingParams, row_keys_from, select_tokens, step_keys


@flax.struct.dataclass
class DecodeState:
    """Carry of the decode loop ([B] = batch bucket, L = composed prompt, Tg = max_new_tokens)."""

    cache: Any
    prompt: jax.Array  # int32[B, L] composed prompts, right-padded
    prompt_len: jax.Array  # int32[B]
    gen: jax.Array  # int32[B, Tg] generated tokens (pad after a row stops)
    logps: jax.Array  # f32[B, Tg] log-probs under the sampling distribution
    raw_logps: jax.Array  # f32[B, Tg] log-probs at the temperature, untruncated (π_old)
    gen_len: jax.Array  # int32[B] tokens generated, including the stop token
    done: jax.Array  # bool[B] row emitted a stop token
    last: jax.Array  # int32[B] last generated token (input of the next step)
    step: jax.Array  # int32 scalar: tokens generated so far (all rows)
    row_keys: jax.Array  # [B] per-row PRNG keys


def compose_prompts(
    table: jax.Array,
    lengths: jax.Array,
    suffix: jax.Array,
    suffix_length: jax.Array,
    prompt_idx: jax.Array,
    task_tokens: jax.Array,
    task_lengths: jax.Array,
    pad_id: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """prefix[prompt_idx] ++ task ++ suffix per row → (tokens [B, L], positions [B, L], len [B]).

    L = Lp + Lt + Ls; rows are contiguous from column 0 and right-padded (position -1).
    """
    b, lt = task_tokens.shape
    lp, ls = table.shape[1], suffix.shape[0]
    prefix = jnp.take(table, prompt_idx, axis=0)
    plen = jnp.take(lengths, prompt_idx, axis=0)[:, None]
    tlen = task_lengths[:, None]
    buf = jnp.concatenate([prefix, task_tokens, jnp.broadcast_to(suffix, (b, ls))], axis=1)
    j = jnp.arange(lp + lt + ls, dtype=jnp.int32)[None, :]
    src = jnp.where(
        j < plen, j, jnp.where(j < plen + tlen, lp + j - plen, lp + lt + j - plen - tlen)
    )
    total = plen + tlen + suffix_length
    valid = j < total
    tokens = jnp.where(valid, jnp.take_along_axis(buf, jnp.where(valid, src, 0), axis=1), pad_id)
    positions = jnp.where(valid, j, -1)
    return tokens.astype(jnp.int32), positions.astype(jnp.int32), total[:, 0].astype(jnp.int32)


def _is_stop(tokens: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    hit = jnp.zeros(tokens.shape, bool)
    for s in stop_ids:
        hit = hit | (tokens == s)
    return hit


def _first_token_state(
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    cache: Any,
    prompt: jax.Array,
    prompt_len: jax.Array,
    logits: jax.Array,
    row_ids: jax.Array,
    key: jax.Array,
) -> DecodeState:
    """Sample each row's first token from its last-prompt-position logits [B, V] and start the
    decode carry (shared by every prefill variant)."""
    b, tg = prompt.shape[0], sampling.max_new_tokens
    row_keys = row_keys_from(key, row_ids)
    tok, logp, raw = select_tokens(logits, step_keys(row_keys, jnp.int32(0)), sampling)
    zeros = jnp.zeros((b, tg), jnp.float32)
    return DecodeState(
        cache=cache,
        prompt=prompt,
        prompt_len=prompt_len,
        gen=jnp.full((b, tg), pad_id, jnp.int32).at[:, 0].set(tok),
        logps=zeros.at[:, 0].set(logp),
        raw_logps=zeros.at[:, 0].set(raw),
        gen_len=jnp.ones((b,), jnp.int32),
        done=_is_stop(tok, stop_ids),
        last=tok,
        step=jnp.ones((), jnp.int32),
        row_keys=row_keys,
    )


@functools.partial(jax.jit, static_argnames=("config", "sampling", "pad_id", "stop_ids"))
def prefill(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    table: jax.Array,
    lengths: jax.Array,
    suffix: jax.Array,
    suffix_length: jax.Array,
    prompt_idx: jax.Array,
    task_tokens: jax.Array,
    task_lengths: jax.Array,
    row_ids: jax.Array,
    key: jax.Array,
) -> DecodeState:
    """Compose prompts, fill a fresh KV cache with them, sample each row's first token."""
    prompt, positions, plen = compose_prompts(
        table, lengths, suffix, suffix_length, prompt_idx, task_tokens, task_lengths, pad_id
    )
    b, length = prompt.shape
    cache = decoder.init_cache(config, b, length + sampling.max_new_tokens)
    hidden, cache = decoder.forward(config, params, prompt, positions, cache, return_hidden=True)
    last_hidden = jnp.take_along_axis(hidden, (plen - 1)[:, None, None], axis=1)[:, 0]
    logits = decoder.unembed(config, params, last_hidden)
    return _first_token_state(sampling, pad_id, stop_ids, cache, prompt, plen, logits, row_ids, key)


def _take_rows(config: ModelConfig, cache: Any, rows: jax.Array, extra: int) -> Any:
    """Cache rows `rows` (gathered, so rows may repeat) with `extra` empty slots appended."""
    axis = 1 if config.scan_layers else 0

    def kv(x: jax.Array) -> jax.Array:
        x = jnp.take(x, rows, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis + 1] = (0, extra)
        return jnp.pad(x, pad)

    pos = jnp.pad(jnp.take(cache["pos"], rows, axis=0), ((0, 0), (0, extra)), constant_values=-1)
    return {"layers": jax.tree.map(kv, cache["layers"]), "pos": pos, "index": cache["index"]}


def _context_cache(
    config: ModelConfig, params: Any, ctx_tokens: jax.Array, ctx_lengths: jax.Array
) -> Any:
    """Stage 1: a [C, Lp] cache of the contexts (columns past a context's length: position -1)."""
    c, lp = ctx_tokens.shape
    j = jnp.arange(lp, dtype=jnp.int32)[None, :]
    ctx_pos = jnp.where(j < ctx_lengths[:, None], j, -1)
    cache = decoder.init_cache(config, c, lp)
    _, cache = decoder.forward(config, params, ctx_tokens, ctx_pos, cache, return_hidden=True)
    return cache


def _prefill_on_contexts(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    cache: Any,
    ctx_tokens: jax.Array,
    ctx_lengths: jax.Array,
    suffix: jax.Array,
    suffix_length: jax.Array,
    pair_ctx: jax.Array,
    task_tokens: jax.Array,
    task_lengths: jax.Array,
    row_pair: jax.Array,
    row_ids: jax.Array,
    key: jax.Array,
) -> DecodeState:
    """Stages 2-3 of `prefill_shared` on a filled [C, Lp] context cache (index = Lp)."""
    u, lt = task_tokens.shape
    ls = suffix.shape[0]
    tg = sampling.max_new_tokens

    # Stage 2: task ++ suffix per pair, at positions after its context.
    plen = jnp.take(ctx_lengths, pair_ctx)[:, None]
    tlen = task_lengths[:, None]
    buf = jnp.concatenate([task_tokens, jnp.broadcast_to(suffix, (u, ls))], axis=1)
    q = jnp.arange(lt + ls, dtype=jnp.int32)[None, :]
    src = jnp.where(q < tlen, q, lt + q - tlen)
    qlen = tlen + suffix_length
    valid = q < qlen
    qtok = jnp.where(valid, jnp.take_along_axis(buf, jnp.where(valid, src, 0), axis=1), pad_id)
    qpos = jnp.where(valid, plen + q, -1).astype(jnp.int32)
    pair_cache = _take_rows(config, cache, pair_ctx, lt + ls)
    hidden, pair_cache = decoder.forward(
        config, params, qtok.astype(jnp.int32), qpos, pair_cache, return_hidden=True
    )
    last_hidden = jnp.take_along_axis(hidden, (qlen - 1)[:, :, None], axis=1)[:, 0]
    logits = decoder.unembed(config, params, last_hidden)  # [U, V]

    # Stage 3: rows.
    row_cache = _take_rows(config, pair_cache, row_pair, tg)
    prompt, _, prompt_len = compose_prompts(
        ctx_tokens, ctx_lengths, suffix, suffix_length, jnp.take(pair_ctx, row_pair),
        jnp.take(task_tokens, row_pair, axis=0), jnp.take(task_lengths, row_pair), pad_id,
    )  # fmt: skip
    row_logits = jnp.take(logits, row_pair, axis=0)
    return _first_token_state(
        sampling, pad_id, stop_ids, row_cache, prompt, prompt_len, row_logits, row_ids, key
    )


@functools.partial(jax.jit, static_argnames=("config", "sampling", "pad_id", "stop_ids"))
def prefill_shared(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    ctx_tokens: jax.Array,
    ctx_lengths: jax.Array,
    suffix: jax.Array,
    suffix_length: jax.Array,
    pair_ctx: jax.Array,
    task_tokens: jax.Array,
    task_lengths: jax.Array,
    row_pair: jax.Array,
    row_ids: jax.Array,
    key: jax.Array,
) -> DecodeState:
    """`prefill` with every context prefilled once and every (context, task) pair once.

    ctx_tokens int32[C, Lp] (the distinct bank rows in use, cut to a length bucket), pair_ctx
    int32[U] (each distinct (context, task) pair's context), task_tokens int32[U, Lt], row_pair
    int32[B] (each row's pair). Stage 1 fills a [C, Lp] cache with the contexts; stage 2 runs
    only each pair's task + suffix tokens, attending to its context's cached keys/values; stage 3
    broadcasts the pair caches to the B rows (G/K rows share one) and samples each row's first
    token with its own key. Same state as `prefill` (prompts composed contiguously), except that
    the cache holds the context in its first Lp slots (padding there has position -1).
    """
    cache = _context_cache(config, params, ctx_tokens, ctx_lengths)
    return _prefill_on_contexts(
        config, sampling, pad_id, stop_ids, params, cache, ctx_tokens, ctx_lengths, suffix,
        suffix_length, pair_ctx, task_tokens, task_lengths, row_pair, row_ids, key,
    )  # fmt: skip


# ----------------------------------------------------------------- context store (across calls)


@functools.partial(jax.jit, static_argnames=("config", "slots", "width", "sharding"))
def init_context_store(
    config: ModelConfig, slots: int, width: int, sharding: jax.sharding.Sharding | None = None
) -> Any:
    """An empty store of `slots` context caches, `width` columns each (every position -1),
    laid out with `sharding` (replicated over the mesh for sharded sampler calls) if given."""
    store = decoder.init_cache(config, slots, width)
    return store if sharding is None else jax.lax.with_sharding_constraint(store, sharding)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("store",))
def store_contexts(
    config: ModelConfig,
    params: Any,
    store: Any,
    ctx_tokens: jax.Array,
    ctx_lengths: jax.Array,
    slots: jax.Array,
) -> Any:
    """Prefill contexts int32[M, Lm] (stage 1 of `prefill_shared`) into store slots int32[M]
    (store updated in place: donated). Lm ≤ the store's width; a slot ≥ the store's size is
    dropped (batch padding)."""
    cache = _context_cache(config, params, ctx_tokens, ctx_lengths)
    width = store["pos"].shape[1]
    axis = 1 if config.scan_layers else 0
    extra = width - ctx_tokens.shape[1]

    def put(dst: jax.Array, src: jax.Array) -> jax.Array:
        pad = [(0, 0)] * src.ndim
        pad[axis + 1] = (0, extra)
        src = jnp.moveaxis(jnp.pad(src, pad), axis, 0)
        out = jnp.moveaxis(dst, axis, 0).at[slots].set(src, mode="drop")
        return jnp.moveaxis(out, 0, axis)

    pos = jnp.pad(cache["pos"], ((0, 0), (0, extra)), constant_values=-1)
    return {
        "layers": jax.tree.map(put, store["layers"], cache["layers"]),
        "pos": store["pos"].at[slots].set(pos, mode="drop"),
        "index": store["index"],
    }


@functools.partial(jax.jit, static_argnames=("config", "sampling", "pad_id", "stop_ids"))
def prefill_stored(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    store: Any,
    ctx_slots: jax.Array,
    ctx_tokens: jax.Array,
    ctx_lengths: jax.Array,
    suffix: jax.Array,
    suffix_length: jax.Array,
    pair_ctx: jax.Array,
    task_tokens: jax.Array,
    task_lengths: jax.Array,
    row_pair: jax.Array,
    row_ids: jax.Array,
    key: jax.Array,
) -> DecodeState:
    """`prefill_shared` with stage 1 read from a context store (`store_contexts`): context c's
    keys/values are store slot ctx_slots[c], cut to Lp = ctx_tokens' width; ctx_tokens are
    still passed to compose the prompts of the training layout."""
    lp = ctx_tokens.shape[1]
    axis = 1 if config.scan_layers else 0
    cache = _take_rows(config, store, ctx_slots, 0)
    cache = {
        "layers": jax.tree.map(
            lambda x: jax.lax.slice_in_dim(x, 0, lp, axis=axis + 1), cache["layers"]
        ),
        "pos": cache["pos"][:, :lp],
        "index": jnp.asarray(lp, jnp.int32),
    }
    return _prefill_on_contexts(
        config, sampling, pad_id, stop_ids, params, cache, ctx_tokens, ctx_lengths, suffix,
        suffix_length, pair_ctx, task_tokens, task_lengths, row_pair, row_ids, key,
    )  # fmt: skip


def _decode_step(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    s: DecodeState,
) -> DecodeState:
    pos = s.prompt_len + s.step - 1  # each row's position of `s.last`
    logits, cache = decoder.forward(config, params, s.last[:, None], pos[:, None], s.cache)
    tok, logp, raw = select_tokens(logits[:, 0], step_keys(s.row_keys, s.step), sampling)
    active = ~s.done
    tok = jnp.where(active, tok, pad_id)

    def put(buf: jax.Array, col: jax.Array) -> jax.Array:
        col = jnp.where(active, col, jnp.zeros_like(col)) if buf.dtype != jnp.int32 else col
        return jax.lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, s.step))

    return s.replace(
        cache=cache,
        gen=put(s.gen, tok),
        logps=put(s.logps, logp),
        raw_logps=put(s.raw_logps, raw),
        gen_len=s.gen_len + active.astype(jnp.int32),
        done=s.done | (active & _is_stop(tok, stop_ids)),
        last=tok,
        step=s.step + 1,
    )


def training_layout(s: DecodeState, pad_id: int) -> dict[str, jax.Array]:
    """The RL batch: [B, S = L + Tg] rows of prompt ++ completion, right-padded.

    logps / raw_logps are stored at the index of the token they score; completion_mask marks
    completion tokens (including the stop token when one was emitted).
    """
    b, length = s.prompt.shape
    tg = s.gen.shape[1]
    j = jnp.arange(length + tg, dtype=jnp.int32)[None, :]
    pl, cl = s.prompt_len[:, None], s.gen_len[:, None]
    in_prompt = j < pl
    in_comp = (j >= pl) & (j < pl + cl)
    pj = jnp.minimum(j, length - 1)
    gj = jnp.clip(j - pl, 0, tg - 1)

    def from_gen(buf: jax.Array, fill) -> jax.Array:
        return jnp.where(in_comp, jnp.take_along_axis(buf, gj, axis=1), fill)

    prompt_part = jnp.take_along_axis(s.prompt, jnp.broadcast_to(pj, (b, length + tg)), axis=1)
    tokens = jnp.where(in_prompt, prompt_part, from_gen(s.gen, pad_id))
    return {
        "tokens": tokens.astype(jnp.int32),
        "positions": jnp.where(in_prompt | in_comp, j, -1).astype(jnp.int32),
        "completion_mask": in_comp.astype(jnp.float32),
        "logps": from_gen(s.logps, 0.0).astype(jnp.float32),
        "raw_logps": from_gen(s.raw_logps, 0.0).astype(jnp.float32),
        "prompt_lengths": s.prompt_len,
        "completion_lengths": s.gen_len,
        "finished": s.done,
        "completion_tokens": s.gen,
    }


@functools.partial(
    jax.jit,
    static_argnames=("config", "sampling", "pad_id", "stop_ids"),
    donate_argnames=("state",),
)
def decode(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    state: DecodeState,
) -> DecodeState:
    """Decode until all rows stopped or `max_new_tokens` (state updated in place: donated)."""
    return _decode_loop(config, sampling, pad_id, stop_ids, params, state, sampling.max_new_tokens)


def _decode_loop(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    params: Any,
    state: DecodeState,
    limit: int | jax.Array,
) -> DecodeState:
    """`_decode_step` in a `lax.while_loop` until every row stopped or `step` reaches `limit`
    (≤ max_new_tokens): the one loop body both `decode` and `decode_chunk` run."""

    def cond(s: DecodeState) -> jax.Array:
        return (s.step < limit) & ~jnp.all(s.done)

    body = functools.partial(_decode_step, config, sampling, pad_id, stop_ids, params)
    return jax.lax.while_loop(cond, body, state)


def chunk_window(chunk: int, max_new_tokens: int) -> int:
    """Columns of `decode_chunk`'s token window: the chunk's new tokens plus the column before
    (so the first chunk also carries the prefill's first token), at most the whole buffer."""
    return min(chunk + 1, max_new_tokens)


@functools.partial(
    jax.jit,
    static_argnames=("config", "sampling", "pad_id", "stop_ids", "chunk"),
    donate_argnames=("state",),
)
def decode_chunk(
    config: ModelConfig,
    sampling: SamplingParams,
    pad_id: int,
    stop_ids: tuple[int, ...],
    chunk: int,
    params: Any,
    state: DecodeState,
) -> tuple[DecodeState, jax.Array]:
    """`decode` for at most `chunk` more steps (state donated), for streaming.

    Calling it until every row stopped or `max_new_tokens` is reached gives the same state as
    one `decode` call: the loop body is the same `_decode_step`, only the loop bound differs.
    Also returns what the host needs to emit the chunk, packed in ONE small int32 array (one
    transfer) [B, W + 4] with W = `chunk_window(chunk, max_new_tokens)`: columns [0, W) are
    `gen[:, start:start + W]`, then gen_len, done, step (after the chunk) and start, where
    start = clip(step before the chunk - 1, 0, max_new_tokens - W) — the window holds every
    column this chunk wrote and the column before it.
    """
    tg = sampling.max_new_tokens
    entry = state.step
    s = _decode_loop(
        config, sampling, pad_id, stop_ids, params, state, jnp.minimum(entry + chunk, tg)
    )
    b, w = s.gen.shape[0], chunk_window(chunk, tg)
    start = jnp.clip(entry - 1, 0, tg - w)
    window = jax.lax.dynamic_slice(s.gen, (jnp.zeros((), jnp.int32), start), (b, w))
    scalars = jnp.broadcast_to(jnp.stack([s.step, start]).astype(jnp.int32), (b, 2))
    info = jnp.concatenate(
        [window, s.gen_len[:, None], s.done[:, None].astype(jnp.int32), scalars], axis=1
    )
    return s, info


finalize = jax.jit(training_layout, static_argnames=("pad_id",))


def num_compilations() -> int:
    """Compiled variants held by the jitted entry points (for recompilation tests)."""
    return (
        prefill._cache_size()
        + prefill_shared._cache_size()
        + prefill_stored._cache_size()
        + init_context_store._cache_size()
        + store_contexts._cache_size()
        + decode._cache_size()
        + decode_chunk._cache_size()
        + finalize._cache_size()
    )
