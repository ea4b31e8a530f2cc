"""Policy losses by registry name, as per-token terms aggregated by pre-computed row weights.

Every loss here is a per-token function ℓ_{b,t}; the train step forms
    loss = Σ_b w_b Σ_t m_{b,t} (ℓ_{b,t} + β · k_{b,t})
with completion mask m, row weights w from `advantages.row_weights` (which encode the
aggregation: prompt-level token mean, global token mean, sequence mean, or Dr. GRPO's constant
normaliser) and an optional KL penalty k (an estimator of KL(π_θ ‖ π_base) on the sampled
tokens, default k3, coefficient β = 0 by default; the paper lists 0.001). Because w is fixed for
the whole batch, sums over any micro-batch / shard split add up to the same loss and gradient.

Our CISPO (MiniMax-M1 §3.1, TRL/verl semantics), stated exactly:
    log ρ = clip(log π_θ(y_t) − log π_old(y_t), −20, 20),   ρ = exp(log ρ)
    ℓ_t   = − sg( clip(ρ, low, τ) ) · A_b · log π_θ(y_t)       τ = 4, low = 0 (no lower clip)
The weight carries no gradient: ∇ℓ = −clip(ρ, low, τ) · A · ∇ log π_θ, every token keeps its
gradient (no PPO-style token drop).

GSPO (Zheng et al. 2025, arXiv 2507.18071) uses the sequence-level ratio
    s_b = exp( (1/|y_b|) Σ_t (log π_θ(y_t) − log π_old(y_t)) )
clipped PPO-style to [1−ε_low, 1+ε_high], in its token form s_{b,t} = sg(s_b)·π_θ(y_t)/sg(π_θ(y_t))
(same value and, with a sequence-mean aggregation, the same gradient as the sequence objective).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fst_jax.registry import Registry
from fst_jax.rl.kl import LOG_RATIO_CLAMP


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of every registered loss (hashable: a static jit argument)."""

    name: str = "cispo"
    tau: float = 4.0  # CISPO upper truncation of the IS weight (ε_high = 3)
    clip_low: float | None = None  # CISPO optional lower clip of the IS weight (None: none)
    eps_low: float = 0.2  # PPO-clip range for grpo / dr_grpo
    eps_high: float = 0.2
    kl_coef: float = 0.0  # β of the in-loss KL(π_θ ‖ π_base) penalty; 0 = off
    kl_estimator: str = "k3"

    def __post_init__(self) -> None:
        _LOSSES.get(self.name)  # an unknown name fails with the nearest registered one
        if self.tau <= 0 or (self.clip_low is not None and self.clip_low >= self.tau):
            raise ValueError(
                f"Need 0 <= clip_low < tau; got clip_low={self.clip_low}, tau={self.tau}"
            )
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef={self.kl_coef} must be >= 0")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; use k1, k2 or k3")


@dataclasses.dataclass(frozen=True)
class TokenInputs:
    """What a per-token loss sees; all [b, S] f32 (advantages broadcast over tokens)."""

    logps: jax.Array  # log π_θ of the sampled tokens (differentiable)
    old_logps: jax.Array  # sampler log-probs (π_old)
    advantages: jax.Array
    distill_kl: jax.Array | None = None  # full-vocab KL(student ‖ sg teacher), fst_distill only
    mask: jax.Array | None = None  # completion mask (sequence-level losses: GSPO)


LossFn = Callable[[TokenInputs, LossConfig], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss: per-token fn → (ℓ [b,S], clipped indicator [b,S]) plus defaults."""

    fn: LossFn
    needs_teacher: bool = False
    default_advantage: str | None = "grpo"
    default_aggregation: str = "prompt_token_mean"


_LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(name: str, **spec_kwargs) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        _LOSSES.add(name, LossSpec(fn=fn, **spec_kwargs))
        return fn

    return deco


def list_losses() -> list[str]:
    return _LOSSES.names()


def get_loss(name: str) -> LossSpec:
    return _LOSSES.get(name)


def importance_ratio(logps: jax.Array, old_logps: jax.Array) -> jax.Array:
    """ρ = π_θ / π_old computed in log space with the log-ratio clamped to ±20."""
    return jnp.exp(jnp.clip(logps - old_logps, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


@register_loss("cispo")
def cispo_loss(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    """ℓ = −sg(clip(ρ, low, τ)) · A · log π_θ (see module docstring)."""
    rho = jax.lax.stop_gradient(importance_ratio(x.logps, x.old_logps))
    low = 0.0 if cfg.clip_low is None else cfg.clip_low
    weight = jnp.clip(rho, low, cfg.tau)
    clipped = (rho > cfg.tau) | (rho < low)
    return -weight * x.advantages * x.logps, clipped.astype(jnp.float32)


def _ppo_clip(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    rho = importance_ratio(x.logps, x.old_logps)
    unclipped = -rho * x.advantages
    clipped = -jnp.clip(rho, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * x.advantages
    return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)


@register_loss("grpo")
def grpo_loss(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    """PPO-clip: ℓ = max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)A) (for ablations)."""
    return _ppo_clip(x, cfg)


@register_loss("dr_grpo", default_advantage="dr_grpo", default_aggregation="token_sum_norm")
def dr_grpo_loss(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    """Dr. GRPO: the PPO-clip term with centred (unscaled) advantages and a constant normaliser."""
    return _ppo_clip(x, cfg)


@register_loss("gspo", default_aggregation="sequence_mean")
def gspo_loss(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    """GSPO-token: ℓ = max(−s·A, −clip(s, 1−ε_low, 1+ε_high)·A), s the sequence ratio (see top)."""
    if x.mask is None:
        raise ValueError("gspo needs the completion mask (TokenInputs.mask)")
    sg = jax.lax.stop_gradient
    diff = jnp.where(x.mask > 0, x.logps - x.old_logps, 0.0)
    seq = jnp.sum(diff, axis=-1, keepdims=True) / jnp.maximum(
        jnp.sum(x.mask, axis=-1, keepdims=True), 1.0
    )
    seq = jnp.clip(sg(seq), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    s = jnp.exp(seq + x.logps - sg(x.logps))
    unclipped = -s * x.advantages
    clipped = -jnp.clip(s, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * x.advantages
    return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)


@register_loss("fst_distill", needs_teacher=True, default_advantage=None)
def fst_distill_loss(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    """Context distillation: ℓ_t = KL( π_θ(·|x, y<t) ‖ sg π_θ(·|φ, x, y<t) ), full vocabulary.

    Reverse KL from the unprompted student to the prompted teacher (the same weights under
    stop-gradient, conditioned on the context φ), on the student's own sampled tokens y. No RL
    term; advantages are ignored.
    """
    if x.distill_kl is None:
        raise ValueError("fst_distill needs the teacher view (RLBatch.teacher_*)")
    return x.distill_kl, jnp.zeros_like(x.distill_kl)


@register_loss("sft", default_advantage=None, default_aggregation="token_mean")
def sft_loss(x: TokenInputs, cfg: LossConfig) -> tuple[jax.Array, jax.Array]:
    """Supervised warm start: ℓ_t = −log π_θ(y_t) on demonstration (assistant) tokens.

    The mask picks the assistant turns and the row weights set the average (`token_mean`:
    the mean NLL over every assistant token of the step, as TRL's SFT loss); advantages and
    sampler log-probs are ignored.
    """
    return -x.logps, jnp.zeros_like(x.logps)
