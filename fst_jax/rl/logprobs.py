"""Per-token log-probs, entropy and full-vocabulary KL, with the vocab projection chunked.

The trainer never materialises `[B, S, V]` logits: the decoder returns hidden states, and the
unembedding runs over sequence chunks inside `lax.map` with `jax.checkpoint`, so the backward
pass recomputes one chunk's logits at a time (peak extra memory `B × chunk × V`).

Layout (training layout, see the RL batch): a per-token quantity sits at the index of the token
it scores, so index t uses the hidden state at t − 1; index 0 is always 0 (it is a prompt token).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fst_jax.models.config import ModelConfig
from fst_jax.models.decoder import forward, unembed


def shift_hidden(hidden_bsd: jax.Array) -> jax.Array:
    """hidden[:, t-1] moved to index t (zeros at t=0): aligns states with the token they score."""
    return jnp.pad(hidden_bsd[:, :-1], ((0, 0), (1, 0), (0, 0)))


def _chunked(
    fn: Callable[..., tuple[jax.Array, ...]], arrays: tuple[jax.Array, ...], chunk: int
) -> tuple[jax.Array, ...]:
    """Apply `fn` to sequence chunks of [B, S, ...] arrays under remat; re-join to [B, S]."""
    b, s = arrays[0].shape[:2]
    chunk = max(1, min(chunk, s))
    n = -(-s // chunk)
    pad = n * chunk - s

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(b, n, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    outs = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), tuple(split(x) for x in arrays))
    return tuple(jnp.moveaxis(o, 0, 1).reshape(b, n * chunk)[:, :s] for o in outs)


def logps_from_hidden(
    config: ModelConfig,
    params: Any,
    hidden_bsd: jax.Array,
    tokens_bs: jax.Array,
    *,
    chunk: int = 128,
    with_entropy: bool = True,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(log π(tokens[b, t] | <t), entropy of π(· | <t)) both f32[B, S], computed chunk-wise.

    `temperature` divides the logits first: the trainer's π is the sampler's distribution
    (temperature applied, no top-k/top-p), so an on-policy importance ratio is 1. The entropy is
    a metric: it is computed from stop-gradient logits.
    """
    h = shift_hidden(hidden_bsd)

    def piece(h_c, y_c):
        logits = unembed(config, params, h_c)  # [B, C, V] f32
        if temperature != 1.0:
            logits = logits / jnp.float32(temperature)
        lse = jax.nn.logsumexp(logits, axis=-1)
        lp = jnp.take_along_axis(logits, y_c[..., None], axis=-1)[..., 0] - lse
        if not with_entropy:
            return lp, jnp.zeros_like(lp)
        sl = jax.lax.stop_gradient(logits)
        p = jax.nn.softmax(sl, axis=-1)
        ent = jax.lax.stop_gradient(lse) - jnp.sum(p * sl, axis=-1)
        return lp, ent

    lp, ent = _chunked(piece, (h, tokens_bs), chunk)
    return lp.at[:, 0].set(0.0), ent.at[:, 0].set(0.0)


def token_logps(
    config: ModelConfig,
    params: Any,
    tokens_bs: jax.Array,
    positions_bs: jax.Array,
    *,
    chunk: int = 128,
    with_entropy: bool = True,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Forward + chunked log-probs of each token given its prefix; see `logps_from_hidden`."""
    hidden, _ = forward(config, params, tokens_bs, positions_bs, return_hidden=True)
    return logps_from_hidden(
        config, params, hidden, tokens_bs, chunk=chunk, with_entropy=with_entropy,
        temperature=temperature,
    )  # fmt: skip


def full_kl_from_hidden(
    config: ModelConfig,
    params_p: Any,
    hidden_p: jax.Array,
    params_q: Any,
    hidden_q: jax.Array,
    *,
    chunk: int = 128,
) -> jax.Array:
    """Exact per-position KL(p ‖ q) over the full vocabulary, f32[B, S], chunked.

    Both hidden states must already be shifted/aligned so index t predicts token t. Gradients
    flow into whichever of p/q is not wrapped in stop-gradient by the caller.
    """

    def piece(hp, hq):
        lp = jax.nn.log_softmax(unembed(config, params_p, hp), axis=-1)
        lq = jax.nn.log_softmax(unembed(config, params_q, hq), axis=-1)
        return (jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1),)

    (kl,) = _chunked(piece, (hidden_p, hidden_q), chunk)
    return kl


def align_teacher_hidden(
    teacher_hidden_btd: jax.Array, offsets_b: jax.Array, student_len: int
) -> jax.Array:
    """Teacher states re-indexed to the student layout: out[b, t] = shifted_teacher[b, t + off_b].

    Both views hold the same completion tokens; the teacher's prompt (with the context φ) is
    `off_b` tokens longer, so the completion starts `off_b` later in the teacher row.
    """
    h = shift_hidden(teacher_hidden_btd)
    idx = jnp.arange(student_len)[None, :] + offsets_b[:, None]
    idx = jnp.clip(idx, 0, h.shape[1] - 1)
    return jnp.take_along_axis(h, idx[..., None], axis=1)
