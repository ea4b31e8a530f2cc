"""Tasks: examples from named splits + verifiers returning reward and GEPA feedback.

`get_task(name, **kwargs)`, `list_tasks()`. Registered: codeio, math, hover, hover_hard,
physics, star_graph. The offline low-but-non-zero-reward config for SmolLM2-135M-Instruct is
`get_task("math", difficulty="lite")` (see README of this package: fst_jax/tasks/README.md).
"""

from fst_jax.tasks import codeio, hover, math, physics, star_graph  # noqa: F401  (registration)
from fst_jax.tasks.base import (
    SPLITS,
    Example,
    Task,
    Verdict,
    check_disjoint,
    list_tasks,
    register_task,
    split_of,
)
from fst_jax.tasks.subsets import SubsetTask, build_hard_subset, get_task, load_subset

__all__ = [
    "SPLITS",
    "Example",
    "SubsetTask",
    "Task",
    "Verdict",
    "build_hard_subset",
    "check_disjoint",
    "get_task",
    "list_tasks",
    "load_subset",
    "register_task",
    "split_of",
]
