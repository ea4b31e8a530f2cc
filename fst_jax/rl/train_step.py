"""One jitted, sharded RL update: chunked log-probs → loss → micro-batch grads → AdamW.

`make_train_step(model_config, mesh, rl_config)` returns a `TrainStep` whose `__call__` is a
`jax.jit` with explicit in/out shardings and the state donated. Everything is on device; the
metrics dict is meant to be fetched once per step with `jax.device_get`.

Exactness: rows carry pre-computed aggregation weights (`RLBatch.row_weight`), so the loss is a
plain sum over micro-batches; micro-batch m takes rows m, m+M, m+2M, ... so every data shard
contributes equally to every micro-batch (no resharding).

Safety: an update whose loss or gradient is non-finite, or with no weighted tokens, is skipped
(params and optimizer state unchanged) and counted in `TrainState.skipped`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from fst_jax import sharding
from fst_jax.models.config import ModelConfig
from fst_jax.models.decoder import forward
from fst_jax.rl.batch import RLBatch, make_batch, validate_batch
from fst_jax.rl.kl import kl_estimate
from fst_jax.rl.logprobs import (
    align_teacher_hidden,
    full_kl_from_hidden,
    logps_from_hidden,
    shift_hidden,
    token_logps,
)
from fst_jax.rl.losses import LossConfig, TokenInputs, get_loss, importance_ratio


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Loss + optimizer + execution knobs of the train step (hashable, absl-flag friendly)."""

    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    learning_rate: float = 1e-5
    warmup_steps: int = 10  # linear warm-up to learning_rate, then constant (paper §1.5)
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = None  # global-norm clip; None = off (paper states none)
    num_microbatches: int = 1
    # > 0: split further so one micro-batch holds at most this many tokens (rows × columns); the
    # count is picked per batch shape (activations scale with it; on CPU they are what OOMs).
    microbatch_tokens: int = 0
    logit_chunk: int = 128  # sequence positions per chunk of the vocab projection
    # The sampling temperature: the trainer's log π uses logits / temperature, matching the
    # sampler's π_old (`Rollouts.raw_logps`), so on-policy ρ = 1 (verl's choice).
    temperature: float = 1.0
    # Optimizer updates per rollout batch (TRL num_iterations / verl ppo_mini_batch): the batch's
    # problems are split into this many mini-batches, one update each (`update_on_rollouts`).
    updates_per_batch: int = 1

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (the sampling one)")
        if self.updates_per_batch < 1:
            raise ValueError(f"updates_per_batch={self.updates_per_batch} must be >= 1")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: number of step calls (applied or skipped)
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32: updates skipped for non-finite loss/grad or no tokens


def learning_rate_schedule(cfg: RLConfig) -> optax.Schedule:
    """lr · min(1, (n+1)/warmup): the first update already moves (optax counts from 0)."""
    warm = max(cfg.warmup_steps, 1)
    return lambda count: cfg.learning_rate * jnp.minimum(1.0, (count + 1.0) / warm)


