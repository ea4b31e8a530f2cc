"""Verifier unit tests from hand-written cases (extraction corner cases, closeness, equivalence,
retrieval recall, exact path match), following the original checkers' documented behaviour."""

import math

import pytest

from fst_jax.tasks import Example, Task, Verdict, get_task, list_tasks
from fst_jax.tasks.extract import extract_last_json, is_close, last_boxed, parse_number
from fst_jax.tasks.hover import BM25
from fst_jax.tasks.math import answers_match

# --- \boxed{} ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("so \\boxed{5}.", ("5", "ok")),
        ("\\boxed{1} then \\boxed{2}", ("2", "ok")),  # the LAST box counts
        ("\\boxed{\\frac{1}{2}}", ("\\frac{1}{2}", "ok")),  # nested braces
        ("\\boxed {7}", ("7", "ok")),
        ("\\fbox{3}", ("3", "ok")),
        ("no box here: 5", (None, "no_boxed")),
        ("\\boxed{12", (None, "unclosed")),
        ("\\boxed{1} and \\boxed{\\frac{2}{3}", (None, "unclosed")),
    ],
)
def test_last_boxed(text, want):
    assert last_boxed(text) == want


# --- CodeI/O JSON extraction ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ('The answer is {"output": 3}.', {"output": 3}),
        ('first {"output": 1} then {"output": 2}', {"output": 2}),
        ('{"output": 1} ```json\n{"output": 2}\n``` and later {"x": 3}', {"output": 2}),
        ('{"output": True, "b": None}', {"output": True, "b": None}),  # Python literals
        ("{'output': (1, 2)}", {"output": [1, 2]}),  # tuple / single-quote fallback
        ('{"output": "a}b"}', {"output": "a}b"}),  # brace inside a JSON string
        ('{"output": {"k": [1, {"z": 2}]}}', {"output": {"k": [1, {"z": 2}]}}),
        ('\\boxed{\\{"output": 4\\}}', {"output": 4}),  # escaped braces inside \boxed
    ],
)
def test_extract_last_json(text, want):
    value, reason = extract_last_json(text)
    assert reason == "ok"
    assert value == want


@pytest.mark.parametrize(
    "text, reason_part",
    [
        ('{"output": 3', "no complete JSON"),
        ("no json at all", "no complete JSON"),
        ("{" * 500 + "}" * 500, "nested"),
        ('{"output": "' + "a" * 150_000 + '"}', "characters long"),
        ("{not json}", "could not be parsed"),
    ],
)
def test_extract_last_json_failures(text, reason_part):
    value, reason = extract_last_json(text)
    assert value is None
    assert reason_part in reason


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        (1.0001, 1.0, True),  # within 1e-3 relative
        (1.01, 1.0, False),
        (0.9995, 1.0, False),  # close, but integer parts differ (CodeI/O rule)
        (100.05, 100.0, True),
        (5, 5.0, True),
        (5, 6, False),
        (float("nan"), float("nan"), False),
        (float("inf"), float("inf"), False),
        ([1, 2.0004], [1, 2.0], True),
        ([1, 2], [1, 2, 3], False),
        ({"a": 1.0001, "b": "x"}, {"a": 1.0, "b": "x"}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ("abc", "abc", True),
        ("abc", "abd", False),
        (True, 1, True),  # CodeI/O falls back to ==, and True == 1 in Python
        (None, None, True),
        ([1, 2], (1, 2), True),
    ],
)
def test_is_close(pred, gold, want):
    assert is_close(pred, gold) is want


def test_is_close_deep_structure_does_not_recurse_forever():
    deep = cur = []
    for _ in range(1000):
        nxt: list = []
        cur.append(nxt)
        cur = nxt
    assert is_close(deep, deep) is False  # beyond the depth cap: rejected, no RecursionError


