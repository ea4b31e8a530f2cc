"""Offline generators: determinism (also across processes), disjoint splits, an independent
scripted oracle scores 1.0 on every example, random answers score about chance."""

import collections
import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest

from fst_jax.tasks import check_disjoint, get_task, split_of
from fst_jax.tasks.sandbox import SandboxLimits, run_python

SMALL = {"train": 48, "validation": 200, "test": 24}
CONFIGS = [
    ("math", {"difficulty": "lite"}),
    ("math", {"difficulty": "hard"}),
    ("physics", {}),
    ("physics", {"format": "mc"}),
    ("star_graph", {"size": "easy"}),
    ("star_graph", {"size": "hard", "mix_easy": "easy"}),
    ("codeio", {"num_ops": 3}),
    ("codeio", {"mode": "input"}),
    ("hover", {}),
    ("hover_hard", {}),
]


def _digest(name, kw):
    task = get_task(name, sizes=SMALL, **kw)
    blob = json.dumps(
        {s: [e.to_json() for e in task.examples(s)] for s in ("train", "validation", "test")},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.fixture(scope="module")
def tasks():
    return {(n, json.dumps(kw)): get_task(n, sizes=SMALL, **kw) for n, kw in CONFIGS}


def _get(tasks, name, **kw):
    return tasks[(name, json.dumps(kw))]


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_deterministic_and_disjoint(tasks, name, kw):
    task = _get(tasks, name, **kw)
    splits = {s: task.examples(s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == SMALL
    check_disjoint(splits)
    hashes = {
        s: {hashlib.sha256(e.question.encode()).hexdigest() for e in v} for s, v in splits.items()
    }
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]
    for s, exs in splits.items():
        assert all(split_of(e.question) == s for e in exs)
        assert len({e.id for e in exs}) == len(exs)
    again = get_task(name, sizes=SMALL, **kw)
    for s, exs in splits.items():
        assert json.dumps([e.to_json() for e in again.examples(s)]) == json.dumps(
            [e.to_json() for e in exs]
        )
    other_seed = get_task(name, sizes=SMALL, seed=1, **kw).examples("validation")
    assert [e.id for e in other_seed] != [e.id for e in splits["validation"]]


@pytest.mark.slow  # subprocess: a fresh interpreter regenerates every config
def test_byte_identical_across_processes():
    code = (
        "import json, sys; from tests.test_tasks_generators import CONFIGS, _digest;"
        "print(json.dumps([_digest(n, kw) for n, kw in CONFIGS]))"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert json.loads(out.stdout) == [_digest(n, kw) for n, kw in CONFIGS]


# --- independent oracles ----------------------------------------------------------------------


def simulate_story(question: str) -> int:
    """Re-read a generated math story sentence by sentence (independent of the generator)."""
    value = None
    for sent in re.split(r"(?<=[.?])\s+", question):
        if m := re.match(r"\w+ has (\d+) ", sent):
            value = int(m.group(1))
        elif m := re.search(r"(?:buys?|finds?|is given|are given) (\d+) more", sent):
            value += int(m.group(1))
        elif m := re.search(r"gives? (\d+) ", sent):
            value -= int(m.group(1))
        elif "doubles" in sent:
            value *= 2
        elif "triples" in sent:
            value *= 3
        elif m := re.search(r"becomes (\d+) times", sent):
            value *= int(m.group(1))
        elif m := re.search(r"into (\d+) equal piles", sent):
            assert value % int(m.group(1)) == 0
            value //= int(m.group(1))
    return value


def physics_answer(q: str) -> float:
    """Recompute a physics answer from the question text with the textbook formula."""
    nums = [float(x) for x in re.findall(r"(?<![\^\w.])\d+(?:\.\d+)?(?![\w])", q.split("\n")[0])]
    nums = [x for x in nums if x != 9.8]
    g = 9.8
    rules = [
        ("final speed", lambda u, a, t: u + a * t),
        ("How far", lambda u, a, t: u * t + a * t * t / 2),
        ("current of", lambda i, r: i * r),
        ("heater", lambda r, v: v * v / r),
        ("kinetic energy", lambda m, v: m * v * v / 2),
        ("lifted", lambda m, h: m * g * h),
        ("momentum", lambda m, v: m * v),
        ("density", lambda m, v: m / v),
        ("net force", lambda m, a: m * a),
        ("frequency", lambda f, lam: f * lam),
        ("dropped from rest", lambda h: (2 * g * h) ** 0.5),
        ("stick together", lambda m1, v1, m2: m1 * v1 / (m1 + m2)),
    ]
    for key, fn in rules:
        if key in q:
            return fn(*nums)
    raise AssertionError(f"unknown template: {q}")


def bfs_path(edges, s, t):
    adj = collections.defaultdict(list)
    for u, v in edges:
        adj[u].append(v)
        adj[v].append(u)
    prev, frontier = {s: None}, [s]
    while frontier:
        nxt = []
        for u in frontier:
            for v in adj[u]:
                if v not in prev:
                    prev[v] = u
                    nxt.append(v)
        frontier = nxt
    path, cur = [], t
    while cur is not None:
        path.append(cur)
        cur = prev[cur]
    return path[::-1]


def oracle(task, ex) -> str:
    name = task.name
    if name == "math":
        assert simulate_story(ex.question) == int(ex.gold)
        return f"Step by step. \\boxed{{{simulate_story(ex.question)}}}"
    if name == "physics":
        val = physics_answer(ex.question)
        if "choice" in ex.gold:
            lines = re.findall(r"^([A-D])\. ([\d.e+-]+)", ex.question, re.M)
            letter = min(lines, key=lambda x: abs(float(x[1]) - val))[0]
            return f"\\boxed{{{letter}}}"
        return f"The result is \\boxed{{{val:.4f}}} in SI units."
    if name == "star_graph":
        m = ex.metadata
        path = bfs_path(m["edges"], m["source"], m["goal"])
        return "\\boxed{" + ", ".join(map(str, path)) + "}"
    if name == "codeio":
        g = ex.gold
        # independent executor: the sandbox, not the generator's in-process run
        res = run_python(g["code"], g["funcname"], g["input"], SandboxLimits(wall_s=5))
        assert res.status == "ok" and res.value == json.loads(json.dumps(g["output"]))
        key = g["direction"]
        return f"Let me trace. ```json\n{json.dumps({key: g[key]})}\n```"
    if name in ("hover", "hover_hard"):
        titles = ex.gold["titles"]
        docs = [task._doc(t) for t in titles]
        for doc, nxt in zip(docs, titles[1:]):  # each supporting doc names the next hop
            assert nxt in doc
        final = re.search(r"\b(?:in|by|to|for) ([A-Z][\w ]*)\.$", ex.metadata["claim"]).group(1)
        final_in_last = re.search(rf"\b{re.escape(final)}\b", docs[-1].split(" | ", 1)[1])
        final_in_last = final_in_last is not None
        assert final_in_last == (ex.gold["label"] == "SUPPORTED")
        return "\n".join(f"Query: {t}" for t in titles if t not in ex.gold["hop1"])
    raise AssertionError(name)


def _oracle_scores_one(task, name, codeio_examples):
    exs = task.examples("validation")
    if name == "codeio":
        exs = exs[:codeio_examples]  # each oracle answer also re-runs the code in the sandbox
    answers = [oracle(task, e) for e in exs]
    verdicts = task.verify_batch(exs, answers, workers=2)
    bad = [(e.id, v) for e, v in zip(exs, verdicts) if v.reward != 1.0]
    assert not bad, bad[:3]


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_scripted_oracle_scores_one(tasks, name, kw):
    _oracle_scores_one(_get(tasks, name, **kw), name, codeio_examples=8)


@pytest.mark.slow  # ~50 s: two sandbox runs per example (the oracle's and the verifier's)
@pytest.mark.parametrize("name, kw", [c for c in CONFIGS if c[0] == "codeio"])
def test_scripted_oracle_scores_one_on_more_codeio(tasks, name, kw):
    _oracle_scores_one(_get(tasks, name, **kw), name, codeio_examples=40)


# --- random answers score about chance --------------------------------------------------------


def test_star_graph_random_arm_is_one_over_degree(tasks):
    task = _get(tasks, "star_graph", size="easy")
    rng = random.Random(0)
    rewards = []
    for ex in task.examples("validation"):
        m = ex.metadata
        adj = collections.defaultdict(list)
        for u, v in m["edges"]:
            adj[u].append(v)
            adj[v].append(u)
        path = [m["source"], rng.choice(adj[m["source"]])]
        while len(adj[path[-1]]) > 1:  # walk the chosen arm to its end
            path.append(next(n for n in adj[path[-1]] if n != path[-2]))
        rewards.append(task.verify(ex, "\\boxed{" + ",".join(map(str, path)) + "}").reward)
    assert abs(sum(rewards) / len(rewards) - 1 / m["degree"]) < 0.1


def test_physics_mc_random_letter_is_a_quarter(tasks):
    task = _get(tasks, "physics", format="mc")
    rng = random.Random(0)
    exs = task.examples("validation")
    mean = sum(task.verify(e, f"\\boxed{{{rng.choice('ABCD')}}}").reward for e in exs) / len(exs)
    assert abs(mean - 0.25) < 0.1


def test_math_random_near_miss_is_chance(tasks):
    task = _get(tasks, "math", difficulty="hard")
    rng = random.Random(0)
    exs = task.examples("validation")
    mean = sum(
        task.verify(e, f"\\boxed{{{int(e.gold) + rng.randint(-4, 5)}}}").reward for e in exs
    ) / len(exs)
    assert abs(mean - 0.1) < 0.07


def test_codeio_shuffled_answers_match_only_when_equal(tasks):
    task = _get(tasks, "codeio", num_ops=3)
    exs = task.examples("validation")
    others = exs[1:] + exs[:1]
    got = [
        task.verify(e, json.dumps({"output": o.gold["output"]})).reward for e, o in zip(exs, others)
    ]
    want = [
        float(json.dumps(e.gold["output"]) == json.dumps(o.gold["output"]))
        for e, o in zip(exs, others)
    ]
    assert got == want and sum(got) < 0.3 * len(got)


def test_hover_random_queries_equal_no_query_baseline(tasks):
    task = _get(tasks, "hover_hard")
    rng = random.Random(0)
    words = " ".join(task._doc(t) for t in task._titles[:300]).split()
    exs = task.examples("validation")
    base = sum(task.verify(e, "no queries").reward for e in exs) / len(exs)
    rand = sum(
        task.verify(
            e, "\n".join("Query: " + " ".join(rng.sample(words, 3)) for _ in range(3))
        ).reward
        for e in exs
    ) / len(exs)
    assert base == 0.0 and rand < 0.05


def test_lite_math_is_easier_than_hard():
    lite = get_task("math", difficulty="lite", sizes={"validation": 50}).examples("validation")
    hard = get_task("math", difficulty="hard", sizes={"validation": 50}).examples("validation")
    assert (
        max(len(e.metadata["solution"]) for e in lite)
        < min(len(e.metadata["solution"]) for e in hard) * 2
    )
    assert all(e.question.count("Then") == 1 for e in lite)
    assert all(3 <= e.question.count("Then") <= 5 for e in hard)
