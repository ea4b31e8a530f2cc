"""KL(π_θ ‖ π_base) estimators and a jitted monitor, independent of any penalty in the loss.

With y ~ π_θ and log r = log π_base(y) − log π_θ(y) (Schulman, "Approximating KL divergence"):
  k1 = −log r                unbiased, can be negative per token
  k2 = ½ (log r)²            biased, low variance, ≥ 0
  k3 = (r − 1) − log r       unbiased, ≥ 0 (the usual in-loss "low-var KL")
`measure_kl` also reports the exact full-vocabulary token KL (`full`), computed chunked.

Memory: on XLA:CPU one `kl_sums` over 32 rows × 320 positions of SmolLM2-135M held ~5 GiB more
host memory while it ran (compiled or not; its compile-time temporaries say 0.8 GiB), which set
the default run's peak. `measure_kl` therefore runs `kl_sums` on row micro-batches of
`rows_per_chunk` inside one jitted loop and adds the sums: the same numbers up to summation order
(rows are independent), with memory bounded by the micro-batch, not by `eval.kl_examples`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from fst_jax import sharding
from fst_jax.models.config import ModelConfig
from fst_jax.models.decoder import forward
from fst_jax.rl.logprobs import full_kl_from_hidden, logps_from_hidden, shift_hidden

# log r is clamped before exp so a far-off token cannot overflow k3 (MiniMax/TRL practice).
LOG_RATIO_CLAMP = 20.0


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token KL(π ‖ π_ref) estimate from log-probs of tokens sampled from π."""
    log_r = jnp.clip(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    if estimator == "k3":
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"Unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


def kl_sums(
    config: ModelConfig,
    params: Any,
    base_params: Any,
    tokens: jax.Array,
    positions: jax.Array,
    completion_mask: jax.Array,
    *,
    chunk: int = 128,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """(sum, count) over completion tokens of k1/k2/k3 and the exact full-vocab KL."""
    h = forward(config, params, tokens, positions, return_hidden=True)[0]
    hb = forward(config, base_params, tokens, positions, return_hidden=True)[0]
    lp, _ = logps_from_hidden(config, params, h, tokens, chunk=chunk, with_entropy=False)
    lpb, _ = logps_from_hidden(config, base_params, hb, tokens, chunk=chunk, with_entropy=False)
    full = full_kl_from_hidden(
        config, params, shift_hidden(h), base_params, shift_hidden(hb), chunk=chunk
    )
    m = completion_mask.astype(jnp.float32)
    count = m.sum()
    out = {
        e: (jnp.sum(jnp.where(m > 0, kl_estimate(lp, lpb, e), 0.0)), count)
        for e in ("k1", "k2", "k3")
    }
    out["full"] = (jnp.sum(jnp.where(m > 0, full, 0.0)), count)
    return out


DEFAULT_ROWS_PER_CHUNK = 8


def micro_batch_rows(rows: int, rows_per_chunk: int, shards: int) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches) for `rows` rows: a multiple of the mesh's batch
    `shards` (each micro-batch stays split over every device), at most the batch itself."""
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk={rows_per_chunk}; use >= 1 rows per KL micro-batch")
    mb = -(-min(rows_per_chunk, rows) // shards) * shards
    return mb, -(-rows // mb)


def chunked_kl_sums(
    config: ModelConfig,
    params: Any,
    base_params: Any,
    tokens: jax.Array,
    positions: jax.Array,
    completion_mask: jax.Array,
    *,
    chunk: int = 128,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
    shards: int = 1,
    batch_spec: Any = None,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """`kl_sums` over row micro-batches (`lax.map`), summed: live memory is one micro-batch's.

    Rows are padded to whole micro-batches with empty rows (mask 0, positions −1), which add
    nothing. Micro-batch j holds rows j, j + n, j + 2n, … (n micro-batches): a [B] → [mb, n]
    reshape keeps a row-sharded batch on its devices, so no rows move between them (when no
    padding is needed, as at the default 32 rows).
    """
    b = tokens.shape[0]
    mb, n = micro_batch_rows(b, rows_per_chunk, shards)
    pad = mb * n - b
    if pad:
        tokens = jnp.pad(tokens, ((0, pad), (0, 0)))
        positions = jnp.pad(positions, ((0, pad), (0, 0)), constant_values=-1)
        completion_mask = jnp.pad(completion_mask, ((0, pad), (0, 0)))

    def split(x):  # [mb * n, S] -> [n, mb, S]; micro-batch j = rows j, j + n, ...
        x = jnp.swapaxes(x.reshape(mb, n, *x.shape[1:]), 0, 1)
        if batch_spec is not None:
            x = jax.lax.with_sharding_constraint(x, batch_spec)
        return x

    def one(xs):
        t, p, m = xs
        return kl_sums(config, params, base_params, t, p, m, chunk=chunk)

    per = jax.lax.map(one, (split(tokens), split(positions), split(completion_mask)))
    return {k: (s.sum(), c.sum()) for k, (s, c) in per.items()}


def make_measure_kl(
    config: ModelConfig,
    mesh: Mesh,
    *,
    chunk: int = 128,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
    rules=None,
):
    """Jitted `measure_kl(params, base_params, batch) -> {k1, k2, k3, full, tokens}` (token means).

    `batch` is any object with `tokens`, `positions`, `completion_mask` ([B, S]) — typically
    rollouts of the current policy on held-out prompts. Both param trees use the train layout.
    Rows are measured `rows_per_chunk` at a time (rounded up to a multiple of the mesh's batch
    shards; see `chunked_kl_sums`); the result does not depend on it beyond summation order.
    """
    rules = sharding.TRAIN_RULES if rules is None else rules
    p_shard = sharding.param_shardings(config, mesh, rules)
    b_shard = sharding.batch_sharding(mesh)
    shards = sharding.batch_shard_count(mesh)
    micro_batch_rows(shards, rows_per_chunk, shards)  # validates rows_per_chunk now
    # [n, mb, S] micro-batches: the row axis (1) split like a batch's
    mb_spec = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)
    )

    def _measure(params, base_params, tokens, positions, completion_mask):
        sums = chunked_kl_sums(
            config, params, base_params, tokens, positions, completion_mask, chunk=chunk,
            rows_per_chunk=rows_per_chunk, shards=shards, batch_spec=mb_spec,
        )  # fmt: skip
        count = completion_mask.astype(jnp.float32).sum()
        out = {k: s / jnp.maximum(c, 1.0) for k, (s, c) in sums.items()}
        out["tokens"] = count
        return out

    jitted = jax.jit(
        _measure,
        in_shardings=(p_shard, p_shard, b_shard, b_shard, b_shard),
        out_shardings=sharding.replicated(mesh),
    )

    def measure_kl(params: Any, base_params: Any, batch: Any) -> dict[str, jax.Array]:
        if not bool(jnp.any(jnp.asarray(batch.completion_mask) > 0)):
            raise ValueError("measure_kl: the batch has no completion tokens (empty masks)")
        return jitted(params, base_params, batch.tokens, batch.positions, batch.completion_mask)

    return measure_kl