def make_optimizer(cfg: RLConfig) -> optax.GradientTransformation:
    """AdamW (β 0.9/0.999, wd 0 by default) with warm-up and optional global-norm clipping."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    if cfg.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def _sum_where(mask: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0))


def microbatch_loss(
    config: ModelConfig, cfg: RLConfig, params: Any, mb: RLBatch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted loss sum of one micro-batch and its metric (sum, count) pieces."""
    spec = get_loss(cfg.loss.name)
    hidden = forward(config, params, mb.tokens, mb.positions, return_hidden=True)[0]
    lp, ent = logps_from_hidden(
        config, params, hidden, mb.tokens, chunk=cfg.logit_chunk, temperature=cfg.temperature
    )
    distill_kl = None
    if spec.needs_teacher:
        if mb.teacher_tokens is None:
            raise ValueError(f"Loss {cfg.loss.name!r} needs the teacher view in the batch")
        teacher_params = jax.lax.stop_gradient(params)
        ht = forward(
            config, teacher_params, mb.teacher_tokens, mb.teacher_positions, return_hidden=True
        )[0]
        ht = jax.lax.stop_gradient(align_teacher_hidden(ht, mb.teacher_offset, lp.shape[1]))
        distill_kl = full_kl_from_hidden(
            config, params, shift_hidden(hidden), teacher_params, ht, chunk=cfg.logit_chunk
        )
    m = mb.completion_mask > 0
    adv = jnp.broadcast_to(mb.advantages[:, None], lp.shape)
    old = jnp.where(m, mb.old_logps, 0.0)
    inputs = TokenInputs(
        logps=lp, old_logps=old, advantages=adv, distill_kl=distill_kl,
        mask=m.astype(jnp.float32),
    )  # fmt: skip
    per_token, clipped = spec.fn(inputs, cfg.loss)
    kl = kl_estimate(lp, mb.ref_logps, cfg.loss.kl_estimator)
    if cfg.loss.kl_coef > 0:
        per_token = per_token + cfg.loss.kl_coef * kl
    w = jnp.broadcast_to(mb.row_weight[:, None], lp.shape)
    trained = m & (w > 0)
    loss = _sum_where(trained, w * per_token)
    mismatch = jnp.abs(jax.lax.stop_gradient(lp) - old)
    sg = jax.lax.stop_gradient
    aux = {
        "weight": _sum_where(trained, w),
        "tokens": jnp.sum(m.astype(jnp.float32)),
        "train_tokens": jnp.sum(trained.astype(jnp.float32)),
        "entropy": _sum_where(m, ent),
        "clip": _sum_where(trained, clipped),
        "mismatch": _sum_where(m, mismatch),
        "mismatch_max": jnp.max(jnp.where(m, mismatch, 0.0)),
        "kl": _sum_where(m, sg(kl)) if cfg.loss.kl_coef > 0 else jnp.zeros(()),
        "distill_kl": _sum_where(m, sg(distill_kl)) if distill_kl is not None else jnp.zeros(()),
        "nonfinite_adv": jnp.sum(
            (~jnp.isfinite(mb.advantages) & (mb.row_weight > 0)).astype(jnp.float32)
        ),
    }
    if mb.reused is not None:  # rollout reuse: mean ρ = π_θ / π_old over reused vs fresh tokens
        rho = importance_ratio(sg(lp), old)
        reused = jnp.broadcast_to(mb.reused[:, None] > 0, lp.shape)
        aux["is_weight_reused"] = _sum_where(m & reused, rho)
        aux["tokens_reused"] = jnp.sum((m & reused).astype(jnp.float32))
        aux["is_weight_fresh"] = _sum_where(m & ~reused, rho)
    return loss, aux


# Every micro-batch metric is an f32 scalar sum (or max, for keys ending in `_max`).
AUX_KEYS = (
    "weight",
    "tokens",
    "train_tokens",
    "entropy",
    "clip",
    "mismatch",
    "mismatch_max",
    "kl",
    "distill_kl",
    "nonfinite_adv",
)
# Added when the batch marks reused rows (`RLBatch.reused`).
REUSE_AUX_KEYS = ("is_weight_reused", "tokens_reused", "is_weight_fresh")


