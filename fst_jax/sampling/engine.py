"""Pure jitted sampling core: prompt composition, prefill, `lax.while_loop` decode, layout.

Two jitted functions, both pure:

* `prefill(...)` gathers each row's prompt from the bank on device (`compose_prompts`), runs the
  padded prompt block through the decoder into a fresh fixed-size KV cache, and samples the first
  token from each row's last prompt position.
* `decode(...)` (state donated, so the cache is updated in place) runs one-token decoder steps in a
  `lax.while_loop` until every row has emitted a stop token or `max_new_tokens` tokens.
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
    tg = sampling.max_new_tokens
    cache = decoder.init_cache(config, b, length + tg)
    hidden, cache = decoder.forward(config, params, prompt, positions, cache, return_hidden=True)
    last_hidden = jnp.take_along_axis(hidden, (plen - 1)[:, None, None], axis=1)[:, 0]
    logits = decoder.unembed(config, params, last_hidden)
    row_keys = row_keys_from(key, row_ids)
    tok, logp, raw = select_tokens(logits, step_keys(row_keys, jnp.int32(0)), sampling)
    zeros = jnp.zeros((b, tg), jnp.float32)
    return DecodeState(
        cache=cache,
        prompt=prompt,
        prompt_len=plen,
        gen=jnp.full((b, tg), pad_id, jnp.int32).at[:, 0].set(tok),
        logps=zeros.at[:, 0].set(logp),
        raw_logps=zeros.at[:, 0].set(raw),
        gen_len=jnp.ones((b,), jnp.int32),
        done=_is_stop(tok, stop_ids),
        last=tok,
        step=jnp.ones((), jnp.int32),
        row_keys=row_keys,
    )


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
    tg = sampling.max_new_tokens

    def cond(s: DecodeState) -> jax.Array:
        return (s.step < tg) & ~jnp.all(s.done)

    body = functools.partial(_decode_step, config, sampling, pad_id, stop_ids, params)
    return jax.lax.while_loop(cond, body, state)


finalize = jax.jit(training_layout, static_argnames=("pad_id",))


def num_compilations() -> int:
    """Compiled variants held by the two jitted entry points (for recompilation tests)."""
    return prefill._cache_size() + decode._cache_size() + finalize._cache_size()
