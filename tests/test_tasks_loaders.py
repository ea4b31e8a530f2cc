"""Real loaders on small local files in the real formats (no network): CodeIO-PyEdu raw rows,
Polaris JSONL/parquet, HoVer release JSON + HF-style rows + wiki-abstract corpus, physics rows;
the three sources (file, HF `datasets`, TFDS array_record); malformed rows; hard subsets."""

import gzip
import json
import os

import pytest

from fst_jax.paths import read_jsonl
from fst_jax.tasks import build_hard_subset, get_task, load_subset
from fst_jax.tasks.loaders import load_rows, write_jsonl

CODEIO_ROWS = [
    {
        "problem_description": "Given a list of integers, return the sum of the squares.",
        "io_requirements": "Input:\n  `nums` (list of int)\nOutput:\n  `return` (int)",
        "refcode": "def main_solution(nums):\n    return sum(n * n for n in nums)",
        "funcname": "main_solution",
        "ios": [
            {"input": {"nums": [1, 2, 3]}, "output": 14},
            {"input": {"nums": [4]}, "output": 16},
            {"input": {"nums": [0, 5]}, "output": 25},
            {"input": {"nums": [9, 9]}, "output": 162},  # a 4th io: only 3 per function are used
        ],
        "source": "pyedu",
        "category": "math",
        "meta": "{}",
    },
    {
        "problem_description": "Compute the area of a circle of radius r.",
        "io_requirements": "Input:\n  `r` (float)\nOutput:\n  `return` (float), rounded to 4 places",
        "refcode": "import math\n\ndef area(r):\n    return round(math.pi * r * r, 4)",
        "funcname": "area",
        "ios": [{"input": {"r": 1.0}, "output": 3.1416}, {"input": {"r": 2.0}, "output": 12.5664}],
        "source": "pyedu",
        "category": "geometry",
        "meta": "{}",
    },
    {
        "problem_description": "Reverse a word and upper-case it.",
        "io_requirements": "Input:\n  `word` (str)\nOutput:\n  `return` (str)",
        "refcode": "def shout(word):\n    return word[::-1].upper()",
        "funcname": "shout",
        "ios": [
            {"input": {"word": "abc"}, "output": "CBA"},
            {"input": {"word": "xy"}, "output": "YX"},
        ],
        "source": "pyedu",
        "category": "strings",
        "meta": "{}",
    },
]


def _all(task):
    return [e for s in ("train", "validation", "test") for e in task.examples(s)]


def _codeio_answer(ex):
    key = ex.gold["direction"]
    return json.dumps({key: ex.gold[key]})


def _check_codeio(task):
    exs = _all(task)
    assert len(exs) == 14  # (3 + 2 + 2 ios) x 2 directions: nothing silently dropped
    assert {e.gold["funcname"] for e in exs} == {"main_solution", "area", "shout"}
    assert any(e.gold["direction"] == "input" for e in exs)
    assert all("Tip: here is a reference code snippet" in e.question for e in exs)
    assert all(v.reward == 1.0 for v in task.verify_batch(exs, [_codeio_answer(e) for e in exs]))
    return exs


@pytest.mark.slow  # imports datasets and tensorflow-datasets
def test_codeio_real_from_file_hf_and_tfds(tmp_path):
    path = tmp_path / "pyedur_raw.jsonl"
    write_jsonl(str(path), CODEIO_ROWS)
    exs = _check_codeio(get_task("codeio", source="real", path=str(path), mode="both"))
    # HF `datasets` path (a local directory is a valid dataset id offline).
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    write_jsonl(str(hf_dir / "data.jsonl"), CODEIO_ROWS)
    hf = _check_codeio(get_task("codeio", source="real", hf_id=str(hf_dir), mode="both"))
    assert sorted(e.id for e in hf) == sorted(e.id for e in exs)
    # TFDS array_record data_source path.
    from fst_jax.tasks.tfds_builder import build_array_record

    name = build_array_record({"train": str(path)}, str(tmp_path / "tfds"))
    tf = _check_codeio(
        get_task(
            "codeio", source="real", tfds_name=name, tfds_dir=str(tmp_path / "tfds"), mode="both"
        )
    )
    assert sorted(e.id for e in tf) == sorted(e.id for e in exs)


