"""The controller's host-side run state, serialised by itself into the checkpoint's JSON item.

Everything a resumed run needs besides the arrays (params, optimizer, RNG key): counters, data
positions, the GEPA population (its own JSON, RNG and reply cache included), the exported
contexts, the running maxima and the evaluations the summary compares. One field list, used both
ways, so a new field cannot be saved and forgotten on restore (or the reverse). The JSON layout
is the one checkpoints have always had (``metrics_offset`` rides along), so older checkpoints
restore.

`save_run` / `restore_run` put it into a checkpoint beside the arrays (train state, RNG key) and
back, cutting ``metrics.jsonl`` and ``gepa_log.jsonl`` to what the checkpoint had seen, so the
records after it are redone rather than doubled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from fst_jax import checkpoint as ckpt_lib
from fst_jax import evaluation, metrics, paths
from fst_jax import gepa as gepa_lib
from fst_jax.errors import ConfigError
from fst_jax.gepa import lineage

log = logging.getLogger("fst_jax.controller")  # the loop's log: its resume messages


@dataclasses.dataclass
class RunState:
    population: Any  # gepa.PopulationState
    exported: list[str]  # the top-K contexts in the prompt bank, best first
    positions: dict[str, int]  # data position per task
    task_running_max: dict[str, evaluation.RunningMax]  # per task of a stream
    step: int = 0
    cycle: int = 0
    running_max: evaluation.RunningMax = dataclasses.field(default_factory=evaluation.RunningMax)
    last_eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    first_eval: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def new(
        cls, task_names: Iterable[str], seed_prompt: str, *, seed: int, minibatch_size: int
    ) -> RunState:
        names = list(task_names)
        return cls(
            population=gepa_lib.PopulationState.new(
                [seed_prompt], seed=seed, minibatch_size=minibatch_size
            ),
            exported=[seed_prompt],
            positions=dict.fromkeys(names, 0),
            task_running_max={n: evaluation.RunningMax() for n in names},
        )

    def to_json(self, metrics_offset: int) -> dict[str, Any]:
        """The checkpoint's ``host`` item (JSON builtins only)."""
        return dict(
            step=self.step, cycle=self.cycle, positions=dict(self.positions),
            population=self.population.to_json(), exported=list(self.exported),
            running_max=self.running_max.value, last_eval=self.last_eval,
            task_running_max={n: r.value for n, r in self.task_running_max.items()},
            first_eval=self.first_eval, metrics_offset=int(metrics_offset),
        )  # fmt: skip

    @classmethod
    def from_json(cls, h: dict[str, Any], task_names: Iterable[str]) -> tuple[RunState, int]:
        """(state, metrics_offset) from a ``host`` item; tasks without a stored running max
        (checkpoints written before streams had one) start fresh."""
        trm = {n: evaluation.RunningMax() for n in task_names}
        for n, v in h.get("task_running_max", {}).items():
            trm[n] = evaluation.RunningMax(v)
        state = cls(
            population=gepa_lib.PopulationState.from_json(h["population"]),
            exported=list(h["exported"]), positions=dict(h["positions"]), task_running_max=trm,
            step=h["step"], cycle=h["cycle"], running_max=evaluation.RunningMax(h["running_max"]),
            last_eval=h["last_eval"], first_eval=h["first_eval"],
        )  # fmt: skip
        return state, int(h["metrics_offset"])


def save_run(
    checkpointer: ckpt_lib.Checkpointer,
    rs: RunState,
    train_state: Any,
    key: jax.Array,
    *,
    metrics_offset: int,
    gepa_log_offset: int,
) -> None:
    """One checkpoint at ``rs.step``: arrays (train state, RNG key) + the ``host`` JSON item."""
    host = rs.to_json(metrics_offset)
    host["gepa_log_offset"] = gepa_log_offset  # gepa_log.jsonl: cut back on resume
    checkpointer.save(
        rs.step, {"train": train_state, "rng": ckpt_lib.key_to_data(key)}, {"host": host}
    )


def restore_run(
    checkpointer: ckpt_lib.Checkpointer,
    workdir: str | os.PathLike,
    train_state: Any,
    key: jax.Array,
    task_names: Iterable[str],
    *,
    resume: str,
    is_main: bool,
) -> tuple[Any, jax.Array, RunState] | None:
    """(train state, key, run state) of the latest checkpoint, or None when there is none.
    `train_state` / `key` are the fresh run's (their shapes and shardings are what is restored
    into). On process 0 the run's logs are cut back to the checkpoint (none: emptied — the
    attempt that wrote them died before its first checkpoint). ``resume="never"`` with a
    checkpoint present is a ConfigError naming the fix."""
    latest = checkpointer.latest_step()
    workdir = paths.workdir_path(workdir)  # local or a URI (gs://...)
    path = workdir / metrics.METRICS_FILE
    if latest is None:
        if is_main and path.exists() and path.stat().length:
            # A previous attempt died before its first checkpoint: its records get redone.
            log.warning("no checkpoint in %s; restarting %s from scratch", workdir, path)
            metrics.truncate_jsonl(path, 0)
        if is_main:
            lineage.truncate(workdir, 0)
        return None
    if resume == "never":
        raise ConfigError(
            f"{checkpointer.directory} already holds checkpoints (latest step {latest}) "
            "and config.resume=never; use a fresh --workdir or --config.resume=auto"
        )
    abstract = ckpt_lib.abstract_like({"train": train_state, "rng": ckpt_lib.key_to_data(key)})
    restored, meta = checkpointer.restore(abstract)
    # Through the host: the restored key is committed to one local device, which a jit over
    # a multi-process mesh rejects; a fresh (uncommitted) key matches the unresumed run.
    key = ckpt_lib.key_from_data(np.asarray(jax.device_get(restored["rng"])))
    rs, offset = RunState.from_json(meta["host"], task_names)
    if is_main:  # drop records written after this checkpoint (they will be redone)
        metrics.truncate_jsonl(path, offset)
        lineage.truncate(workdir, meta["host"].get("gepa_log_offset"))
    log.info("resumed from %s at step %d (cycle %d)", checkpointer.directory, rs.step, rs.cycle)
    return restored["train"], key, rs
