"""The controller's host-side run state, serialised by itself into the checkpoint's JSON item.

Everything a resumed run needs besides the arrays (params, optimizer, RNG key): counters, data
positions, the GEPA population (its own JSON, RNG and reply cache included), the exported
contexts, the running maxima and the evaluations the summary compares. One field list, used both
ways, so a new field cannot be saved and forgotten on restore (or the reverse). The JSON layout
is the one checkpoints have always had (``metrics_offset`` rides along), so older checkpoints
restore.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from fst_jax import evaluation
from fst_jax import gepa as gepa_lib


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
