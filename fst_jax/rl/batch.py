"""The RL batch: the sampler's training layout plus everything the loss needs, as one pytree.

Training layout (agreed with the sampler): rows are contiguous and right-padded — prompt tokens,
then completion tokens (including an emitted EOS), then padding with position −1. A per-token
quantity is stored at the index of the token it scores.

`make_batch` is the host-side bridge from rollouts + rewards to an `RLBatch`: it computes group
advantages, drops flat groups, and pre-computes each row's aggregation weight on the WHOLE batch
so that any micro-batch or shard split gives the same loss.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np

from fst_jax.rl.advantages import Advantages, compute_advantages, row_weights


@flax.struct.dataclass
class RLBatch:
    """One optimizer step's data. [B, S] token fields, [B] row fields.

    tokens           int32[B, S]  prompt ‖ completion ‖ padding
    positions        int32[B, S]  0..len−1, then −1 on padding
    completion_mask  f32[B, S]    1 on completion tokens (the only tokens that carry loss)
    old_logps        f32[B, S]    sampler log-prob of each completion token (0 elsewhere)
    ref_logps        f32[B, S]    base-policy log-probs (KL penalty only; zeros otherwise)
    advantages       f32[B]       one per rollout, shared by all its tokens
    row_weight       f32[B]       aggregation weight (see `advantages.row_weights`); 0 = dropped
    row_valid        f32[B]       1 unless the row's group was dropped (flat rewards)
    group_ids        int32[B]     problem index (G rows per problem)
    teacher_*        optional second view for `fst_distill`: the same completions after a
                     longer prompt (with the context φ); teacher index = student index + offset.
    reused           optional f32[B]: 1 = a GEPA rollout reused (`fst_jax.rl.reuse`); only
                     monitored (mean importance weight of reused vs fresh rows), never in the loss.
    """

    tokens: jax.Array
    positions: jax.Array
    completion_mask: jax.Array
    old_logps: jax.Array
    ref_logps: jax.Array
    advantages: jax.Array
    row_weight: jax.Array
    row_valid: jax.Array
    group_ids: jax.Array
    teacher_tokens: jax.Array | None = None
    teacher_positions: jax.Array | None = None
    teacher_offset: jax.Array | None = None
    reused: jax.Array | None = None

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]


TOKEN_FIELDS = ("tokens", "positions", "completion_mask", "old_logps", "ref_logps")
ROW_FIELDS = ("advantages", "row_weight", "row_valid", "group_ids")


def validate_batch(batch: RLBatch) -> None:
    """Raise a named error on mismatched fields or an impossible layout (host-side, cheap)."""
    shape = tuple(batch.tokens.shape)
    if len(shape) != 2:
        raise ValueError(f"tokens must be [B, S]; got shape {shape}")
    for f in TOKEN_FIELDS:
        s = tuple(np.shape(getattr(batch, f)))
        if s != shape:
            raise ValueError(
                f"RLBatch.{f} has shape {s} but tokens has {shape}; all token fields must be [B, S]"
            )
    for f in ROW_FIELDS:
        s = tuple(np.shape(getattr(batch, f)))
        if s != shape[:1]:
            raise ValueError(f"RLBatch.{f} has shape {s}; expected [B] = ({shape[0]},)")
    mask = np.asarray(batch.completion_mask)
    if np.any(mask[:, 0] > 0):
        raise ValueError(
            "completion_mask is 1 at index 0: every row must start with at least one prompt token "
            "(index t is scored from the state at t−1)"
        )
    if np.any((mask > 0) & (np.asarray(batch.positions) < 0)):
        raise ValueError("completion_mask marks padding (position −1) tokens; fix the layout")
    teacher = (batch.teacher_tokens, batch.teacher_positions, batch.teacher_offset)
    if any(t is not None for t in teacher) and any(t is None for t in teacher):
        raise ValueError("Set all of teacher_tokens, teacher_positions, teacher_offset, or none")
    if batch.reused is not None and tuple(np.shape(batch.reused)) != shape[:1]:
        raise ValueError(f"RLBatch.reused has shape {np.shape(batch.reused)}; expected [B]")
    if batch.teacher_tokens is not None:
        tshape = tuple(np.shape(batch.teacher_tokens))
        if tshape[0] != shape[0] or np.shape(batch.teacher_positions) != tshape:
            raise ValueError(
                f"teacher view {tshape} must have B={shape[0]} rows and match positions"
            )


def completion_offsets(student_mask: np.ndarray, teacher_mask: np.ndarray) -> np.ndarray:
    """Per-row shift from student to teacher completion start; checks both views agree."""
    s_mask = np.asarray(student_mask) > 0
    t_mask = np.asarray(teacher_mask) > 0
    s_len, t_len = s_mask.sum(1), t_mask.sum(1)
    if np.any(s_len != t_len):
        rows = np.nonzero(s_len != t_len)[0][:5].tolist()
        raise ValueError(
            f"Student and teacher views have different completion lengths in rows {rows}"
        )
    return (t_mask.argmax(1) - s_mask.argmax(1)).astype(np.int32)


def make_batch(
    tokens: Any,
    positions: Any,
    completion_mask: Any,
    logps: Any,
    rewards: Any,
    group_ids: Any,
    *,
    advantage: str | None = "grpo",
    aggregation: str = "prompt_token_mean",
    group_size: int | None = None,
    ref_logps: Any = None,
    max_completion_len: int | None = None,
    teacher: tuple[Any, Any, Any] | None = None,
    advantage_kwargs: dict[str, Any] | None = None,
    reused: Any = None,
) -> tuple[RLBatch, dict[str, float]]:
    """Rollouts (training layout) + rewards → (RLBatch of numpy arrays, host stats).

    `teacher` = (teacher_tokens, teacher_positions, teacher_completion_mask) for `fst_distill`;
    `advantage=None` (reward-free losses) keeps every row with A = 0; rewards may then be None.
    `reused` (bool/f32[B], optional) marks reused GEPA rows for the train step's monitors.
    Stats: num_groups, dropped_groups, nonfinite_groups, valid_rows, completion_tokens.
    """
    tokens = np.asarray(tokens, np.int32)
    mask = np.asarray(completion_mask, np.float32)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(
            f"tokens {tokens.shape} and completion_mask {mask.shape} must both be [B, S]"
        )
    for name, arr in (("positions", positions), ("old_logps", logps), ("ref_logps", ref_logps)):
        if arr is not None and np.shape(arr) != tokens.shape:
            raise ValueError(
                f"{name} has shape {np.shape(arr)} but tokens has {tokens.shape}; "
                "all token fields must be [B, S] in the same training layout"
            )
    if not mask.any():
        raise ValueError("Every completion mask is empty: there is nothing to train on")
    if advantage is None:  # reward-free losses (fst_distill): every row counts, A = 0
        if rewards is None:
            rewards = np.zeros(tokens.shape[0])
        adv = compute_advantages(rewards, group_ids, "dr_grpo", group_size=group_size)
        adv = Advantages(
            advantages=np.zeros(tokens.shape[0], np.float32),
            valid=np.ones(tokens.shape[0], bool),
            num_groups=adv.num_groups,
            dropped_groups=0,
            nonfinite_groups=0,
        )
    else:
        adv = compute_advantages(
            rewards, group_ids, advantage, group_size=group_size, **(advantage_kwargs or {})
        )
    c = mask.sum(1)
    weights = row_weights(
        c, group_ids, adv.valid, aggregation, max_completion_len=max_completion_len
    )
    t_fields: tuple[Any, Any, Any] = (None, None, None)
    if teacher is not None:
        t_tokens, t_positions, t_mask = teacher
        t_fields = (
            np.asarray(t_tokens, np.int32),
            np.asarray(t_positions, np.int32),
            completion_offsets(mask, t_mask),
        )
    batch = RLBatch(
        tokens=tokens,
        positions=np.asarray(positions, np.int32),
        completion_mask=mask,
        old_logps=np.where(mask > 0, np.asarray(logps, np.float32), 0.0).astype(np.float32),
        ref_logps=(np.zeros_like(mask) if ref_logps is None else np.asarray(ref_logps, np.float32)),
        advantages=adv.advantages,
        row_weight=weights,
        row_valid=adv.valid.astype(np.float32),
        group_ids=np.asarray(group_ids, np.int32),
        teacher_tokens=t_fields[0],
        teacher_positions=t_fields[1],
        teacher_offset=t_fields[2],
        reused=None if reused is None else np.asarray(reused, np.float32),
    )
    validate_batch(batch)
    stats = {
        "num_groups": float(adv.num_groups),
        "dropped_groups": float(adv.dropped_groups),
        "nonfinite_groups": float(adv.nonfinite_groups),
        "valid_rows": float(adv.valid.sum()),
        "completion_tokens": float(c.sum()),
    }
    return batch, stats
