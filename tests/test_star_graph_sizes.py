"""Star graph sizes (issue 12, point 6): tiny works with default splits; the paper uses hard."""

from __future__ import annotations

import importlib.util
import itertools
import random
from pathlib import Path

import pytest

from fst_jax.tasks import get_task
from fst_jax.tasks.star_graph import distinct_questions, star_graph

REPO = Path(__file__).resolve().parents[1]


def test_distinct_question_count_matches_brute_force_on_tiny():
    """The closed form against enumerating the generator's outputs for a small space."""
    seen = set()
    for i in range(60_000):
        edges, s, t, _ = star_graph(random.Random(i), 2, 2, 6)
        seen.add((tuple(edges), s, t))
    assert len(seen) == distinct_questions(2, 2, 6) == 6 * 5 * 4 * 2


def test_tiny_builds_every_default_split_disjointly():
    task = get_task("star_graph", size="tiny")
    splits = {k: task.examples(k) for k in ("train", "validation", "test")}
    assert all(len(v) >= 1 for v in splits.values())
    assert len(splits["validation"]) == task.sizes["validation"] >= 30
    ids = [e.id for v in splits.values() for e in v]
    assert len(ids) == len(set(ids))  # unique and disjoint across splits
    for ex in itertools.chain(*splits.values()):
        path = [int(x) for x in ex.gold.split(",")]
        edges = {frozenset(e) for e in ex.metadata["edges"]}
        assert path[0] == ex.metadata["source"] and path[-1] == ex.metadata["goal"]
        assert all(frozenset(p) in edges for p in itertools.pairwise(path))
        assert task.verify(ex, f"\\boxed{{{ex.gold}}}").reward == 1.0


def test_sizes_that_cannot_fit_name_the_ones_that_do():
    with pytest.raises(ValueError, match=r"sizes\['validation'\]=256 exceeds.*use <= 36"):
        get_task("star_graph", size="tiny", sizes={"validation": 256})
    assert get_task("star_graph", size="easy").sizes == {
        "train": 4096, "validation": 256, "test": 256
    }  # fmt: skip


def test_paper_star_graph_uses_the_hard_size():
    spec = importlib.util.spec_from_file_location(
        "cfg_psg", REPO / "experiments/configs/paper_star_graph.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.task.kwargs.size == "paper_hard"
    task = get_task("star_graph", **dict(c.task.kwargs))
    assert (task.degree, task.path_len, task.num_nodes) == (10, 10, 300)