def test_codeio_real_input_prediction_is_reexecuted(tmp_path):
    path = tmp_path / "raw.jsonl"
    write_jsonl(str(path), CODEIO_ROWS)
    task = get_task("codeio", source="real", path=str(path), mode="input")
    ex = next(
        e for e in _all(task) if e.gold["funcname"] == "main_solution" and e.gold["output"] == 14
    )
    # A different but feasible input is accepted: 14 = 1 + 4 + 9 = 9 + 4 + 1.
    assert task.verify(ex, '{"input": {"nums": [3, 2, 1]}}').reward == 1.0
    v = task.verify(ex, '{"input": {"nums": [1]}}')
    assert v.status == "failed" and "actually gets a wrong output as 1" in v.feedback
    assert task.verify(ex, '{"input": {"nums": "oops"}}').status == "exception"
    assert task.verify(ex, '{"input": {"n": [1]}}').status == "failed"
    assert task.verify(ex, '{"input": [1, 2]}').status == "no answer"


def test_codeio_input_prediction_sandbox_verdicts():
    task = get_task("codeio", mode="input", sizes={"train": 1, "validation": 1, "test": 1})
    gold = {
        "direction": "input",
        "input": {"n": 1},
        "output": 1,
        "code": "def f(n):\n    import os\n    if n > 5:\n        os.fork()\n    while n < 0:\n        pass\n    return n",
        "funcname": "f",
    }
    from fst_jax.tasks import Example
    from fst_jax.tasks.sandbox import SandboxLimits

    task.limits = SandboxLimits(wall_s=3, cpu_s=1, memory_mb=256)
    ex = Example("x", "q", gold)
    assert task.verify(ex, '{"input": {"n": 1}}').status == "success"
    assert task.verify(ex, '{"input": {"n": 9}}').status == "refused"
    assert task.verify(ex, '{"input": {"n": -1}}').status == "timeout"


def test_math_polaris_jsonl_and_parquet(tmp_path):
    rows = [
        {"problem": f"Compute {a} + {b}.", "answer": str(a + b), "difficulty": "3/8"}
        for a, b in [(1, 2), (5, 7), (10, 30), (2, 2), (8, 9), (11, 4)]
    ]
    rows.append(
        {"problem": "Simplify $\\frac{2}{4}$.", "answer": "\\frac{1}{2}", "difficulty": "1/8"}
    )
    path = tmp_path / "polaris-data-53K.jsonl"
    write_jsonl(str(path), rows)
    task = get_task("math", source="polaris", path=str(path))
    exs = _all(task)
    assert len(exs) == len(rows)
    for e in exs:
        assert task.verify(e, f"\\boxed{{{e.gold}}}").reward == 1.0
    half = next(e for e in exs if e.gold == "\\frac{1}{2}")
    assert task.verify(half, "\\boxed{0.5}").reward == 1.0  # math-verify equivalence
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "polaris.parquet"))
    pt = get_task("math", source="real", path=str(tmp_path / "polaris.parquet"))
    assert sorted(e.id for e in _all(pt)) == sorted(e.id for e in exs)


HOVER_CORPUS = [
    {"title": "Alpha Band", "text": ["Alpha Band is a rock band.", " It was founded by Bo Carr."]},
    {"title": "Bo Carr", "text": ["Bo Carr is a singer born in Dunmore."]},
    {"title": "Dunmore", "text": ["Dunmore is a town in Eastland."]},
    {"title": "Eastland", "text": "Eastland is a country."},
    {"title": "Gamma Films", "text": ["Gamma Films was founded by Hal Ivy."]},
    {"title": "Hal Ivy", "text": ["Hal Ivy is a director born in Jolt."]},
    {"title": "Jolt", "text": ["Jolt is a city in Kelp."]},
]
HOVER_RELEASE = [
    {
        "uid": f"u{i}",
        "claim": claim,
        "supporting_facts": facts,
        "label": label,
        "num_hops": len({f[0] for f in facts}),
        "hpqa_id": "h",
    }
    for i, (claim, facts, label) in enumerate(
        [
            (
                "The founder of Alpha Band was born in a town in Eastland.",
                [["Alpha Band", 1], ["Bo Carr", 0], ["Dunmore", 0]],
                "SUPPORTED",
            ),
            (
                "The founder of Gamma Films was born in a city in Kelp.",
                [["Gamma Films", 0], ["Hal Ivy", 0], ["Jolt", 0]],
                "SUPPORTED",
            ),
            (
                "The founder of Gamma Films was born in Dunmore.",
                [["Gamma Films", 0], ["Hal Ivy", 0]],
                "NOT_SUPPORTED",
            ),  # 2 docs: filtered out
            (
                "Alpha Band's founder was born in a city of Kelp.",
                [["Alpha Band", 1], ["Bo Carr", 0], ["Dunmore", 0], ["Dunmore", 1]],
                "NOT_SUPPORTED",
            ),
        ]
    )
]