# --- numbers and math equivalence -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("12", 12),
        ("1,234", 1234),
        ("-3.5", -3.5),
        ("$7$", 7),
        ("45\\%", 45),
        ("2.5 m/s", 2.5),
        ("x = 4", 4),
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("-\\frac{1}{2}", -0.5),
        ("3 \\times 10^{5}", 300000),
        ("1.5e3 J", 1500),
        ("the answer is 5", None),
        ("abc", None),
    ],
)
def test_parse_number(text, want):
    got = parse_number(text)
    if want is None:
        assert got is None
    else:
        assert got is not None and math.isclose(float(got), want)


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("1,234", "1234", True),
        ("12.0", "12", True),
        ("13", "12", False),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
        ("1+x", "x+1", True),
        ("2\\pi", "6.28", False),
        ("(1,2)", "(1,2)", True),
        ("\\frac{1}{3}", "0.33", False),
    ],
)
def test_math_answers_match(pred, gold, want):
    assert answers_match(pred, gold) is want


# --- task verifiers on hand-made examples -----------------------------------------------------


def test_math_verifier_statuses():
    task = get_task("math")
    ex = Example("m1", "What is 6*7?", "42", {"solution": "6 × 7 = 42"})
    assert task.verify(ex, "6*7 = 42 so \\boxed{42}") == Verdict(
        1.0, "correct", "Your answer 42 is correct."
    )
    v = task.verify(ex, "\\boxed{41}")
    assert (
        (v.reward, v.status) == (0.0, "incorrect") and "42" in v.feedback and "6 × 7" in v.feedback
    )
    assert task.verify(ex, "It is 42.").status == "no_answer"
    assert task.verify(ex, "\\boxed{42").status == "no_answer"
    assert task.verify(ex, "\\boxed{}").status == "no_answer"
    assert task.verify(ex, "\\boxed{4} ... actually \\boxed{42}").reward == 1.0


def test_physics_verifier_tolerance_and_choices():
    task = get_task("physics")
    ex = Example("p1", "q", {"value": 24.2, "unit": "W", "formula": "P = V^2/R"})
    assert task.verify(ex, "\\boxed{24.2}").reward == 1.0
    assert task.verify(ex, "\\boxed{24.3 W}").reward == 1.0  # within 1% and unit stripped
    assert task.verify(ex, "\\boxed{24.5}").reward == 0.0  # 1.2% off
    v = task.verify(ex, "\\boxed{watts}")
    assert v.status == "unparsable" and "24.2 W" in v.feedback
    mc = Example("p2", "q", {"value": 8.0, "unit": "m", "choice": "D", "formula": "s"})
    assert task.verify(mc, "\\boxed{D}").reward == 1.0
    assert task.verify(mc, "\\boxed{(d)}").reward == 1.0
    assert task.verify(mc, "\\boxed{B}").reward == 0.0


def test_star_graph_exact_match_and_diagnosis():
    task = get_task("star_graph")
    edges = [[0, 1], [1, 2], [0, 3], [3, 4]]
    ex = Example("s", "q", "0,1,2", {"edges": edges, "source": 0, "goal": 2})
    assert task.verify(ex, "\\boxed{0, 1, 2}").reward == 1.0  # spaces removed
    assert task.verify(ex, "\\boxed{0,1,2,}").reward == 0.0  # exact string match only
    v = task.verify(ex, "\\boxed{0,3,4}")
    assert v.status == "incorrect" and "dead-end arm" in v.feedback and "0,1,2" in v.feedback
    v = task.verify(ex, "\\boxed{0,2}")
    assert "0,2 is not an edge" in v.feedback
    assert task.verify(ex, "\\boxed{a,b}").status == "incorrect"
    assert task.verify(ex, "no box").status == "no_answer"


def test_codeio_output_verifier_messages():
    task = get_task("codeio")
    gold = {
        "direction": "output",
        "input": {"x": 1},
        "output": [1, 2.5],
        "code": "",
        "funcname": "f",
    }
    ex = Example("c", "q", gold)
    assert task.verify(ex, 'so {"output": [1, 2.5001]}').status == "success"
    v = task.verify(ex, '{"output": [1, 3]}')
    assert v.status == "failed" and "[Mismatch]" in v.feedback and "[1, 2.5]" in v.feedback
    assert task.verify(ex, '{"result": 1}').feedback == "No field 'output' in the last json!"
    assert task.verify(ex, "[1, 2]").status == "no answer"
    assert task.verify(ex, "```json\n[1, 2.5]\n```").feedback == "The last json is not a dict!"
    assert task.verify(ex, '{"output": [1, 2.5]').status == "no answer"