def _split_microbatches(batch: RLBatch, m: int) -> RLBatch:
    """[B, ...] → [M, B/M, ...] with micro-batch j = rows j, j+M, ... (shard-balanced)."""

    def split(x):
        x = x.reshape(x.shape[0] // m, m, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _dropped_groups(group_ids: jax.Array, row_valid: jax.Array) -> jax.Array:
    """Distinct problems whose rows are all invalid (flat groups), counted on device."""
    big = jnp.iinfo(jnp.int32).max
    bad = jnp.sort(jnp.where(row_valid > 0, big, group_ids))
    first = jnp.concatenate([jnp.ones((1,), bool), bad[1:] != bad[:-1]])
    return jnp.sum((first & (bad != big)).astype(jnp.float32))


def train_step_fn(config: ModelConfig, cfg: RLConfig, optimizer, mesh: Mesh | None = None):
    """The pure (un-jitted) step: (state, batch) → (state, metrics)."""
    grad_fn = jax.value_and_grad(lambda p, mb: microbatch_loss(config, cfg, p, mb), has_aux=True)
    n_mb = cfg.num_microbatches

    def step(state: TrainState, batch: RLBatch) -> tuple[TrainState, dict[str, jax.Array]]:
        params = state.params
        if n_mb == 1:
            (loss, aux), grads = grad_fn(params, batch)
        else:
            mbs = _split_microbatches(batch, n_mb)

            def body(carry, mb):
                if mesh is not None:
                    mb = jax.tree.map(lambda x: sharding.with_batch_constraint(x, mesh), mb)
                (l_, a_), g_ = grad_fn(params, mb)
                g_acc, l_acc, a_acc = carry
                a_new = {
                    k: jnp.maximum(a_acc[k], v) if k.endswith("_max") else a_acc[k] + v
                    for k, v in a_.items()
                }
                return (jax.tree.map(jnp.add, g_acc, g_), l_acc + l_, a_new), None

            zeros_g = jax.tree.map(jnp.zeros_like, params)
            keys = AUX_KEYS + (REUSE_AUX_KEYS if batch.reused is not None else ())
            zeros_a = {k: jnp.zeros((), jnp.float32) for k in keys}
            (grads, loss, aux), _ = jax.lax.scan(body, (zeros_g, jnp.zeros(()), zeros_a), mbs)
        grad_norm = optax.global_norm(grads)
        ok = (
            jnp.isfinite(loss)
            & jnp.isfinite(grad_norm)
            & (aux["weight"] > 0)
            & (aux["nonfinite_adv"] == 0)
        )
        updates, new_opt = optimizer.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, params),
            opt_state=keep(new_opt, state.opt_state),
            skipped=state.skipped + (~ok).astype(jnp.int32),
        )
        count = jnp.maximum(aux["tokens"], 1.0)
        train_count = jnp.maximum(aux["train_tokens"], 1.0)
        metrics = {
            "loss": loss,
            "entropy": aux["entropy"] / count,
            "clip_frac": aux["clip"] / train_count,
            "logp_mismatch_mean": aux["mismatch"] / count,
            "logp_mismatch_max": aux["mismatch_max"],
            "grad_norm": grad_norm,
            "update_norm": jnp.where(ok, optax.global_norm(updates), 0.0),
            "tokens": aux["tokens"],
            "train_tokens": aux["train_tokens"],
            "valid_rows": jnp.sum(batch.row_valid),
            "dropped_groups": _dropped_groups(batch.group_ids, batch.row_valid),
            "kl": aux["kl"] / count,
            "distill_kl": aux["distill_kl"] / count,
            "skipped": (~ok).astype(jnp.float32),
            "skipped_total": new_state.skipped.astype(jnp.float32),
            # optax's count = updates applied so far = step calls − skipped ones.
            "learning_rate": learning_rate_schedule(cfg)(state.step - state.skipped),
        }
        if batch.reused is not None:
            n_reused = aux["tokens_reused"]
            metrics["is_weight_reused"] = aux["is_weight_reused"] / jnp.maximum(n_reused, 1.0)
            metrics["is_weight_fresh"] = aux["is_weight_fresh"] / jnp.maximum(
                aux["tokens"] - n_reused, 1.0
            )
            metrics["tokens_reused"] = n_reused
        return new_state, metrics

    return step


