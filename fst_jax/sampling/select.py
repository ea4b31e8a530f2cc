"""Token selection: greedy / temperature / top-k / top-p, with the log-probs RL needs.

Two log-probs come back for every selected token, and they mean different things:

* `logp`     — log-prob under the *sampling* distribution actually used (logits / temperature,
               then the top-k and top-p truncation, renormalised). This is the behaviour policy's
               log-prob, i.e. the "old" log-prob of CISPO/PPO importance ratios when the trainer
               applies the same temperature/truncation. For `greedy` the sampling distribution
               is degenerate (a point mass), so `logp` falls back to the raw log-prob below.
* `raw_logp` — log-prob under the temperature-scaled but untruncated model distribution,
               `log_softmax(logits / temperature)`: exactly what the trainer computes (it scales
               its logits by the sampling temperature, `rl.RLConfig.temperature`, as verl does),
               so it is the RL π_old and an on-policy importance ratio is 1. Truncation (top-k /
               top-p) is deliberately left out of π_old, as in verl and TRL. At temperature 1 (and
               for greedy) it is the plain `log_softmax(forward(...))`.

Sampling draws ONE uniform per row from a per-row key and inverts the CDF of the (truncated)
distribution, which is far cheaper on CPU than a Gumbel draw over the whole vocabulary and keeps a
row's draw independent of every other row in the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. Frozen and hashable: a static jit argument (changing it recompiles).

    temperature: > 0; ignored when greedy. top_k: 0 = off. top_p: 1.0 = off (nucleus: keep the
    smallest set of most-likely tokens whose mass reaches top_p; the top token is always kept).
    max_new_tokens: generation budget (static; the completion buffer has exactly this length).
    stop_token_ids: extra stop tokens besides the tokenizer's EOS.
    ignore_eos: never stop on EOS (only on stop_token_ids): fixed-length runs for benchmarks.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and not self.temperature > 0:
            raise ValueError(
                f"temperature={self.temperature} must be > 0; use greedy=True for argmax decoding"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1.0 disables top-p)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    def replace(self, **kwargs) -> SamplingParams:
        return dataclasses.replace(self, **kwargs)


def step_keys(row_keys: jax.Array, step: jax.Array) -> jax.Array:
    """Per-row key for decode step `step`: depends only on (row key, step)."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)


def row_keys_from(key: jax.Array, row_ids: jax.Array) -> jax.Array:
    """Per-row keys: the call's key folded with each row's id (batch-composition invariant)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, row_ids)


def truncated_logits(logits: jax.Array, sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """Apply temperature, top-k, top-p to logits [B, V].

    Returns (candidate logits [B, K] with -inf for removed entries, candidate token ids [B, K]);
    K = V without truncation (ids are then the identity), K = top_k with top-k.
    """
    b, v = logits.shape
    z = logits / jnp.float32(sampling.temperature)
    if sampling.top_k > 0 and sampling.top_k < v:
        vals, ids = jax.lax.top_k(z, sampling.top_k)
    elif sampling.top_p < 1.0:
        vals, ids = jax.lax.top_k(z, v)  # full descending sort, needed for the nucleus
    else:
        return z, jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, v))
    if sampling.top_p < 1.0:
        probs = jax.nn.softmax(vals, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumulative mass
        keep = mass_before < jnp.float32(sampling.top_p)
        keep = keep.at[:, 0].set(True)
        vals = jnp.where(keep, vals, -jnp.inf)
    return vals, ids.astype(jnp.int32)


def _inverse_cdf(logp: jax.Array, keys: jax.Array) -> jax.Array:
    """One draw per row from exp(logp) [B, K] by inverting the CDF with one uniform per row."""
    probs = jnp.exp(logp)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    # target < cdf[-1] strictly, so the first index with cdf >= target has non-zero mass.
    target = u * cdf[:, -1]
    choice = jnp.sum((cdf <= target[:, None]).astype(jnp.int32), axis=-1)
    return jnp.minimum(choice, logp.shape[-1] - 1)


def select_tokens(
    logits: jax.Array, keys: jax.Array, sampling: SamplingParams
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """logits [B, V] f32, keys [B] → (tokens int32[B], logp f32[B], raw_logp f32[B])."""
    logits = logits.astype(jnp.float32)
    scale = 1.0 if sampling.greedy else jnp.float32(sampling.temperature)
    raw_all = jax.nn.log_softmax(logits / scale, axis=-1)
    if sampling.greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        raw = jnp.take_along_axis(raw_all, tokens[:, None], axis=-1)[:, 0]
        return tokens, raw, raw
    vals, ids = truncated_logits(logits, sampling)
    logp_all = jax.nn.log_softmax(vals, axis=-1)
    choice = _inverse_cdf(logp_all, keys)
    tokens = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
    logp = jnp.take_along_axis(logp_all, choice[:, None], axis=-1)[:, 0]
    raw = jnp.take_along_axis(raw_all, tokens[:, None], axis=-1)[:, 0]
    return tokens, logp, raw
