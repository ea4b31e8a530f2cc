"""Star-graph path finding (Bachmann & Nagarajan 2024; Prakash & Buvanesh 2025, arXiv 2510.03971).

Generator `star_graph(degree, path_len, num_nodes)`: node labels in [0, num_nodes); a gold path of
`path_len` nodes from source to goal; `degree - 1` decoy arms of `path_len - 1` fresh nodes
hanging off the source; edges shuffled. Prompt and reward follow the cited repo: edges written
`u,v` separated by spaces, answer = comma-separated path in `\\boxed{}`; reward = exact string
match after removing spaces. Sizes go from easy to the zero-reward hard settings.
"""

from __future__ import annotations

import itertools
import math
import random

from fst_jax.tasks.base import Example, Task, Verdict, example_id, register_task, split_of

# name -> (degree, path_len, num_nodes). paper_easy / paper_hard: Deg-5-Path-5 and
# Deg-10-Path-10 with 300 nodes, the settings of "What Can You Do When You Have Zero Rewards During
# RL?" (arXiv 2510.03971), which FST cites; illustration = its Deg-3-Path-3 figure; tiny..hard:
# smaller sizes for small models.
SIZES = {
    "tiny": (2, 2, 10),
    "easy": (2, 3, 20),
    "medium": (3, 4, 50),
    "hard": (5, 5, 100),
    "illustration": (3, 3, 20),
    "paper_easy": (5, 5, 300),
    "paper_hard": (10, 10, 300),
}

PROMPT = (
    "Given a bi-directional graph in the form of space separated edges, output a path from source "
    "node to the destination node in the form of comma separated integers. For this question the "
    "graph is {edges}. The source node is {source}. The destination node is {goal}. "
    "Please reason step by step, and put your final answer within \\boxed{{}}."
)


def distinct_questions(degree: int, path_len: int, num_nodes: int) -> int:
    """How many different prompts the generator can write: labelled graphs (source, gold path,
    decoy arms; arms are interchangeable) × orders of the shuffled edge list."""
    need = 1 + degree * (path_len - 1)
    edges = degree * (path_len - 1)
    return math.perm(num_nodes, need) // math.factorial(degree - 1) * math.factorial(edges)


DEFAULT_SIZES = {"train": 4096, "validation": 256, "test": 256}
SPLIT_SHARE = {"train": 0.9, "validation": 0.05, "test": 0.05}  # base._SPLIT_BUCKETS
FILL = 0.5  # at most this share of a split's distinct questions is requested (random fill)


def star_graph(rng: random.Random, degree: int, path_len: int, num_nodes: int):
    """Returns (edges list[(u, v)] shuffled, source, goal, gold path list[int])."""
    need = 1 + degree * (path_len - 1)
    if degree < 1 or path_len < 2 or num_nodes < need:
        raise ValueError(
            f"star_graph(degree={degree}, path_len={path_len}, num_nodes={num_nodes}) needs "
            f"degree >= 1, path_len >= 2 and num_nodes >= {need}; raise num_nodes."
        )
    nodes = rng.sample(range(num_nodes), need)
    source, rest = nodes[0], nodes[1:]
    path = [source, *rest[: path_len - 1]]
    edges = [(path[i], path[i + 1]) for i in range(path_len - 1)]
    offset = path_len - 1
    for _ in range(degree - 1):
        arm = rest[offset : offset + path_len - 1]
        offset += path_len - 1
        prev = source
        for node in arm:
            edges.append((prev, node))
            prev = node
    rng.shuffle(edges)
    return edges, source, path[-1], path


def diagnose(path_text: str, source: int, goal: int, gold: list[int], edges: list) -> str:
    """Why a predicted path is wrong (first bad hop, decoy arm, endpoints)."""
    try:
        nodes = [int(t) for t in path_text.split(",")]
    except ValueError:
        return f"The answer {path_text!r} is not a comma-separated list of integers."
    adj = {frozenset(e) for e in map(tuple, edges)}
    notes = []
    if not nodes or nodes[0] != source:
        notes.append(f"The path must start at the source node {source}.")
    if not nodes or nodes[-1] != goal:
        notes.append(f"The path must end at the destination node {goal}.")
    for a, b in itertools.pairwise(nodes):
        if frozenset((a, b)) not in adj:
            notes.append(f"{a},{b} is not an edge of the graph.")
            break
    if len(nodes) > 1 and nodes[0] == source and len(gold) > 1 and nodes[1] != gold[1]:
        notes.append(
            f"The first hop {source}->{nodes[1]} enters a dead-end arm; only the arm through "
            f"{gold[1]} reaches {goal}. Tip: walk backward from the destination to the source."
        )
    return " ".join(notes) or "The path is not the correct one."


