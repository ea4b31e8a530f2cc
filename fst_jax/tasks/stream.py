"""The run's view of a task's train split: a deterministic stream and the GEPA anchor sets.

The data position is one int per task (it goes into the checkpoint), and every order is a pure
function of (seed, position), so a resumed run sees exactly the problems the uninterrupted run
saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fst_jax.errors import ConfigError

_HELD_OUT_TAG = 12  # seeds the disjoint anchor slice (kept: checkpoints depend on it)


class DataStream:
    """Deterministic epoch-shuffled stream over a task's train split; position is one int."""

    def __init__(self, examples: Sequence[Any], seed: int, position: int = 0) -> None:
        if not examples:
            raise ConfigError("the task's train split is empty")
        self.examples, self.seed, self.position = list(examples), seed, position

    def _at(self, p: int) -> Any:
        n = len(self.examples)
        perm = np.random.default_rng([self.seed, p // n]).permutation(n)
        return self.examples[perm[p % n]]

    def upcoming(self, n: int) -> list[Any]:
        """Exactly the next n problems `take(n)` will return (duplicates kept), not consumed."""
        return [self._at(self.position + i) for i in range(n)]

    def peek(self, n: int) -> list[Any]:
        """The next n problems without consuming them (the GEPA anchor lookahead); unique ids."""
        out, seen, p = [], set(), self.position
        while len(out) < min(n, len(self.examples)):
            ex = self._at(p)
            if ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
            p += 1
        return out

    def take(self, n: int) -> list[Any]:
        out = [self._at(self.position + i) for i in range(n)]
        self.position += n
        return out


def train_split(
    train: Sequence[Any], task_name: str, *, anchors: str, held_out: int, seed: int
) -> tuple[list[Any], list[Any]]:
    """(RL problems, held-out GEPA anchor pool). The pool is empty for ``anchors="lookahead"``;
    for ``"disjoint"`` it is a seeded slice of `held_out` train problems the RL stream never sees
    (the answer-leak control)."""
    train = list(train)
    if anchors != "disjoint":
        return train, []
    if held_out >= len(train):
        raise ConfigError(
            f"gepa.disjoint_size={held_out} (0 = gepa.anchor_size) holds out all {len(train)} "
            f"train problems of {task_name!r}; lower it (or gepa.anchor_size) below the train size"
        )
    held = set(np.random.default_rng([seed, _HELD_OUT_TAG]).permutation(len(train))[:held_out])
    return [e for i, e in enumerate(train) if i not in held], [
        e for i, e in enumerate(train) if i in held
    ]


def anchor_set(
    stream: DataStream, pool: Sequence[Any], *, anchors: str, size: int, cycle: int, seed: int
) -> list[Any]:
    """The cycle's GEPA anchors: the paper's lookahead (the next `size` RL problems), or for
    ``disjoint`` the next `size` of the held-out pool, rotating by cycle."""
    if anchors != "disjoint":
        return stream.peek(size)
    return DataStream(pool, seed, cycle * size).peek(size)


def task_names(config: Any) -> list[str]:
    """The run's tasks in order: ``task.stream`` (comma-separated) or ``task.name``."""
    stream = [s.strip() for s in str(config.task.stream).split(",") if s.strip()]
    return stream or [config.task.name]


def cycle_plan(config: Any, cycle: int) -> tuple[str, int]:
    """(task, RL steps) of `cycle`. A plain run: (its task, T). A stream: each task gets exactly
    ``task.switch_every`` RL steps, in cycles of T that never straddle a switch (a stage's last
    cycle is shorter when T does not divide switch_every), so every GEPA round works on the task
    RL trains on next and a switch starts with a fresh round."""
    names, t = task_names(config), config.rl.steps_per_cycle
    if len(names) == 1:
        return names[0], t
    per_stage = -(-config.task.switch_every // t)
    stage, k = divmod(cycle, per_stage)
    if stage >= len(names):
        raise ConfigError(
            f"cycle {cycle} is past the stream's {len(names)} × {per_stage} cycles; set "
            f"num_cycles={len(names) * per_stage}"
        )
    return names[stage], min(t, config.task.switch_every - k * t)


def stream_cycles(config: Any) -> int:
    """Cycles a task stream takes: len(stream) × ceil(switch_every / T)."""
    return len(task_names(config)) * -(-config.task.switch_every // config.rl.steps_per_cycle)
