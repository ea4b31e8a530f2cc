"""Hard subsets: filter a task's examples by a model's pass rate and save them as a data file.

Why: HoVer-hard-style sets (the FST paper's HoVer-hard: claims the base policy fails) keep only
problems the base policy fails. The pass rates come from the caller (the controller samples the model k times per
problem); this module only filters, writes a self-describing JSONL file (a header line naming
the source task and its kwargs, then one example per line with its split and pass rate) and
loads it back as a Task whose verifier is the source task's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from fst_jax.paths import read_jsonl
from fst_jax.tasks.base import (
    Example,
    Task,
    Verdict,
    build_registered_task,
    check_disjoint,
    check_split_name,
)
from fst_jax.tasks.loaders import write_jsonl


def get_task(name: str, **kwargs) -> Task:
    """Build a task by registry name, or load a saved subset file (`*.jsonl` or a path).

    It lives here, above the registry in `base`, so `base` never imports this module back."""
    if name.endswith(".jsonl") or os.sep in name:
        return load_subset(name, **kwargs)
    return build_registered_task(name, **kwargs)


DATA_DIR = os.path.join(os.path.dirname(__file__), "data", "hard")
HEADER_KEY = "__subset__"


def build_hard_subset(
    task: Task,
    pass_rate_fn: Callable[[list[Example]], Sequence[float]],
    path: str,
    splits: Sequence[str] = ("train", "validation"),
    max_pass_rate: float = 0.0,
) -> SubsetTask:
    """Keep examples whose pass rate <= max_pass_rate; write them to `path`; return the subset."""
    spec = getattr(task, "spec", None)
    if spec is None:
        raise ValueError(
            "build_hard_subset needs a task made by get_task(name, **kwargs), so the "
            "subset file can rebuild its verifier."
        )
    rows, counts = [], {}
    for split in splits:
        check_split_name(split, task.splits)
        exs = task.examples(split)
        rates = list(pass_rate_fn(exs))
        if len(rates) != len(exs):
            raise ValueError(
                f"pass_rate_fn returned {len(rates)} rates for {len(exs)} examples of "
                f"split {split!r}; return one rate per example."
            )
        kept = 0
        for ex, rate in zip(exs, rates):
            rate = float(rate)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"pass rate {rate} for {ex.id} is outside [0, 1].")
            if rate <= max_pass_rate:
                rows.append({"split": split, "pass_rate": rate, **ex.to_json()})
                kept += 1
        counts[split] = {"total": len(exs), "kept": kept}
    header = {
        HEADER_KEY: {
            "task": spec[0],
            "kwargs": spec[1],
            "max_pass_rate": max_pass_rate,
            "counts": counts,
        }
    }
    write_jsonl(path, [header, *rows])
    return load_subset(path)


class SubsetTask(Task):
    """Examples from a subset file; verification delegated to the source task."""

    def __init__(self, path: str, base: Task, rows: list[dict], info: dict):
        super().__init__()
        self.path, self.base, self.info = path, base, info
        self.name = f"{base.name}@{os.path.splitext(os.path.basename(path))[0]}"
        self.seed_prompt = base.seed_prompt
        self.parallel = base.parallel
        self.splits = tuple(sorted({r["split"] for r in rows})) or ("train",)
        self._by_split: dict[str, list[Example]] = {}
        for n, row in enumerate(rows, 2):
            ex = Example.from_json(row, where=f"{path}, line {n}")
            self._by_split.setdefault(row["split"], []).append(ex)
        check_disjoint(self._by_split)

    def _load_split(self, split: str) -> list[Example]:
        return self._by_split.get(split, [])

    def _verify(self, example: Example, completion: str) -> Verdict:
        return self.base.verify(example, completion)


def load_subset(name_or_path: str, **overrides) -> SubsetTask:
    """Load a subset by file path, or by name from fst_jax/tasks/data/hard/<name>.jsonl."""
    path = name_or_path
    if not os.path.exists(path):
        cand = os.path.join(
            DATA_DIR, name_or_path if name_or_path.endswith(".jsonl") else name_or_path + ".jsonl"
        )
        if not os.path.exists(cand):
            have = (
                sorted(f[:-6] for f in os.listdir(DATA_DIR) if f.endswith(".jsonl"))
                if os.path.isdir(DATA_DIR)
                else []
            )
            raise FileNotFoundError(
                f"No subset file {name_or_path!r} (also looked in {DATA_DIR}; "
                f"available: {have}). Build one with build_hard_subset()."
            )
        path = cand
    rows = read_jsonl(path)
    if not rows or HEADER_KEY not in rows[0]:
        raise ValueError(
            f"{path}: first line must be the {HEADER_KEY!r} header written by "
            "build_hard_subset (it names the source task)."
        )
    info = rows[0][HEADER_KEY]
    for n, row in enumerate(rows[1:], 2):
        if "split" not in row:
            raise ValueError(f"{path}, line {n}: missing field 'split'.")
    base = get_task(info["task"], **{**info.get("kwargs", {}), **overrides})
    return SubsetTask(path, base, rows[1:], info)