@register_task("star_graph")
class StarGraphTask(Task):
    """Star-graph search. kwargs: size (name in SIZES) or degree/path_len/num_nodes; mix_easy."""

    name = "star_graph"
    seed_prompt = "Find the path from the source to the destination using only the listed edges."

    def __init__(
        self,
        size: str = "easy",
        degree: int | None = None,
        path_len: int | None = None,
        num_nodes: int | None = None,
        seed: int = 0,
        sizes: dict | None = None,
        mix_easy: str | None = None,
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(
                f"star_graph size {size!r}: use one of {list(SIZES)}, or pass "
                "degree=, path_len=, num_nodes= explicitly."
            )
        d, p, n = SIZES[size]
        self.degree, self.path_len, self.num_nodes = degree or d, path_len or p, num_nodes or n
        if mix_easy is not None and mix_easy not in SIZES:
            raise ValueError(f"mix_easy {mix_easy!r}: use one of {list(SIZES)}.")
        self.mix_easy = SIZES[mix_easy] if mix_easy else None
        star_graph(random.Random(0), self.degree, self.path_len, self.num_nodes)  # validate knobs
        self.seed = seed
        # A small graph space (size "tiny": 1,440 distinct prompts) cannot fill the default
        # split sizes: defaults shrink to what fits; explicit `sizes` that cannot fit are refused.
        space = distinct_questions(self.degree, self.path_len, self.num_nodes)
        space = min(space, 10**12)  # big spaces: exact count irrelevant (and beyond float)
        fits = {k: max(1, int(FILL * SPLIT_SHARE[k] * space)) for k in DEFAULT_SIZES}
        self.sizes = {k: min(v, fits[k]) for k, v in DEFAULT_SIZES.items()}
        for k, v in (sizes or {}).items():
            if k in fits and v > fits[k]:
                raise ValueError(
                    f"star_graph sizes[{k!r}]={v} exceeds what (degree={self.degree}, "
                    f"path_len={self.path_len}, num_nodes={self.num_nodes}) can supply: "
                    f"{space} distinct prompts, ~{int(SPLIT_SHARE[k] * space)} in {k!r}; use "
                    f"<= {fits[k]}, or a larger size (e.g. size='easy')"
                )
            self.sizes[k] = v

    def _load_split(self, split: str) -> list[Example]:
        out, seen, i = [], set(), 0
        while len(out) < self.sizes[split]:
            rng = random.Random(
                f"star:{self.seed}:{self.degree}:{self.path_len}:{self.num_nodes}:{i}"
            )
            knobs = (self.degree, self.path_len, self.num_nodes)
            # Equal-proportion mix of easier instances (2510.03971) on the train split only.
            if self.mix_easy and split == "train" and i % 2 == 1:
                knobs = self.mix_easy
            i += 1
            edges, s, t, path = star_graph(rng, *knobs)
            q = PROMPT.format(edges=" ".join(f"{u},{v}" for u, v in edges), source=s, goal=t)
            ex = Example(
                example_id(self.name, q),
                q,
                ",".join(map(str, path)),
                {
                    "edges": [list(e) for e in edges],
                    "source": s,
                    "goal": t,
                    "degree": knobs[0],
                    "path_len": knobs[1],
                    "num_nodes": knobs[2],
                },
            )
            if split_of(q) == split and ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
            if i > 100 * self.sizes[split] + 10_000:
                raise RuntimeError(f"star_graph: cannot fill split {split!r}; raise num_nodes.")
        return out

    def _verify(self, example: Example, completion: str) -> Verdict:
        gold = example.gold
        m = example.metadata
        idx = completion.rfind("\\boxed{")
        if idx < 0:
            return Verdict(
                0.0,
                "no_answer",
                f"No \\boxed{{}} answer found; put the path in \\boxed{{}}. "
                f"The correct path is {gold}.",
            )
        end = completion.find("}", idx + 7)
        if end < 0:
            return Verdict(
                0.0, "no_answer", f"The last \\boxed{{ is never closed. The correct path is {gold}."
            )
        pred = completion[idx + 7 : end].replace(" ", "")
        if pred == gold:
            return Verdict(1.0, "correct", "The path is correct.")
        why = diagnose(pred, m["source"], m["goal"], [int(x) for x in gold.split(",")], m["edges"])
        return Verdict(
            0.0, "incorrect", f"Your path {pred} is wrong. {why} The correct path is {gold}."
        )
