"""Run directories as data: records, saved config, GEPA log; grouping by configuration and seed.

Everything the report and the notebooks draw is read from the files a run writes
(``metrics.jsonl`` and ``gepa_log.jsonl``), never from checkpoints, so a report can be made from a
copied or remote (``gs://``) workdir. Runs are grouped by what their saved config
(the ``run/config`` record) says: mode, task, T, K and the plasticity source; seeds of one group
are averaged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fst_jax import metrics, paths
from fst_jax.gepa.lineage import read_gepa_log

# Config fields that make two runs different experiments (seed is what varies inside a group).
GROUP_FIELDS = ("mode", "task", "T", "K", "init_from")
FLAT_FRACTION = "rollout/flat_group_fraction"  # derived: groups dropped for equal rewards


@dataclasses.dataclass
class Run:
    """One workdir. ``config`` is the saved config ({} for runs that predate the record)."""

    name: str
    workdir: str
    records: list[dict[str, Any]]
    config: dict[str, Any]
    gepa_log: list[dict[str, Any]]

    @property
    def mode(self) -> str:
        return str(self.config.get("mode") or _first(self.records, "run/mode") or "run")

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def tasks(self) -> list[str]:
        """The task stream (continual runs) or the one task."""
        t = self.config.get("task", {})
        stream = [s.strip() for s in str(t.get("stream", "")).split(",") if s.strip()]
        if stream:
            return stream
        name = t.get("name") or _first(self.records, "run/task") or ""
        return [s for s in str(name).split(",") if s]

    @property
    def key(self) -> dict[str, Any]:
        """The experiment this run belongs to (everything in GROUP_FIELDS)."""
        c = self.config
        return {
            "mode": self.mode,
            "task": ",".join(self.tasks),
            "T": c.get("rl", {}).get("steps_per_cycle"),
            "K": c.get("gepa", {}).get("k") if self.mode != "rl" else None,
            "init_from": c.get("init_from") or "",
        }

    @property
    def rows_per_step(self) -> int:
        """Rollouts per RL step (problems × G), 0 when the config is unknown."""
        rl = self.config.get("rl", {})
        return int(rl.get("batch_size", 0)) * int(rl.get("group_size", 0))

    def __getitem__(self, key: str) -> Any:
        """Dict-style access (``run["records"]``), as notebooks written for ``load_runs`` use."""
        return getattr(self, key)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of every record holding ``key``; string values ('nan') become NaN.
        Also the derived ``rollout/flat_group_fraction`` (dropped ÷ all groups of a step)."""
        if key == FLAT_FRACTION and not any(key in r for r in self.records):
            s, dropped = metrics.series(self.records, "rollout/dropped_groups")
            _, total = metrics.series(self.records, "rollout/num_groups")
            return s, dropped / np.maximum(total, 1)
        return metrics.series(self.records, key)

    def keys(self) -> set[str]:
        return {k for r in self.records for k in r}


def _first(records: Iterable[Mapping[str, Any]], key: str) -> Any:
    return next((r[key] for r in records if key in r), None)


def load_run(workdir: str | os.PathLike) -> Run:
    """Reads one workdir (local path or URI such as ``gs://bucket/run``)."""
    wd = paths.workdir_path(workdir)
    path = wd / metrics.METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no {metrics.METRICS_FILE} in {workdir}; pass workdirs written by fst-train "
            "(the --workdir of a run)"
        )
    records = paths.read_jsonl(path)
    raw = _first(records, "run/config")
    config = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    return Run(wd.name, str(workdir), records, config, read_gepa_log(workdir))


def load_runs(workdirs: Sequence[str | os.PathLike]) -> dict[str, Run]:
    """Runs by label ``<mode>:<dirname>`` (a suffix keeps labels unique)."""
    if not workdirs:
        raise ValueError("no workdirs given; pass one or more fst-train --workdir directories")
    out: dict[str, Run] = {}
    for wd in workdirs:
        run = load_run(wd)
        label, n = f"{run.mode}:{run.name}", 2
        while label in out:
            label, n = f"{run.mode}:{run.name}#{n}", n + 1
        out[label] = run
    return out