def test_bm25_against_reference_formula():
    docs = ["alpha beta | beta gamma", "gamma delta", "alpha alpha epsilon"]
    bm = BM25(docs, k1=0.9, b=0.4)
    # Reference: Okapi BM25 with idf = ln(1 + (N - df + 0.5) / (df + 0.5)).
    toks = [d.replace("|", " ").split() for d in docs]
    avg = sum(map(len, toks)) / 3

    def ref(q):
        out = []
        for t in toks:
            s = 0.0
            for w in set(q.split()):
                df = sum(w in u for u in toks)
                if not df:
                    continue
                tf = t.count(w)
                idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
                s += idf * tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * len(t) / avg))
            out.append(s)
        return out

    for q in ("alpha", "gamma", "beta gamma", "alpha epsilon zeta"):
        assert bm.scores(q).tolist() == pytest.approx(ref(q))
    assert bm.search("alpha", 1) == [2]
    assert bm.search("zeta", 3) == []


def test_hover_recall_reward_and_label():
    task = get_task("hover", hops=3)
    ex = task.examples("validation")[0]
    titles, hop1 = ex.gold["titles"], ex.gold["hop1"]
    missing = [t for t in titles if t not in hop1]
    assert missing, "3-hop claims need documents beyond hop 1"
    full = "\n".join(f"Query: {t}" for t in missing)
    v = task.verify(ex, full)
    assert v == Verdict(1.0, "correct", v.feedback) and "Missed" not in v.feedback
    partial = task.verify(ex, f"Query: {missing[0]}") if len(missing) > 1 else None
    if partial is not None:
        assert partial.reward == 0.0 and "Missed: " in partial.feedback
    none = task.verify(ex, "I think it is true.")
    assert none.status == "no_answer" and all(t in none.feedback for t in titles)
    labelled = get_task("hover", hops=3, with_label=True)
    lab = ex.gold["label"]
    wrong = "NOT_SUPPORTED" if lab == "SUPPORTED" else "SUPPORTED"
    assert labelled.verify(ex, f"{full}\nLabel: {lab}").reward == 1.0
    assert labelled.verify(ex, f"{full}\nLabel: {wrong}").reward == 0.0
    assert labelled.verify(ex, full).reward == 0.0


# --- bad input never raises -------------------------------------------------------------------

BAD = [
    ("", "empty"),
    ("   \n", "empty"),
    (None, "empty"),
    (b"\xff\xfe\xfa", "invalid_encoding"),
    ("\ud800 lone surrogate", "invalid_encoding"),
    ("x" * 300_000, "too_long"),
    (12345, "invalid_type"),
]


@pytest.mark.parametrize("name", ["codeio", "math", "hover", "physics", "star_graph"])
def test_bad_completions_give_verdicts(name):
    kw = {"sizes": {"validation": 2, "train": 1, "test": 1}}
    task = get_task(name, **kw)
    ex = task.examples("validation")[0]
    for completion, status in BAD:
        v = task.verify(ex, completion)
        assert (v.reward, v.status) == (0.0, status) and v.feedback
    nasty = [
        "{" * 100_000,
        '{"output": ' + "[" * 5000 + "]" * 5000 + "}",
        "\\boxed{" * 1000,
        "Query: " + "a " * 5000,
        "\\boxed{" + "9" * 5000 + "}",
        b"\\boxed{1}".decode(),
    ]
    for completion in nasty:
        v = task.verify(ex, completion)
        assert isinstance(v, Verdict) and 0.0 <= v.reward <= 1.0


def test_verifier_bug_becomes_verdict():
    task = get_task("star_graph")
    broken = Example("b", "q", "0,1", {})  # malformed row: metadata lacks the graph
    v = task.verify(broken, "\\boxed{0,2}")
    assert (v.reward, v.status) == (0.0, "verifier_error") and "KeyError" in v.feedback
    assert task.verify(broken, "\\boxed{0,1}").reward == 1.0  # the exact match needs no graph


