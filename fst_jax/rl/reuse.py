"""Rollout reuse: GEPA's evaluation rollouts of a cycle stand in for RL rollouts of its steps.

In an FST cycle GEPA samples the frozen policy θ_c on the anchor set — with lookahead anchors,
exactly the problems of the next RL batches — under every context it scores. At the cycle's
first RL step θ = θ_c, so a GEPA rollout of (problem x, context φ) is a sample of the very
distribution the RL step would draw for x under φ; at later steps it is a slightly stale one,
which CISPO's truncated importance weight ρ = π_θ / π_old is built for. Its π_old is the θ_c
log-prob logged when GEPA sampled it (`Rollouts.raw_logps`: sampling temperature, no top-k/top-p
truncation — what the trainer computes), so the weight sees the true lag.

What is kept (the rule; `RolloutStore`):

- only rollouts of contexts that the round EXPORTS. The RL batch's context mix is the bank's —
  G rollouts of a problem spread over the K exported contexts exactly as `spread_contexts` says —
  and a rollout under a non-exported candidate would put a context into the group that the
  policy is not trained to use, changing the group's baseline and the objective (the method
  trains π_θ(·|φ, x) for φ in the exported top-K). So they are dropped (`keep_contexts`).
- only rollouts from evaluations that score a candidate on the WHOLE anchor set (the re-score
  of carried contexts and the full scoring of accepted children), not GEPA's minibatch
  evaluations: a child is accepted because its minibatch rollouts beat its parent's, so those
  rollouts are selected on their rewards and would bias the group's advantages. (An exported
  context's whole-set rollouts also chose it, but each weighs 1/anchor_size in that choice.)
- each stored rollout trains at most once: `take` removes it, so a problem drawn twice in a
  cycle (an epoch boundary) gets fresh rollouts the second time.

Lifetime: one cycle. The store is filled during the cycle's GEPA round, pruned to the exported
contexts at export, drawn from by the cycle's first RL step (``first_step``, then cleared) or by
all of its steps (``cycle``), and cleared when the cycle ends. Checkpoints are written only at
cycle ends, so the store is never part of one: a run resumed after a crash redoes the cycle from
its GEPA round (same keys), which rebuilds the same store — nothing is lost or used twice.

Memory: a rollout is kept compactly (its real tokens and completion log-probs, no padding); the
store refuses rows past `max_rows` (counted in `dropped`), which the controller sets above what
one round can produce (carried × anchors + budget).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

REUSE_MODES = ("off", "first_step", "cycle")


@dataclasses.dataclass(frozen=True)
class StoredRollout:
    """One sampled row in compact form: the training-layout row is rebuilt by `layout_rows`."""

    tokens: np.ndarray  # int32[P + C]: prompt ‖ completion (including an emitted stop token)
    logps: np.ndarray  # f32[C]: π_θc raw log-prob of each completion token
    prompt_len: int
    reward: float
    finished: bool  # emitted a stop token (False: cut at max_new_tokens)

    @property
    def completion_len(self) -> int:
        return int(self.logps.shape[0])


def compact_rows(out: Any, rewards: Sequence[float]) -> list[StoredRollout]:
    """Sampler output (training layout, whole batch on this host) + rewards → compact rows."""
    tokens, raw = np.asarray(out.tokens), np.asarray(out.raw_logps)
    pl, cl = np.asarray(out.prompt_lengths), np.asarray(out.completion_lengths)
    fin = np.asarray(out.finished)
    rows = []
    for b in range(tokens.shape[0]):
        p, c = int(pl[b]), int(cl[b])
        rows.append(StoredRollout(
            tokens=tokens[b, : p + c].astype(np.int32).copy(),
            logps=raw[b, p : p + c].astype(np.float32).copy(),
            prompt_len=p, reward=float(rewards[b]), finished=bool(fin[b]),
        ))  # fmt: skip
    return rows


def layout_rows(rows: Sequence[StoredRollout], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """Compact rows → the sampler's training layout [n, width] (tokens, positions,
    completion_mask, logps), padded exactly as `sampling.engine.training_layout` pads."""
    n = len(rows)
    out = {
        "tokens": np.full((n, width), pad_id, np.int32),
        "positions": np.full((n, width), -1, np.int32),
        "completion_mask": np.zeros((n, width), np.float32),
        "logps": np.zeros((n, width), np.float32),
    }
    for i, r in enumerate(rows):
        length, p = r.tokens.shape[0], r.prompt_len
        if length > width:
            raise ValueError(f"stored row {i} has {length} tokens > batch width {width}")
        out["tokens"][i, :length] = r.tokens
        out["positions"][i, :length] = np.arange(length, dtype=np.int32)
        out["completion_mask"][i, p:length] = 1.0
        out["logps"][i, p:length] = r.logps
    return out


class RolloutStore:
    """The cycle's reusable GEPA rollouts, keyed by (context text, problem id), in sampling order.

    `sampling` is the SamplingParams GEPA sampled with; `take` refuses to hand rows to an RL step
    that samples with different settings (the rows would come from another distribution).
    """

    def __init__(self, sampling: Any, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be >= 1")
        self.sampling, self.max_rows = sampling, int(max_rows)
        self._rows: dict[tuple[str, str], list[StoredRollout]] = {}
        self.dropped = 0  # rows refused because the store was full
        self.added = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._rows.values())

    def add(self, context: str, problem_id: str, row: StoredRollout) -> bool:
        """Keep `row` (sampled under `context` for `problem_id`); False when full (counted)."""
        if len(self) >= self.max_rows:
            self.dropped += 1
            return False
        self._rows.setdefault((context, str(problem_id)), []).append(row)
        self.added += 1
        return True

    def keep_contexts(self, contexts: Sequence[str]) -> None:
        """Drop every row whose context is not in `contexts` (the exported top-K)."""
        keep = set(contexts)
        self._rows = {k: v for k, v in self._rows.items() if k[0] in keep}

    def count(self, context: str, problem_id: str) -> int:
        return len(self._rows.get((context, str(problem_id)), ()))

    def take(self, context: str, problem_id: str, sampling: Any) -> StoredRollout | None:
        """The oldest unused row of (context, problem), removed from the store; None if none."""
        if sampling != self.sampling:
            raise ValueError(
                f"RL samples with {sampling} but GEPA's stored rollouts were sampled with "
                f"{self.sampling}; reuse needs one distribution (set rl.reuse_gepa_rollouts=off "
                "or sample both with the same settings)"
            )
        rows = self._rows.get((context, str(problem_id)))
        if not rows:
            return None
        row = rows.pop(0)
        if not rows:
            del self._rows[(context, str(problem_id))]
        return row

    def clear(self) -> None:
        self._rows.clear()
