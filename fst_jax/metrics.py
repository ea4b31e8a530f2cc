"""Run metrics: JSONL is the source of truth, TensorBoard is a view of it.

Every record is one JSON object per line: ``{"step": int, "time": float, "<group>/<name>": value}``.
Names follow what verl/TRL users read (``train/loss``, ``train/entropy``, ``train/grad_norm``,
``train/kl``, ``rollout/reward_mean``, ``val/mean@4``, ``val/mean@4_running_max``,
``val/kl_to_base``) plus ``gepa/*`` for the fast-weight channel. Only process 0 writes; other
processes get a writer whose methods are no-ops, so the controller never branches on rank.

Resuming: the controller stores :meth:`MetricsWriter.offset` (bytes of JSONL written) in each
checkpoint; on resume :func:`truncate_jsonl` cuts the file back to that offset, so the file of a
resumed run is byte-for-byte the metric stream an uninterrupted run would have written (wall-clock
fields aside).

The workdir may be a URI (gs://...; see `fst_jax.paths`): the JSONL and the TensorBoard events are
then written to a local working copy and uploaded after every record.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fst_jax import paths

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"
# Names the analysis code reads (fst_jax.analysis: report sections and plots).
TRAIN_LOSS = "train/loss"
TRAIN_ENTROPY = "train/entropy"
TRAIN_GRAD_NORM = "train/grad_norm"
REWARD_MEAN = "rollout/reward_mean"

# Names other modules log under; kept here so dashboards and notebooks agree on spelling.
VAL_MEAN = "val/mean@{k}"
VAL_MEAN_RUNNING_MAX = "val/mean@{k}_running_max"
VAL_KL_TO_BASE = "val/kl_to_base"
VAL_KL_TO_INIT = "val/kl_to_init"  # runs started from another run's weights (init_from)
# Fields that differ between two otherwise identical runs (excluded by `comparable_records`).
WALL_CLOCK_KEYS = ("time",)


def _to_builtin(value: Any) -> Any:
    """Converts numpy/jax scalars to JSON builtins; non-finite floats become strings JSON accepts."""
    if isinstance(value, Mapping):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_builtin(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.asarray(value)
        if arr.ndim == 0:
            value = arr.item()
        else:
            return [_to_builtin(v) for v in arr.tolist()]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan" / "inf": valid JSON, and visible rather than dropped
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(
        f"metric value {value!r} of type {type(value).__name__} is not JSON-serialisable; "
        "log numbers, strings, or lists of them"
    )


class MetricsWriter:
    """Appends metric records to ``<workdir>/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
      workdir: run directory or URI (created if needed).
      enabled: whether this process writes; default ``jax.process_index() == 0``.
      tensorboard: also write TensorBoard event files under ``<workdir>/tensorboard``.
      resume_step: when resuming, TensorBoard events with a step above this are purged so curves
        do not double back (the JSONL is cut separately with :func:`truncate_jsonl`).
      wandb_project: also mirror scalars to this Weights & Biases project ("" = off; see
        `fst_jax.wandb_writer`); `run_config` is the run's flat config shown there.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool | None = None,
        tensorboard: bool = True,
        resume_step: int | None = None,
        wandb_project: str = "",
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if enabled is None:
            import jax

            enabled = jax.process_index() == 0
        self.enabled = enabled
        root = paths.workdir_path(workdir)
        self.path = root / METRICS_FILE
        self._log: paths.JsonlLog | None = None
        self._tb = None
        self._tb_stage = None
        self._wandb = None
        if not enabled:
            return
        root.mkdir(parents=True, exist_ok=True)
        self._log = paths.JsonlLog(self.path)
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb_stage = paths.StagedDir(root / TB_DIR)
            self._tb = SummaryWriter(self._tb_stage.local, purge_step=purge)
        if wandb_project:
            from fst_jax.wandb_writer import WandbWriter

            self._wandb = WandbWriter(wandb_project, root, run_config)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Writes one record; returns it (with builtins) so callers can also print it."""
        record = {"step": int(step), "time": time.time(), **_to_builtin(dict(metrics))}
        for key in record:
            if key not in ("step", "time") and "/" not in key:
                raise ValueError(
                    f"metric name {key!r} has no group prefix; use names like 'train/{key}' "
                    "so TensorBoard and the notebooks group it"
                )
        if not self.enabled:
            return record
        self._log.write([record])
        if self._tb is not None:
            for key, value in record.items():
                if key in ("step", "time"):
                    continue
                if isinstance(value, bool | int | float):
                    self._tb.add_scalar(key, float(value), int(step))
            self._tb.flush()
            self._tb_stage.sync()
        if self._wandb is not None:
            self._wandb.log(step, record)
        return record

    def offset(self) -> int:
        """Bytes written to the JSONL so far (stored in checkpoints to make resume exact)."""
        return self._log.offset() if self._log is not None else 0

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
            self._tb_stage.sync()
            self._tb_stage.cleanup()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Cuts a JSONL file back to a checkpoint's offset (metrics.jsonl, gepa_log.jsonl).
truncate_jsonl = paths.truncate_jsonl


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a run's records; ``path`` is a workdir or a JSONL file (local or a URI). Bad lines
    are an error."""
    path = paths.workdir_path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}; pass a workdir written by fst-train")
    return paths.read_jsonl(path)


def series(records: Iterable[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every record holding ``key``, in file order."""
    steps, values = [], []
    for r in records:
        if key in r:
            steps.append(r["step"])
            values.append(float(r[key]))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def comparable_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records without wall-clock fields, for comparing a resumed run with an uninterrupted one."""
    out = []
    for r in records:
        out.append(
            {k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS and not k.startswith("time/")}
        )
    return out