def test_hover_release_json_and_hf_rows(tmp_path):
    corpus = tmp_path / "wiki.abstracts.2017.jsonl"
    write_jsonl(str(corpus), HOVER_CORPUS)
    rel = tmp_path / "hover_train_release_v1.1.json"
    rel.write_text(json.dumps(HOVER_RELEASE))
    sizes = {"train": 10, "validation": 10, "test": 10}
    task = get_task(
        "hover",
        source="real",
        path=str(rel),
        corpus_path=str(corpus),
        k_hop1=2,
        k_query=1,
        sizes=sizes,
    )
    exs = _all(task)
    assert len(exs) == 3  # only claims with exactly 3 unique supporting documents
    for e in exs:
        assert len(e.gold["titles"]) == 3
        missing = [t for t in e.gold["titles"] if t not in e.gold["hop1"]]
        assert task.verify(e, "\n".join(f"Query: {t}" for t in missing)).reward == 1.0
    # HF `hover` format: supporting_facts as {key, value}, labels as ClassLabel ints.
    hf_rows = [
        {
            **r,
            "supporting_facts": [{"key": t, "value": s} for t, s in r["supporting_facts"]],
            "label": int(r["label"] == "SUPPORTED"),
        }
        for r in HOVER_RELEASE
    ]
    write_jsonl(str(tmp_path / "hover_hf.jsonl"), hf_rows)
    hf = get_task(
        "hover",
        source="real",
        path=str(tmp_path / "hover_hf.jsonl"),
        corpus_path=str(corpus),
        k_hop1=2,
        k_query=1,
        sizes=sizes,
    )
    assert sorted(e.id for e in _all(hf)) == sorted(e.id for e in exs)
    assert {e.gold["label"] for e in _all(hf)} == {"SUPPORTED", "NOT_SUPPORTED"}


def test_physics_real_rows(tmp_path):
    rows = [
        {"question": "A 2 kg mass accelerates at 3 m/s^2. Force in N?", "answer": "6", "unit": "N"},
        {"question": "Speed of light in vacuum, in m/s?", "answer": "3 \\times 10^{8}"},
        {"question": "Which is a vector?", "answer": "B", "choices": ["mass", "velocity", "time"]},
        {"problem": "Kinetic energy of mass m at speed v. Give E.", "answer": "\\frac{mv^2}{2}"},
    ]
    path = tmp_path / "physics.jsonl"
    write_jsonl(str(path), rows)
    task = get_task("physics", source="real", path=str(path))
    exs = {e.question.split("?")[0].split(".")[0]: e for e in _all(task)}
    assert len(exs) == 4
    by = {k[:10]: v for k, v in exs.items()}
    assert task.verify(by["A 2 kg mas"], "\\boxed{6.0 N}").reward == 1.0
    assert task.verify(by["Speed of l"], "\\boxed{2.998e8}").reward == 1.0
    assert task.verify(by["Which is a"], "\\boxed{B}").reward == 1.0
    assert task.verify(by["Which is a"], "\\boxed{A}").reward == 0.0
    assert task.verify(by["Kinetic en"], "\\boxed{\\frac{1}{2} m v^2}").reward == 1.0  # math-verify
    assert task.verify(by["Kinetic en"], "\\boxed{m v^2}").reward == 0.0


# --- malformed sources ------------------------------------------------------------------------


