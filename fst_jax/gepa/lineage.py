"""The GEPA log: one JSONL row per reflective iteration and one per round, in ``gepa_log.jsonl``.

Why: a round's decisions (which parent, which minibatch, what the reflection LM proposed, whether
it was accepted and why) otherwise live only in memory and in the checkpoint's population JSON,
so nobody can see how a context was born. The rows are plain data, deterministic given the run
(no wall-clock fields), and the file is cut back on resume exactly like ``metrics.jsonl``: the
controller stores :meth:`GepaLog.offset` in each checkpoint and :func:`truncate` restores it.

Row kinds (``"kind"``):

* ``iteration`` — cycle, step, iteration (global counter), parent id, minibatch ids, parent and
  child minibatch scores and sums, child id (None unless accepted: a rejected child's id is
  reused), child text hash, decision (accepted | rejected | skipped_perfect | skipped_lm),
  reason, rollouts the iteration used; accepted rows also carry the child's text, parents and
  anchor-set mean score.
* ``round`` — per cycle: budget and calls, counts per decision, the re-scored (carried) ids,
  every active candidate's anchor mean, the exported top-K (id, hash, score, text), the seeds
  (first round only) and the reflection LM's usage during the round.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GEPA_LOG_FILE = "gepa_log.jsonl"
_USAGE = ("requests", "retries", "prompt_tokens", "completion_tokens", "cache_hits")


def text_hash(text: str) -> str:
    """Short stable id of a context text (sha256, 12 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _reason(rec: Any, acceptance: str) -> str:
    if rec.decision == "skipped_perfect":
        return "parent scored perfectly on the minibatch; nothing to reflect on"
    if rec.decision == "skipped_lm":
        return f"no usable proposal from the reflection LM ({rec.skip_reason})"
    old, new = sum(rec.parent_scores), sum(rec.child_scores)
    rule = ">" if acceptance == "strict_improvement" else ">="
    # accepted / rejected (or a child that passed but could not be scored within the budget)
    return f"{rec.decision}: child minibatch sum {new:g} vs parent {old:g} (needs {rule})"


def round_rows(
    report: Any,
    population: Any,
    exported: Sequence[Any],
    *,
    step: int,
    usage: Mapping[str, int],
    acceptance: str = "strict_improvement",
) -> list[dict[str, Any]]:
    """The log rows of one finished round (``report`` from ``run_round``, ``exported`` from
    ``export_top_k``, ``usage`` the reflection-LM counters spent during the round)."""
    means = population.mean_scores()
    rows: list[dict[str, Any]] = []
    for rec in report.records:
        row = {
            "kind": "iteration", "cycle": report.cycle, "step": int(step),
            "iteration": rec.iteration, "parent": rec.parent, "minibatch": list(rec.minibatch),
            "parent_scores": list(rec.parent_scores), "parent_sum": sum(rec.parent_scores),
            "child_scores": None if rec.child_scores is None else list(rec.child_scores),
            "child_sum": None if rec.child_scores is None else sum(rec.child_scores),
            "child": rec.child,
            "child_hash": None if rec.child_text is None else text_hash(rec.child_text),
            "decision": rec.decision, "reason": _reason(rec, acceptance), "calls": rec.calls,
        }  # fmt: skip
        if rec.decision == "accepted":
            cand = population.candidates[rec.child]
            row.update(child_text=cand.text, child_parents=list(cand.parents),
                       child_anchor_mean=means.get(rec.child))  # fmt: skip
        rows.append(row)
    round_row = {
        "kind": "round", "cycle": report.cycle, "step": int(step), "budget": report.budget,
        "calls_used": report.calls_used, "total_calls": report.total_calls,
        "rescore_calls": report.rescore_calls, "rescored": list(report.rescored),
        "iterations": report.iterations, "accepted": report.accepted, "rejected": report.rejected,
        "skipped_perfect": report.skipped_perfect, "skipped_lm": report.skipped_lm,
        "unaffordable": getattr(report, "unaffordable", 0),
        "pool_size": report.pool_size, "front": list(report.front),
        "best_mean": report.best_mean, "front_mean": report.front_mean,
        "anchor_means": {str(c): m for c, m in sorted(means.items())},
        "exported": [{"id": e.id, "hash": text_hash(e.text), "mean_score": e.mean_score,
                      "on_front": e.on_front, "text": e.text} for e in exported],
        "usage": {k: int(usage.get(k, 0)) for k in _USAGE},
    }  # fmt: skip
    # The roots of the lineage tree, on every round row so a log read from any cycle has them.
    round_row["seeds"] = [{"id": c.id, "hash": text_hash(c.text), "text": c.text}
                          for c in population.candidates if not c.parents]  # fmt: skip
    rows.append(round_row)
    return rows


def usage_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Reflection-LM usage between two snapshots of ``PopulationState.counters`` (``lm_*``)."""
    return {k: int(after.get(f"lm_{k}", 0)) - int(before.get(f"lm_{k}", 0)) for k in _USAGE}


class GepaLog:
    """Appends rows to ``<workdir>/gepa_log.jsonl`` (process 0 only; a no-op elsewhere), through
    `fst_jax.paths.JsonlLog` like ``metrics.jsonl`` (a URI workdir is uploaded after every
    round). The file is created on the first row: an rl run leaves no empty log behind."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True) -> None:
        from fst_jax import paths

        self.enabled = enabled
        self.path = paths.workdir_path(workdir) / GEPA_LOG_FILE
        self._log = paths.JsonlLog(self.path, lazy=True, ensure_ascii=False) if enabled else None

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        if self._log is not None:
            self._log.write(rows)

    def offset(self) -> int:
        """Bytes written so far (stored in checkpoints; :func:`truncate` restores it)."""
        return self._log.offset() if self._log is not None else 0

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def truncate(workdir: str | os.PathLike, offset: int | None) -> None:
    """Cuts the log back to ``offset`` bytes (rows of cycles after the checkpoint get redone).
    ``None`` (a checkpoint written before the log existed) empties it: nothing in it predates
    that checkpoint."""
    from fst_jax import paths

    paths.truncate_jsonl(paths.workdir_path(workdir) / GEPA_LOG_FILE, offset or 0)


def read_gepa_log(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The log's rows ([] when the run wrote none, e.g. mode rl). Works on local paths and URIs."""
    from fst_jax import paths

    path = paths.workdir_path(workdir) / GEPA_LOG_FILE
    return paths.read_jsonl(path) if path.exists() else []
