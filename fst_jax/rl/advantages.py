"""Group-relative advantages (host-side numpy; rewards come from Python verifiers).

One group per *problem*: the G rollouts of a problem share a group id whichever contexts (fast
weights) produced them, so prompt-induced and sampling-induced variation are normalised together
(paper §1.4). Groups whose rewards are all equal carry no learning signal and are dropped
(masked, reported as `dropped_groups`), not resampled.

Non-finite rewards are never hidden: their group's advantages are NaN, `nonfinite_groups`
counts them, and the train step skips (and counts) an update whose loss is not finite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from fst_jax.registry import Registry

AdvantageFn = Callable[..., np.ndarray]
_ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    return _ADVANTAGES.register(name)


def list_advantages() -> list[str]:
    return _ADVANTAGES.names()


def get_advantage(name: str) -> AdvantageFn:
    return _ADVANTAGES.get(name)


@dataclasses.dataclass(frozen=True)
class Advantages:
    """Per-row advantages, the validity mask (False = row of a dropped flat group) and counts."""

    advantages: np.ndarray  # f32[B]; 0 on dropped rows
    valid: np.ndarray  # bool[B]
    num_groups: int
    dropped_groups: int
    nonfinite_groups: int


def _group_index(group_ids: np.ndarray) -> tuple[np.ndarray, int]:
    _, inverse = np.unique(group_ids, return_inverse=True)
    return inverse.reshape(-1), int(inverse.max()) + 1 if inverse.size else 0


def _group_mean(x: np.ndarray, gi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(gi, minlength=n).astype(np.float64)
    sums = np.bincount(gi, weights=x, minlength=n)
    return sums / counts, counts


@register_advantage("grpo")
def grpo_advantages(
    rewards: np.ndarray,
    group_ids: np.ndarray,
    *,
    eps: float = 1e-6,
    std: str = "sample",
    scale: bool = True,
) -> np.ndarray:
    """(r − mean_g) / (std_g + eps); `std` is 'sample' (ddof 1, verl/torch.std) or 'population'.

    With `scale=False` the advantage is only centred (Dr. GRPO).
    """
    if std not in ("sample", "population"):
        raise ValueError(f"std={std!r}; use 'sample' (ddof=1) or 'population' (ddof=0)")
    gi, n = _group_index(group_ids)
    mean, counts = _group_mean(rewards, gi, n)
    centred = rewards - mean[gi]
    if not scale:
        return centred
    ddof = 1 if std == "sample" else 0
    if ddof and np.any(counts < 2):
        raise ValueError(
            "Sample std needs at least 2 rollouts per group; use std='population' or G >= 2"
        )
    var = np.bincount(gi, weights=centred**2, minlength=n) / (counts - ddof)
    return centred / (np.sqrt(var)[gi] + eps)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Dr. GRPO: group-mean centring without std scaling."""
    return grpo_advantages(rewards, group_ids, scale=False)


@register_advantage("rloo")
def rloo_advantages(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Leave-one-out baseline: r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean_g)."""
    gi, n = _group_index(group_ids)
    mean, counts = _group_mean(rewards, gi, n)
    if np.any(counts < 2):
        raise ValueError("RLOO needs at least 2 rollouts per group (G >= 2)")
    g = counts[gi]
    return g / (g - 1) * (rewards - mean[gi])


def compute_advantages(
    rewards: np.ndarray,
    group_ids: np.ndarray,
    estimator: str = "grpo",
    *,
    group_size: int | None = None,
    **kwargs,
) -> Advantages:
    """Advantages by registry name, with flat groups dropped and every anomaly counted.

    `group_size` (G), if given, is checked: the batch must be a whole number of groups of G.
    """
    rewards = np.asarray(rewards, np.float64).reshape(-1)
    group_ids = np.asarray(group_ids).reshape(-1)
    if rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards {rewards.shape} and group_ids {group_ids.shape} must both be [B]: "
            "one reward and one problem id per rollout row"
        )
    if rewards.size == 0:
        raise ValueError("Empty batch: no rewards given")
    gi, n = _group_index(group_ids)
    counts = np.bincount(gi, minlength=n)
    if group_size is not None:
        if rewards.size % group_size:
            raise ValueError(
                f"Group size G={group_size} does not divide the batch of {rewards.size} rows; "
                "sample G rollouts for every problem"
            )
        if np.any(counts != group_size):
            bad = np.unique(group_ids)[counts != group_size][:5]
            raise ValueError(
                f"Groups {bad.tolist()} do not have exactly G={group_size} rows "
                f"(sizes {counts[counts != group_size][:5].tolist()}); check group_ids"
            )
    finite = np.isfinite(rewards)
    nonfinite_group = np.bincount(gi, weights=~finite, minlength=n) > 0
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, gi, np.where(finite, rewards, np.inf))
    np.maximum.at(hi, gi, np.where(finite, rewards, -np.inf))
    flat_group = (hi <= lo) & ~nonfinite_group
    adv = get_advantage(estimator)(rewards, group_ids, **kwargs)
    valid = ~flat_group[gi]
    adv = np.where(valid, adv, 0.0)
    adv = np.where(nonfinite_group[gi], np.nan, adv)
    return Advantages(
        advantages=adv.astype(np.float32),
        valid=valid,
        num_groups=n,
        dropped_groups=int(flat_group.sum()),
        nonfinite_groups=int(nonfinite_group.sum()),
    )


AGGREGATIONS = ("prompt_token_mean", "token_mean", "sequence_mean", "token_sum_norm")


def row_weights(
    completion_tokens: np.ndarray,
    group_ids: np.ndarray,
    valid: np.ndarray,
    aggregation: str = "prompt_token_mean",
    *,
    max_completion_len: int | None = None,
) -> np.ndarray:
    """Per-row weight w_b so that loss = Σ_b w_b Σ_t ℓ_{b,t} over completion tokens.

    Pre-computing w on the whole batch keeps the loss exact under any micro-batch / shard split.
      prompt_token_mean: w_b = 1 / (tokens of b's group) / (valid groups)   (paper, DAPO/ScaleRL)
      token_mean:        w_b = 1 / (valid tokens in the batch)
      sequence_mean:     w_b = 1 / (tokens of row b) / (valid rows)
      token_sum_norm:    w_b = 1 / (max_completion_len · valid rows)          (Dr. GRPO)
    """
    c = np.asarray(completion_tokens, np.float64).reshape(-1)
    valid = np.asarray(valid, bool).reshape(-1) & (c > 0)
    gi, n = _group_index(np.asarray(group_ids).reshape(-1))
    w = np.zeros_like(c)
    if not valid.any():
        return w.astype(np.float32)
    if aggregation == "prompt_token_mean":
        group_tokens = np.bincount(gi, weights=np.where(valid, c, 0.0), minlength=n)
        n_groups = int((group_tokens > 0).sum())
        w = np.where(valid, 1.0 / np.maximum(group_tokens[gi], 1.0) / n_groups, 0.0)
    elif aggregation == "token_mean":
        w = np.where(valid, 1.0 / c[valid].sum(), 0.0)
    elif aggregation == "sequence_mean":
        w = np.where(valid, 1.0 / np.maximum(c, 1.0) / valid.sum(), 0.0)
    elif aggregation == "token_sum_norm":
        if not max_completion_len:
            raise ValueError("aggregation='token_sum_norm' needs max_completion_len (the budget)")
        w = np.where(valid, 1.0 / (max_completion_len * valid.sum()), 0.0)
    else:
        raise ValueError(f"Unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}")
    return w.astype(np.float32)
