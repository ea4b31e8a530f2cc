"""CodeIO: predict a function's output (or a feasible input) and answer as one JSON object.

Verifier = CodeI/O's checker (the CodeI/O paper's released evaluation): last complete JSON, key `output` /
`input`, `is_close` for outputs; input predictions are re-executed against the reference code
in the sandbox. Sources:
  * "generated" (default, offline): a seeded generator composing small integer / list / string
    operations into a trusted function; the gold output comes from running it.
  * "reasoning_gym": the CodeIO items bundled in the `reasoning-gym` wheel; gold outputs come
    from running each item's input generator and reference code in the sandbox.
  * real: hkust-nlp/CodeIO-PyEdu-Reasoning-Raw rows (`problem_description`, `io_requirements`,
    `refcode`, `funcname`, `ios`) from a local file, HF id, or TFDS array_record.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import random
from typing import Any

from fst_jax.tasks.base import Example, Task, Verdict, example_id, register_task, split_of
from fst_jax.tasks.extract import extract_last_json, is_close
from fst_jax.tasks.loaders import load_rows, require
from fst_jax.tasks.sandbox import SandboxLimits, run_python

HF_RAW_ID = "hkust-nlp/CodeIO-PyEdu-Reasoning-Raw"
MAX_INPUT_JSON_CHARS = 10_000

_OUTPUT_Q = (
    "You are given a Python function and an input. Predict the output without writing code.\n\n"
    "```python\n{code}\n```\n\nInput: {inp}\n\n"
    'Give the final answer as JSON: {{"output": <your output>}}'
)
_INPUT_Q = (
    "You are given a Python function and an output. Predict an input that produces this output, "
    "without writing code.\n\n```python\n{code}\n```\n\nOutput: {out}\n\n"
    'Give the final answer as JSON: {{"input": {{<argument name>: <value>, ...}}}}'
)
_REAL_OUTPUT_Q = (
    "You are given a question that requires some input and output variables as follows:\n\n"
    "{desc}\n\nThe input and output requirements are as follows:\n\n{io}\n\n"
    "Given the following input:\n\n{inp}\n\nPredict the output without writing any code. "
    "Tip: here is a reference code snippet for this question.\n\n```python\n{code}\n```\n\n"
    'Put the final answer in the json format {{"output": <your output>}}.'
)
_REAL_INPUT_Q = (
    "You are given a question that requires some input and output variables as follows:\n\n"
    "{desc}\n\nThe input and output requirements are as follows:\n\n{io}\n\n"
    "Given the following output:\n\n{out}\n\nPredict a feasible input without writing any code. "
    "Tip: here is a reference code snippet for this question.\n\n```python\n{code}\n```\n\n"
    'Put the final answer in the json format {{"input": <dict of argument names to values>}}.'
)

_FUNC_NAMES = ("transform", "compute", "process", "mystery", "solve", "combine", "step")
_LETTERS = "abcdefghij"


def _int_ops(rng: random.Random) -> str:
    k = rng.randint(2, 9)
    return rng.choice(
        [
            f"x = x + {k}",
            f"x = x * {rng.randint(2, 4)}",
            f"x = x - {k}",
            f"x = x // {rng.randint(2, 4)}",
            f"x = x % {k}",
            f"if x > {k}:\n        x = x - {k}\n    else:\n        x = x + {rng.randint(1, 5)}",
            f"for i in range({rng.randint(2, 4)}):\n        x = x + i",
        ]
    )


def _list_ops(rng: random.Random) -> str:
    k = rng.randint(1, 5)
    return rng.choice(
        [
            f"xs = [v * {rng.randint(2, 3)} for v in xs]",
            f"xs = [v + {k} for v in xs]",
            f"xs = [v for v in xs if v > {k}]",
            "xs = xs[::-1]",
            "xs = sorted(xs)",
            "xs = xs + xs[:1]",
            f"xs = [v % {k + 1} for v in xs]",
        ]
    )


def _str_ops(rng: random.Random) -> str:
    a, b = rng.sample(_LETTERS, 2)
    return rng.choice(
        [
            "s = s[::-1]",
            "s = s.upper()",
            "s = s + s[0]",
            f"s = s.replace('{a}', '{b}')",
            "s = s[1:]",
            f"s = '{a}' + s",
        ]
    )


def generate_function(rng: random.Random, num_ops: int) -> tuple[str, str, dict]:
    """A trusted small function (source, name, example kwargs) composed of `num_ops` steps."""
    kind = rng.choice(["int", "list", "str"])
    name = rng.choice(_FUNC_NAMES)
    if kind == "int":
        arg, inp, ops = "x", {"x": rng.randint(0, 20)}, [_int_ops(rng) for _ in range(num_ops)]
        ret = rng.choice(["x", "x * 2", "x + 1"])
    elif kind == "list":
        arg = "xs"
        inp = {"xs": [rng.randint(0, 9) for _ in range(rng.randint(2, 5))]}
        ops = [_list_ops(rng) for _ in range(num_ops)]
        ret = rng.choice(["xs", "sum(xs)", "len(xs)"])
    else:
        arg = "s"
        inp = {"s": "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))}
        ops = [_str_ops(rng) for _ in range(num_ops)]
        ret = rng.choice(["s", f"s.count('{rng.choice(_LETTERS)}')", "len(s)"])
    body = "\n".join("    " + op for op in ops)
    return f"def {name}({arg}):\n{body}\n    return {ret}", name, inp


def run_trusted(code: str, funcname: str, kwargs: dict) -> Any:
    """Run a function we generated ourselves (no model text) in-process."""
    ns: dict = {}
    exec(code, ns)
    return ns[funcname](**json.loads(json.dumps(kwargs)))


@register_task("codeio")
class CodeIOTask(Task):
    """CodeI/O output/input prediction. kwargs: source, mode ('output'|'input'|'both'), sizes."""

    name = "codeio"
    parallel = "thread"  # input prediction runs one sandbox process per verification
    _transient = ("_all",)
    seed_prompt = "Trace the code step by step, then give the final answer as one JSON object on the last line."

    def __init__(
        self,
        source: str = "generated",
        mode: str = "output",
        num_ops: int = 2,
        seed: int = 0,
        sizes: dict | None = None,
        path: str | None = None,
        hf_id: str | None = None,
        tfds_name: str | None = None,
        tfds_dir: str | None = None,
        limits: SandboxLimits | None = None,
    ):
        super().__init__()
        if source not in ("generated", "reasoning_gym", "real"):
            raise ValueError(
                f"codeio source {source!r}: use 'generated', 'reasoning_gym' or 'real'."
            )
        if mode not in ("output", "input", "both"):
            raise ValueError(f"codeio mode {mode!r}: use 'output', 'input' or 'both'.")
        self.source, self.mode, self.num_ops, self.seed = source, mode, num_ops, seed
        self.sizes = {"train": 2048, "validation": 128, "test": 128, **(sizes or {})}
        self.real = {"path": path, "hf_id": hf_id, "tfds_name": tfds_name, "tfds_dir": tfds_dir}
        if source == "real" and not any(self.real.values()):
            self.real["hf_id"] = HF_RAW_ID
        self.limits = limits or SandboxLimits()
        self._all: list[Example] | None = None

    # --- examples -------------------------------------------------------------------------
    def _directions(self, rng: random.Random) -> list[str]:
        if self.mode == "both":
            return [rng.choice(["output", "input"])]
        return [self.mode]

    def _make(
        self,
        direction: str,
        code: str,
        funcname: str,
        inp: dict,
        out: Any,
        meta: dict,
        real: dict | None = None,
    ) -> Example:
        inp_s = json.dumps(inp, sort_keys=True)
        out_s = json.dumps(out)
        if real is None:
            q = (
                _OUTPUT_Q.format(code=code, inp=inp_s)
                if direction == "output"
                else _INPUT_Q.format(code=code, out=out_s)
            )
        else:
            fmt = _REAL_OUTPUT_Q if direction == "output" else _REAL_INPUT_Q
            q = fmt.format(desc=real["desc"], io=real["io"], code=code, inp=inp_s, out=out_s)
        gold = {
            "direction": direction,
            "input": inp,
            "output": out,
            "code": code,
            "funcname": funcname,
        }
        return Example(example_id(self.name, q), q, gold, {**meta, "direction": direction})

    def _load_split(self, split: str) -> list[Example]:
        if self.source == "generated":
            return self._generated(split)
        if self._all is None:
            self._all = self._reasoning_gym() if self.source == "reasoning_gym" else self._real()
        exs = [e for e in self._all if split_of(e.question) == split]
        return exs[: self.sizes[split]]

    def _generated(self, split: str) -> list[Example]:
        out, seen, i = [], set(), 0
        while len(out) < self.sizes[split]:
            rng = random.Random(f"codeio:{self.seed}:{self.num_ops}:{i}")
            i += 1
            code, fname, inp = generate_function(rng, self.num_ops)
            try:
                gold = run_trusted(code, fname, inp)
            except Exception:  # e.g. s[0] on an empty string: skip, it is our own generator
                continue
            ex = self._make(
                self._directions(rng)[0],
                code,
                fname,
                inp,
                gold,
                {"source": "generated", "num_ops": self.num_ops, "index": i - 1},
            )
            if split_of(ex.question) == split and ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
            if i > 200 * self.sizes[split] + 1000:
                raise RuntimeError(f"codeio generator cannot fill split {split!r}; lower sizes.")
        return out

    def _reasoning_gym(self) -> list[Example]:
        import reasoning_gym

        path = os.path.join(os.path.dirname(reasoning_gym.__file__), "data", "codeio.jsonl.gz")
        with gzip.open(path, "rt") as f:
            items = [json.loads(line) for line in f if line.strip()]
        order = list(range(len(items)))
        random.Random(f"codeio-rg:{self.seed}").shuffle(order)
        want = sum(self.sizes.values())
        # Over-generate: some items fail or land in other splits.
        chosen = order[: min(len(order), int(want * 1.3) + 8)]

        def build(idx: int):
            it = items[idx]
            code = (
                f"from random import Random\n{it['code_sample']}\n\n{it['input_generator']}\n\n"
                f"_inp = generate_inputs(Random({self.seed * 100003 + idx}))\n"
                "result = {'input': _inp, 'output': main_solution(**_inp)}\n"
            )
            res = run_python(code, None, None, self.limits)
            if res.status != "ok" or not isinstance(res.value, dict):
                return None
            if len(json.dumps(res.value)) > 2000:  # keep answers short
                return None
            rng = random.Random(f"codeio-rg-dir:{self.seed}:{idx}")
            real = {"desc": it["task_description"], "io": it["input_output_spec"]}
            return self._make(
                self._directions(rng)[0],
                it["code_sample"],
                "main_solution",
                res.value["input"],
                res.value["output"],
                {"source": "reasoning_gym", "item": idx},
                real,
            )

        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            built = list(pool.map(build, chosen))
        return [e for e in built if e is not None]

    def _real(self) -> list[Example]:
        rows = load_rows(**{k: v for k, v in self.real.items() if v})
        out, seen = [], set()
        for n, row in enumerate(rows):
            where = f"codeio row {n}"
            if isinstance(row.get("ios"), str):  # some dumps store ios as a JSON string
                try:
                    row = {**row, "ios": json.loads(row["ios"])}
                except ValueError as e:
                    raise ValueError(f"{where}: field 'ios' is a string but not JSON ({e}).") from e
            require(
                row,
                {
                    "problem_description": str,
                    "io_requirements": str,
                    "refcode": str,
                    "funcname": str,
                    "ios": list,
                },
                where,
            )
            real = {"desc": row["problem_description"], "io": row["io_requirements"]}
            # As CodeI/O: up to 3 ios per function, in each requested direction.
            directions = ["output", "input"] if self.mode == "both" else [self.mode]
            for j, io in enumerate(row["ios"][:3]):
                if not isinstance(io, dict) or "input" not in io or "output" not in io:
                    raise ValueError(f"{where}, ios[{j}]: needs keys 'input' and 'output'.")
                if not isinstance(io["input"], dict):
                    raise ValueError(f"{where}, ios[{j}].input: must be a dict of kwargs.")
                for direction in directions:
                    ex = self._make(
                        direction,
                        row["refcode"],
                        row["funcname"],
                        io["input"],
                        io["output"],
                        {"source": "real", "row": n},
                        real,
                    )
                    if ex.id not in seen:
                        seen.add(ex.id)
                        out.append(ex)
        return out

    # --- verification -----------------------------------------------------------------------
    def _verify(self, example: Example, completion: str) -> Verdict:
        gold = example.gold
        key = gold["direction"]
        value, reason = extract_last_json(completion)
        if reason != "ok":
            return Verdict(
                0.0,
                "no answer",
                f"Fail to extract a complete and valid json from the output! ({reason}) "
                f'Answer with one JSON object like {{"{key}": ...}}.',
            )
        if not isinstance(value, dict):
            return Verdict(0.0, "no answer", "The last json is not a dict!")
        if key not in value:
            return Verdict(0.0, "no answer", f"No field '{key}' in the last json!")
        pred = value[key]
        if key == "output":
            if is_close(pred, gold["output"]):
                return Verdict(1.0, "success", "Correct output.")
            return Verdict(
                0.0,
                "failed",
                f"[Mismatch] Your output is not correct! Given the input "
                f"{_short(gold['input'])}, your predicted output is {_short(pred)} which "
                f"is wrong! The correct output is {_short(gold['output'])}.",
            )
        return self._verify_input(gold, pred)

    def _verify_input(self, gold: dict, pred: Any) -> Verdict:
        if not isinstance(pred, dict):
            return Verdict(0.0, "no answer", "The 'input' field must be a dict of argument values.")
        if len(json.dumps(pred)) > MAX_INPUT_JSON_CHARS:
            return Verdict(0.0, "no answer", "The predicted input is too large.")
        want = set(gold["input"])
        if set(pred) != want:
            return Verdict(
                0.0,
                "failed",
                f"[Mismatch] The input keys must be exactly {sorted(want)}, got {sorted(pred)}.",
            )
        res = run_python(gold["code"], gold["funcname"], pred, self.limits)
        if res.status == "timeout":
            return Verdict(
                0.0, "timeout", f"Running the code on your input timed out: {res.message}"
            )
        if res.status == "refused":
            return Verdict(
                0.0, "refused", f"Running the code on your input was refused: {res.message}"
            )
        if res.status != "ok":
            return Verdict(
                0.0, "exception", f"[{res.message}] raised on your input {_short(pred)}."
            )
        got = res.value
        if json.dumps(got) == json.dumps(gold["output"]) or is_close(got, gold["output"]):
            return Verdict(1.0, "success", "Feasible input.")
        return Verdict(
            0.0,
            "failed",
            f"[Mismatch] Your input is not feasible! Given the output "
            f"{_short(gold['output'])}, your predicted input is {_short(pred)}, which "
            f"actually gets a wrong output as {_short(got)}. One feasible input is "
            f"{_short(gold['input'])}.",
        )


def _short(x: Any, limit: int = 300) -> str:
    s = json.dumps(x)
    return s if len(s) <= limit else s[:limit] + "..."