def test_malformed_rows_name_row_and_field(tmp_path):
    bad = [CODEIO_ROWS[0], {k: v for k, v in CODEIO_ROWS[1].items() if k != "refcode"}]
    path = tmp_path / "bad.jsonl"
    write_jsonl(str(path), bad)
    with pytest.raises(ValueError, match=r"codeio row 1: missing field 'refcode'"):
        get_task("codeio", source="real", path=str(path)).examples("train")
    wrong = [{**CODEIO_ROWS[0], "ios": [{"input": [1, 2], "output": 3}]}]
    write_jsonl(str(path), wrong)
    with pytest.raises(ValueError, match=r"row 0, ios\[0\].input: must be a dict"):
        get_task("codeio", source="real", path=str(path)).examples("train")
    write_jsonl(str(path), [{"problem": 5, "answer": "1"}])
    with pytest.raises(ValueError, match=r"math row 0: field 'problem' should be"):
        get_task("math", source="real", path=str(path)).examples("train")
    path.write_text('{"problem": "x", "answer": "1"}\n{"problem": oops}\n')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        read_jsonl(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"row 1: expected a JSON object"):
        read_jsonl(str(path))
    hov = [{"claim": "c", "supporting_facts": [42]}]
    write_jsonl(str(path), hov)
    corpus = tmp_path / "c.jsonl"
    write_jsonl(str(corpus), HOVER_CORPUS)
    with pytest.raises(ValueError, match=r"hover row 0, supporting_facts\[0\]"):
        get_task("hover", source="real", path=str(path), corpus_path=str(corpus)).examples("train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="exactly one data source"):
        load_rows(path=str(path), hf_id="x")
    with pytest.raises(ValueError, match="corpus_path"):
        get_task("hover", source="real", path=str(path))


def test_one_jsonl_reader_for_data_files_and_run_logs(tmp_path):
    """paths.read_jsonl serves task data (.jsonl, .jsonl.gz, .json list) and run logs alike;
    each error names the file, the line or row, and the fix."""
    rows = [{"a": 1}, {"b": "ü"}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n\n"  # a blank line is skipped
    (tmp_path / "d.jsonl").write_text(text)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.jsonl", "d.jsonl.gz", "d.json"):
        assert read_jsonl(str(tmp_path / name)) == rows, name
    assert load_rows(path=str(tmp_path / "d.jsonl.gz")) == rows
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\n7\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 3: expected a JSON object, got int"):
        read_jsonl(bad)
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON .*fix or delete"):
        read_jsonl(bad)
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"obj.json: expected a JSON list of rows, got dict"):
        read_jsonl(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError, match=r"nope.jsonl does not exist; check the path"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_unreachable_hf_dataset_gives_actionable_error():
    with pytest.raises(RuntimeError, match="Offline\\? Download the files once and pass path="):
        load_rows(hf_id="POLARIS-Project/Polaris-Dataset-53K")


# --- hard subsets -----------------------------------------------------------------------------


def test_build_and_load_hard_subset(tmp_path):
    task = get_task("star_graph", size="medium", sizes={"train": 20, "validation": 10, "test": 5})
    calls = []

    def pass_rate(exs):  # stands in for the controller's model-based pass rate
        calls.append(len(exs))
        return [0.0 if int(e.id[-1], 16) % 2 == 0 else 0.5 for e in exs]

    path = tmp_path / "star_hard.jsonl"
    sub = build_hard_subset(task, pass_rate, str(path))
    assert calls == [20, 10]
    want = {
        s: [e.id for e in task.examples(s) if int(e.id[-1], 16) % 2 == 0]
        for s in ("train", "validation")
    }
    assert {s: [e.id for e in sub.examples(s)] for s in ("train", "validation")} == want
    header = read_jsonl(str(path))[0]["__subset__"]
    assert header["task"] == "star_graph" and header["kwargs"]["size"] == "medium"
    assert header["counts"]["train"]["kept"] == len(want["train"])
    again = get_task(str(path))
    ex = again.examples("train")[0]
    assert again.verify(ex, f"\\boxed{{{ex.gold}}}").reward == 1.0
    assert again.seed_prompt == task.seed_prompt
    with pytest.raises(ValueError, match="Unknown split"):
        again.examples("test")
    with pytest.raises(ValueError, match="one rate per example"):
        build_hard_subset(task, lambda exs: [0.0], str(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match="get_task"):
        from fst_jax.tasks.star_graph import StarGraphTask

        build_hard_subset(StarGraphTask(), pass_rate, str(tmp_path / "y.jsonl"))
    (tmp_path / "nohdr.jsonl").write_text(
        json.dumps({"id": "a", "question": "q", "gold": 1}) + "\n"
    )
    with pytest.raises(ValueError, match="header"):
        load_subset(str(tmp_path / "nohdr.jsonl"))
    with pytest.raises(FileNotFoundError, match="build_hard_subset"):
        load_subset("no_such_subset")
    assert os.path.exists(path)


# --- reasoning-gym bundled offline sources ----------------------------------------------------


def test_gsm_symbolic_source():
    sizes = {"train": 6, "validation": 3, "test": 3}
    task = get_task("math", source="gsm_symbolic", sizes=sizes)
    exs = _all(task)
    assert 1 <= len(exs) <= 12
    again = get_task("math", source="gsm_symbolic", sizes=sizes)
    assert [e.to_json() for e in _all(again)] == [e.to_json() for e in exs]
    for e in exs:
        assert e.metadata["solution"]  # reasoning-gym's answer_cot, used as GEPA feedback
        assert task.verify(e, f"so \\boxed{{{e.gold}}}").reward == 1.0
        assert task.verify(e, f"\\boxed{{{int(e.gold) + 1}}}").reward == 0.0


@pytest.mark.slow  # reasoning-gym generation + sandbox runs
def test_reasoning_gym_codeio_source():
    sizes = {"train": 3, "validation": 1, "test": 1}
    task = get_task("codeio", source="reasoning_gym", sizes=sizes, mode="both")
    exs = _all(task)
    assert exs and all(e.gold["funcname"] == "main_solution" for e in exs)
    for e in exs:
        assert "main_solution" in e.question and "{desc}" not in e.question
    verdicts = task.verify_batch(exs, [_codeio_answer(e) for e in exs])
    assert all(v.reward == 1.0 for v in verdicts), verdicts
