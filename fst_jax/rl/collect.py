"""One RL step's rollouts: problems × G rows over the exported contexts, sampled or reused.

`collect_rollouts` builds the batch the controller trains on. Row i = p·G + g is rollout g of
problem p; its context slot is ``spread[g]`` (`sampling.prompt_bank.spread_contexts(G, K)`, passed
in by the caller: G/K rollouts per exported context). Without a store every row is sampled in
one call with row ids 0..n−1 — the path every run took before rollout reuse. With a
`fst_jax.rl.reuse.RolloutStore`, each row first takes an unused GEPA rollout of its (context,
problem) from the store; only the rows left are sampled, in one call, each with its own row id
(so a fresh row is the very sample it would have been without reuse) — the per-context counts
stay exactly ``spread``'s and every problem keeps G rollouts. Reused rows carry their stored
reward and θ_c log-probs (π_old), fresh rows the sampler's; both are laid out in the sampler's
training layout at one width, in row order, so groups, advantages and the per-host row blocks of
the train step are formed from the merged batch exactly as from a fully sampled one.

Multi-host: the fresh rows are sampled and verified per host (`rows.RowShardedSampler` /
`RowShardedTask`) and gathered; the store is the same on every host (GEPA's outputs are
gathered too), so every host assembles the same batch and the train step splits it into the
same per-host blocks whatever the mix of reused and fresh rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fst_jax.rl.distill import teacher_view
from fst_jax.rl.reuse import RolloutStore, StoredRollout, layout_rows

ARRAY_FIELDS = ("tokens", "positions", "completion_mask", "logps")


@dataclasses.dataclass
class StepRollouts:
    """The merged batch of one RL step (every field in row order, n = problems × G rows)."""

    rows: list[Any]  # the problem of each row
    group_ids: np.ndarray  # int32[n]: problem index
    ctx_slot: np.ndarray  # int32[n]: exported-context slot
    arrays: dict[str, np.ndarray]  # ARRAY_FIELDS, [n, S]; logps = π_old (raw, sampling temp.)
    rewards: np.ndarray  # f32[n]
    completion_lengths: np.ndarray  # int[n]
    finished: np.ndarray  # bool[n]
    reused: np.ndarray  # bool[n]: taken from the store (not sampled this step)
    sampled: Any  # the sampler's output for the fresh rows (all rows without reuse); None if none
    sample_s: float  # wall time of sampling + verification

    def train_inputs(self) -> dict[str, Any]:
        """`rl.update_on_rollouts`' rollout dict (reuse flags only when something was reused:
        a run without reuse keeps the train step it always had)."""
        roll: dict[str, Any] = dict(self.arrays)
        if self.reused.any():
            roll["reused"] = self.reused
        return roll


def pad_columns(arrays: dict[str, np.ndarray], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """Training-layout arrays (ARRAY_FIELDS) right-padded to `width` columns as the sampler pads."""
    fills = {"tokens": pad_id, "positions": -1, "completion_mask": 0.0, "logps": 0.0}
    out = {}
    for k in ARRAY_FIELDS:
        a = np.asarray(arrays[k])
        extra = width - a.shape[1]
        out[k] = a if extra == 0 else np.pad(a, ((0, 0), (0, extra)), constant_values=fills[k])
    return out


def collect_rollouts(
    *,
    sampler: Any,
    task: Any,
    bank: Any,
    contexts: Sequence[str],
    problems: Sequence[Any],
    spread: np.ndarray,
    params: Any,
    key: jax.Array,
    sampling: Any,
    prompt_idx: np.ndarray | None = None,
    store: RolloutStore | None = None,
    pad_id: int = 0,
    width_multiple: int = 64,
) -> StepRollouts:
    """Sample (or take from `store`) G = len(spread) rollouts per problem; see the module doc.

    `prompt_idx` overrides the bank row each row is sampled under (``fst_distill`` samples the
    student without context); default: the row's context slot. `pad_id` and `width_multiple`
    must match the sampler's padding token and column trimming (reused rows are laid out the
    way it lays out its rows).
    """
    t0 = time.time()
    g = len(spread)
    rows = [ex for ex in problems for _ in range(g)]
    n = len(rows)
    group_ids = np.repeat(np.arange(len(problems), dtype=np.int32), g)
    ctx_slot = np.tile(np.asarray(spread, np.int32), len(problems)).astype(np.int32)
    idx = ctx_slot if prompt_idx is None else np.asarray(prompt_idx, np.int32)
    stored: dict[int, StoredRollout] = {}
    if store is not None:
        for i, ex in enumerate(rows):
            r = store.take(contexts[ctx_slot[i]], ex.id, sampling)
            if r is not None:
                stored[i] = r
    fresh = np.asarray([i for i in range(n) if i not in stored], np.int32)
    out = None
    if fresh.size:
        out = sampler.sample(params, bank, idx[fresh], [rows[i].question for i in fresh], key,
                             sampling, row_ids=fresh)  # fmt: skip
        verdicts = task.verify_batch([rows[i] for i in fresh], out.texts)
    if not stored:  # nothing reused: the sampler's arrays as they are
        arrays = {k: getattr(out, k) for k in ARRAY_FIELDS[:3]}
        arrays["logps"] = out.raw_logps
        rewards = np.asarray([v.reward for v in verdicts], np.float32)
        lengths, finished = np.asarray(out.completion_lengths), np.asarray(out.finished)
        reused = np.zeros(n, bool)
    else:
        mine = list(stored.values())
        longest = max(r.tokens.shape[0] for r in mine)
        width = -(-longest // width_multiple) * width_multiple
        if out is not None:
            width = max(width, np.asarray(out.tokens).shape[1])
        merged: dict[str, np.ndarray] = {}
        rewards = np.zeros(n, np.float32)
        lengths, finished = np.zeros(n, np.int32), np.zeros(n, bool)
        reused = np.zeros(n, bool)
        at = np.asarray(sorted(stored), np.int32)
        reused[at] = True
        laid = layout_rows([stored[i] for i in at], width, pad_id)
        parts = [(at, laid)]
        rewards[at] = [stored[i].reward for i in at]
        lengths[at] = [stored[i].completion_len for i in at]
        finished[at] = [stored[i].finished for i in at]
        if out is not None:
            fresh_arrays = {k: np.asarray(getattr(out, k)) for k in ARRAY_FIELDS[:3]}
            fresh_arrays["logps"] = np.asarray(out.raw_logps)
            parts.append((fresh, pad_columns(fresh_arrays, width, pad_id)))
            rewards[fresh] = [v.reward for v in verdicts]
            lengths[fresh] = np.asarray(out.completion_lengths)
            finished[fresh] = np.asarray(out.finished)
        for k in ARRAY_FIELDS:
            merged[k] = np.empty((n, width), laid[k].dtype)
            for where, a in parts:
                merged[k][where] = a[k]
        arrays = merged
    return StepRollouts(
        rows=rows, group_ids=group_ids, ctx_slot=ctx_slot, arrays=arrays, rewards=rewards,
        completion_lengths=lengths, finished=finished, reused=reused, sampled=out,
        sample_s=time.time() - t0,
    )  # fmt: skip


def train_rollouts(
    r: StepRollouts,
    *,
    teacher_bank: Any = None,
    ref_logps: Any = None,
    ref_params: Any = None,
) -> dict[str, Any]:
    """`rl.update_on_rollouts`' rollout dict for the batch `r`: its training arrays, plus for
    ``fst_distill`` (`teacher_bank`: the step's prompt bank) the teacher view of every row under
    its context, and for the in-loss KL penalty (`ref_logps`, a ``make_logps_fn`` function) the
    reference log-probs of the sampled tokens under `ref_params`."""
    roll = r.train_inputs()
    if teacher_bank is not None:
        roll["teacher"] = teacher_view(teacher_bank, r.ctx_slot, r.rows, r.sampled)
    if ref_logps is not None:
        roll["ref_logps"] = np.asarray(
            ref_logps(ref_params, roll["tokens"], roll["positions"], roll["completion_mask"])
        )
    return roll


def step_metrics(
    r: StepRollouts,
    per_update: Sequence[dict[str, float]],
    stats: dict[str, Any],
    *,
    num_contexts: int,
    reuse: bool,
) -> dict[str, Any]:
    """One RL step's record but for its wall time and data position: ``train/*`` from the
    updates (`update_metrics`), the rollout metrics (`rollout_metrics`), the groups the
    advantage dropped (`stats` of `update_on_rollouts`) and the sampling time."""
    m: dict[str, Any] = {f"train/{k}": v for k, v in update_metrics(per_update).items()}
    m.update(rollout_metrics(r, num_contexts, reuse=reuse))
    m.update({
        "rollout/dropped_groups": stats["dropped_groups"],
        "rollout/num_groups": stats["num_groups"],
        "time/sample_s": r.sample_s,
    })  # fmt: skip
    return m


def rollout_metrics(r: StepRollouts, num_contexts: int, reuse: bool) -> dict[str, Any]:
    """The step's rollout/* and response_length/* records (verl's names where they exist)."""
    lengths = np.asarray(r.completion_lengths)
    m: dict[str, Any] = {
        "rollout/reward_mean": float(r.rewards.mean()),
        "rollout/reward_std": float(r.rewards.std()),
        # verl's names: the share of responses cut at max_new_tokens is clip_ratio
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(1.0 - np.asarray(r.finished).mean()),
        "rollout/num_contexts": num_contexts,
    }
    for j in range(num_contexts):
        sel = r.ctx_slot == j
        m[f"rollout/reward_context_{j}"] = float(r.rewards[sel].mean())
        m[f"rollout/rollouts_context_{j}"] = int(sel.sum())
    if reuse:  # sampler work saved: completion tokens not decoded this step
        m["train/reused_frac"] = float(r.reused.mean())
        m["rollout/reused_rows"] = int(r.reused.sum())
        m["rollout/reused_tokens"] = int(lengths[r.reused].sum())
        m["rollout/sampled_tokens"] = int(lengths[~r.reused].sum())
    return m


def update_metrics(per_update: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's train metrics from its updates' (`update_on_rollouts`): means over updates,
    the last update's counters, and — with reused rows — the mean importance weight ρ of reused
    vs fresh completion tokens, token-weighted over the updates (keys absent when a kind had
    no tokens)."""
    tm = {k: float(np.mean([u[k] for u in per_update])) for k in per_update[0]}
    tm.update({k: per_update[-1][k] for k in ("skipped_total", "learning_rate")})
    tm["updates"] = len(per_update)
    if "tokens_reused" in per_update[0]:
        for k in ("is_weight_reused", "is_weight_fresh", "tokens_reused"):
            del tm[k]
        n_re = np.asarray([u["tokens_reused"] for u in per_update])
        n_fr = np.asarray([u["tokens"] for u in per_update]) - n_re
        for name, n in (("reused", n_re), ("fresh", n_fr)):
            if n.sum() > 0:
                w = np.asarray([u[f"is_weight_{name}"] for u in per_update])
                tm[f"is_weight_{name}"] = float((w * n).sum() / n.sum())
    return tm