@dataclasses.dataclass
class Group:
    """Runs of one experiment (same GROUP_FIELDS), one per seed."""

    label: str
    key: dict[str, Any]
    runs: list[Run]
    color: str | None = None  # fixed per report by plots.assign_colors

    @property
    def mode(self) -> str:
        return self.key["mode"]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Groups runs by experiment; labels name only the fields that differ between groups."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(json.dumps(run.key, sort_keys=True), []).append(run)
    keys = [json.loads(k) for k in by_key]
    # A field is named when groups differ in it (None = not applicable, e.g. K of an rl run).
    varying = [f for f in GROUP_FIELDS if f != "mode"
               and len({str(k[f]) for k in keys if k[f] is not None}) > 1]  # fmt: skip
    groups = []
    for k, members in by_key.items():
        key = json.loads(k)
        parts = [key["mode"]]
        for f in varying:
            if f == "init_from":
                parts.append(f"from {os.path.basename(str(key[f]).rstrip('/'))}" if key[f] else "")
            elif f == "task":
                parts.append(key[f])
            elif key[f] is not None:
                parts.append(f"{f}={key[f]}")
        label = " ".join(p for p in parts if p)
        groups.append(Group(label, key, sorted(members, key=lambda r: (r.seed, r.name))))
    order = {"rl": 0, "gepa": 1, "fst": 2, "fst_distill": 3}
    return sorted(groups, key=lambda g: (order.get(g.mode, 9), g.label))


def seed_stats(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Mean and standard error over seeds at every x any seed has (union of x, in order).

    Returns x, mean, se (0 where one seed) and n (seeds contributing at each x)."""
    xs = np.unique(np.concatenate([np.asarray(x, np.float64) for x, _ in per_seed] or [[]]))
    mean, se, n = [], [], []
    for x in xs:
        vals = [float(v[np.nonzero(s == x)[0][-1]]) for s, v in per_seed if np.any(s == x)]
        vals = [v for v in vals if np.isfinite(v)]
        mean.append(np.mean(vals) if vals else np.nan)
        se.append(np.std(vals, ddof=1) / np.sqrt(len(vals)) if len(vals) > 1 else 0.0)
        n.append(len(vals))
    return {"x": xs, "mean": np.asarray(mean), "se": np.asarray(se), "n": np.asarray(n)}


def samples_at(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(samples, values) of ``key``: samples = policy rollouts spent on learning before the record
    (RL: problems × G per train step; GEPA: every rollout of its rounds, ``gepa/total_calls``),
    counted in file order so a start-of-run evaluation sits at 0."""
    spent, xs, ys = 0, [], []
    for r in run.records:
        if key in r:
            xs.append(spent)
            ys.append(float(r[key]))
        if metrics.TRAIN_LOSS in r:
            spent += run.rows_per_step
        if "gepa/total_calls" in r:
            spent += int(float(r["gepa/total_calls"]))
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def last_value(run: Run, key: str) -> float:
    """The last logged value of ``key`` (NaN when absent)."""
    _, v = run.series(key)
    return float(v[-1]) if len(v) else float("nan")


def eval_points(records: Sequence[Mapping[str, Any]], k: int = 4) -> dict[str, np.ndarray]:
    """Per-evaluation arrays (step, reward = val/mean@k, kl = val/kl_to_base) where both exist."""
    rew_key, kl_key = metrics.VAL_MEAN.format(k=k), metrics.VAL_KL_TO_BASE
    rows = [r for r in records if rew_key in r and kl_key in r]
    return {
        "step": np.array([r["step"] for r in rows], dtype=np.int64),
        "reward": np.array([float(r[rew_key]) for r in rows]),
        "kl": np.array([float(r[kl_key]) for r in rows]),
    }