@dataclasses.dataclass
class TrainStep:
    """A compiled RL update bound to a mesh. Call it as `state, metrics = step(state, batch)`."""

    model_config: ModelConfig
    rl_config: RLConfig
    mesh: Mesh
    optimizer: optax.GradientTransformation
    param_shardings: Any
    state_shardings: TrainState
    batch_sharding: Any
    jitted: Callable[[TrainState, RLBatch], tuple[TrainState, dict[str, jax.Array]]]
    _by_count: dict[int, Callable] = dataclasses.field(default_factory=dict)

    def init(self, params: Any) -> TrainState:
        """Fresh state on the mesh (params are copied, so donation never frees the caller's)."""
        params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.param_shardings)(
            params
        )
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(
            params
        )
        rep = sharding.replicated(self.mesh)
        step, skipped = (jax.device_put(jnp.zeros((), jnp.int32), rep) for _ in range(2))
        return TrainState(step=step, params=params, opt_state=opt_state, skipped=skipped)

    def check_batch(self, batch: RLBatch) -> None:
        """Host-side checks with named errors (shapes, layout, divisibility)."""
        validate_batch(batch)
        b = batch.num_rows
        m = self.rl_config.num_microbatches
        n = sharding.batch_shard_count(self.mesh)
        if b % m:
            raise ValueError(f"num_microbatches={m} does not divide the batch of {b} rows")
        if (b // m) % n:
            raise ValueError(
                f"Micro-batches of {b // m} rows cannot be split over {n} data×fsdp shards; "
                f"use a batch that is a multiple of {m * n} rows"
            )
        if get_loss(self.rl_config.loss.name).needs_teacher and batch.teacher_tokens is None:
            raise ValueError(
                f"Loss {self.rl_config.loss.name!r} needs the teacher view: build the batch with "
                "make_batch(..., teacher=(tokens, positions, completion_mask))"
            )

    def microbatches_for(self, rows: int, columns: int) -> int:
        """Micro-batches for a [rows, columns] batch: `num_microbatches`, raised until one holds
        at most `microbatch_tokens` tokens (to the nearest count that splits the rows evenly
        over the batch shards; one row per shard at most)."""
        cfg = self.rl_config
        m = cfg.num_microbatches
        if cfg.microbatch_tokens <= 0:
            return m
        shards = sharding.batch_shard_count(self.mesh)
        want = max(m, -(-rows * columns // cfg.microbatch_tokens))
        ok = [k for k in range(m, rows + 1) if rows % k == 0 and (rows // k) % shards == 0]
        ok = [k for k in ok if k % m == 0] or [m]
        return next((k for k in ok if k >= want), ok[-1])

    def __call__(self, state: TrainState, batch: RLBatch) -> tuple[TrainState, dict]:
        self.check_batch(batch)
        m = self.microbatches_for(batch.num_rows, int(batch.tokens.shape[1]))
        if m == self.rl_config.num_microbatches:
            return self.jitted(state, batch)
        if m not in self._by_count:
            from fst_jax import distributed

            cfg = dataclasses.replace(self.rl_config, num_microbatches=m)
            fn = train_step_fn(self.model_config, cfg, self.optimizer, self.mesh)
            jitted = jax.jit(
                fn,
                in_shardings=(self.state_shardings, self.batch_sharding),
                out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                donate_argnums=(0,),
            )
            # Multi-process: host batches become global arrays, as for `jitted` (identity on one
            # process), so every process count picks the same micro-batching and update.
            self._by_count[m] = distributed.with_global_inputs(jitted, self.batch_sharding)
        return self._by_count[m](state, batch)


def make_train_step(
    model_config: ModelConfig,
    mesh: Mesh,
    rl_config: RLConfig = RLConfig(),
    *,
    rules: sharding.Rules = sharding.TRAIN_RULES,
) -> TrainStep:
    """Build the sharded, jitted update for `model_config` on `mesh` (state is donated)."""
    optimizer = make_optimizer(rl_config)
    p_shard = sharding.param_shardings(model_config, mesh, rules)
    from fst_jax.models.decoder import param_shapes

    opt_shapes = jax.eval_shape(optimizer.init, param_shapes(model_config))
    o_shard = sharding.opt_state_shardings(optimizer, opt_shapes, p_shard, mesh)
    rep = sharding.replicated(mesh)
    s_shard = TrainState(step=rep, params=p_shard, opt_state=o_shard, skipped=rep)
    b_shard = sharding.batch_sharding(mesh)
    fn = train_step_fn(model_config, rl_config, optimizer, mesh)
    jitted = jax.jit(
        fn, in_shardings=(s_shard, b_shard), out_shardings=(s_shard, rep), donate_argnums=(0,)
    )
    return TrainStep(model_config, rl_config, mesh, optimizer, p_shard, s_shard, b_shard, jitted)


def make_logps_fn(
    model_config: ModelConfig,
    mesh: Mesh,
    *,
    chunk: int = 128,
    rules: sharding.Rules = sharding.TRAIN_RULES,
    temperature: float = 1.0,
) -> Callable[[Any, Any, Any, Any], jax.Array]:
    """Jitted `(params, tokens, positions, completion_mask) -> logps f32[B, S]` (0 off-mask).

    Used for `RLBatch.ref_logps` (base policy, for the KL penalty: pass the train step's
    `temperature` so both sides of the estimator are the same distribution) or to recompute old
    log-probs.
    """
    p_shard = sharding.param_shardings(model_config, mesh, rules)
    b_shard = sharding.batch_sharding(mesh)

    def fn(params, tokens, positions, mask):
        lp, _ = token_logps(
            model_config, params, tokens, positions, chunk=chunk, with_entropy=False,
            temperature=temperature,
        )  # fmt: skip
        return jnp.where(mask > 0, lp, 0.0)

    return jax.jit(fn, in_shardings=(p_shard, b_shard, b_shard, b_shard), out_shardings=b_shard)


def host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """The one deliberate host sync per step."""
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def update_on_rollouts(
    train_step: TrainStep,
    state: TrainState,
    rollouts: dict[str, Any],
    rewards: Any,
    group_ids: Any,
    **batch_kwargs: Any,
) -> tuple[TrainState, list[dict[str, float]], dict[str, float]]:
    """`RLConfig.updates_per_batch` optimizer updates on one rollout batch.

    The problems (whole groups, in order) are split into U equal mini-batches; each becomes its
    own `RLBatch` (advantages per group are unchanged by the split; aggregation weights are
    normalised within the mini-batch, as in verl/TRL) and gets one update. After the first
    update π_θ ≠ π_old, which is where CISPO's truncated weight (and the PPO/GSPO clips) act.
    `rollouts` holds tokens / positions / completion_mask / logps and optionally ref_logps,
    teacher (a 3-tuple of [B, ...] arrays) and reused ([B] flags of reused GEPA rows). Returns (state, per-update host metrics, summed
    make_batch stats).
    """
    u = train_step.rl_config.updates_per_batch
    gids = np.asarray(group_ids)
    uniq = np.unique(gids)
    if len(uniq) % u:
        raise ValueError(
            f"rl.updates_per_batch={u} must divide the {len(uniq)} problems of the batch "
            "(whole groups per mini-batch); change rl.batch_size or rl.updates_per_batch"
        )
    per = len(uniq) // u
    metrics, stats_sum = [], {}
    for k in range(u):
        rows = np.nonzero(np.isin(gids, uniq[k * per : (k + 1) * per]))[0]
        take = lambda x, rows=rows: None if x is None else np.asarray(x)[rows]  # noqa: E731
        teacher = rollouts.get("teacher")
        batch, stats = make_batch(
            take(rollouts["tokens"]), take(rollouts["positions"]),
            take(rollouts["completion_mask"]), take(rollouts["logps"]),
            None if rewards is None else take(rewards), gids[rows],
            ref_logps=take(rollouts.get("ref_logps")),
            teacher=None if teacher is None else tuple(take(t) for t in teacher),
            reused=take(rollouts.get("reused")), **batch_kwargs,
        )  # fmt: skip
        state, m = train_step(state, batch)
        metrics.append(host_metrics(m))
        for key, v in stats.items():
            stats_sum[key] = stats_sum.get(key, 0.0) + v
    return state, metrics, stats_sum