def test_registry_errors():
    assert set(list_tasks()) >= {"codeio", "math", "hover", "hover_hard", "physics", "star_graph"}
    with pytest.raises(KeyError, match="did you mean 'star_graph'"):
        get_task("stargraph")
    with pytest.raises(TypeError, match="get_task\\('math'"):
        get_task("math", difficultyy="lite")
    with pytest.raises(ValueError, match="difficulty"):
        get_task("math", difficulty="impossible")
    with pytest.raises(ValueError, match=r"Unknown split 'valid'.*'validation'"):
        get_task("physics").examples("valid")
    with pytest.raises(ValueError, match="num_nodes >= "):
        get_task("star_graph", degree=5, path_len=5, num_nodes=10)


def test_math_lite_accepts_last_number():
    lite = get_task("math", difficulty="lite")
    assert lite.answer_format == "last_number"
    ex = Example("m", "Eva has 8 books. Then the number of books triples. How many?", "24")
    assert lite.verify(ex, "8 times 3 is 24. So Eva has 24 books.").reward == 1.0
    assert lite.verify(ex, "She has 1,024 books.").status == "incorrect"
    assert lite.verify(ex, "8 times 3 = 25").status == "incorrect"
    assert lite.verify(ex, "24 ... \\boxed{23}").reward == 0.0  # a \boxed{} answer wins
    assert lite.verify(ex, "I do not know.").status == "no_answer"
    strict = get_task("math", difficulty="lite", answer_format="boxed")
    assert strict.verify(ex, "So Eva has 24 books.").status == "no_answer"
    assert get_task("math").verify(ex, "So Eva has 24 books.").status == "no_answer"
    with pytest.raises(ValueError, match="answer_format"):
        get_task("math", answer_format="json")


def test_physics_last_number_format():
    task = get_task("physics", answer_format="last_number")
    ex = Example("p1", "q", {"value": 24.2, "unit": "W", "formula": "P = V^2/R"})
    assert task.verify(ex, "P = 11^2 / 5 = 24.2 W").reward == 1.0
    assert task.verify(ex, "P = 11^2 / 5 = 24.2 W, or maybe 30").reward == 0.0
    assert task.verify(ex, "\\boxed{24.2} not 30").reward == 1.0  # a \boxed{} answer wins
    assert task.verify(ex, "no idea").status == "no_answer"
    mc = Example("p2", "q", {"value": 8.0, "unit": "m", "choice": "D", "formula": "s"})
    assert task.verify(mc, "The answer is D.").reward == 1.0
    assert task.verify(mc, "A or B? I pick B").reward == 0.0
    assert get_task("physics").verify(ex, "= 24.2 W").status == "no_answer"
    with pytest.raises(ValueError, match="answer_format"):
        get_task("physics", answer_format="x")


class _DyingTask(Task):
    """Kills its worker process on 'die' (a verifier crashing hard, e.g. OOM-killed)."""

    name = "dying"
    parallel = "process"

    def _load_split(self, split):
        return []

    def _verify(self, example, completion):
        import multiprocessing
        import os

        if completion == "die" and multiprocessing.parent_process() is not None:
            os._exit(1)
        return Verdict(float(completion == "ok"), "done", completion)


def test_verify_batch_parallel_order_bad_inputs_and_dead_workers():
    task = get_task("math")
    ex = Example("m", "q", "42")
    comps = ["\\boxed{42}", b"\xff", "\\boxed{41}", None, "\\boxed{42}", object(), "x" * 300_000]
    got = task.verify_batch([ex] * len(comps), comps, workers=2)
    assert [v.status for v in got] == [
        "correct", "invalid_encoding", "incorrect", "empty", "correct", "invalid_type", "too_long",
    ]  # fmt: skip
    assert got == [task.verify(ex, c) for c in comps[:5]] + got[5:]
    task.close()
    dying = _DyingTask()
    comps = ["ok", "no", "die", "ok", "ok"]
    got = dying.verify_batch([ex] * 5, comps, workers=2)
    assert [v.reward for v in got] == [1.0, 0.0, 0.0, 1.0, 1.0]
    dying.close()
    with pytest.raises(ValueError, match="one example per completion"):
        task.verify_batch([ex], ["a", "b"])
