"""Math: Polaris (real) and GSM-style generated word problems (offline), `\\boxed{}` answers.

Verifier (as in DeepScaleR / Polaris evaluation): last `\\boxed{...}`; numbers compare exactly (integers,
fractions, decimals after stripping `$`, commas, units, `\\%`); anything else goes through
`math-verify` equivalence. Feedback follows GEPA's AIME metric: correct/incorrect, the gold
answer, the extracted answer, and the reference solution when there is one.

Offline sources: `source="generated"` — seeded stories with 1-5 arithmetic steps; the
`difficulty` knob picks the size ("lite": 1 step with small numbers, the low-but-non-zero
reward config for SmolLM2-135M; "easy", "medium", "hard" grow steps and numbers), and
`source="gsm_symbolic"` — reasoning-gym's GSM8K-derived templates. Real: Polaris-53K rows
(`problem`, `answer`, `difficulty`) from a local file, HF id or TFDS array_record; a held-out
validation/test split is carved out by question hash.
"""

from __future__ import annotations

import random
import re
import threading
from fractions import Fraction

from fst_jax.tasks.base import Example, Task, Verdict, example_id, register_task, split_of
from fst_jax.tasks.extract import last_boxed, numbers_close, parse_number
from fst_jax.tasks.loaders import load_rows, require

POLARIS_ID = "POLARIS-Project/Polaris-Dataset-53K"
BOXED_FORMAT = "Put the final answer within \\boxed{}."

# difficulty -> (steps range, start range, operand range)
DIFFICULTIES = {
    "lite": ((1, 1), (2, 9), (1, 5)),
    "easy": ((1, 2), (2, 20), (1, 9)),
    "medium": ((2, 3), (5, 50), (2, 12)),
    "hard": ((3, 5), (10, 200), (2, 25)),
}
_NAMES = ("Tom", "Ana", "Lee", "Mia", "Sam", "Ivy", "Ben", "Zoe", "Raj", "Eva", "Kai", "Noa")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells")
_FRIENDS = ("a friend", "a neighbour", "a classmate", "a cousin", "the teacher")


def _story_step(rng: random.Random, value: int, items: str, operand: tuple[int, int], who: str):
    """One arithmetic step: (sentence, new value, solution line). `who` is a name or "they"."""
    lo, hi = operand
    sing = who != "they"
    kinds = ["add", "sub", "mul"] + (["div"] if value > 1 else [])
    kind = rng.choice(kinds)
    if kind == "sub" and value <= 1:
        kind = "add"
    if kind == "div" and not [d for d in (2, 3, 4, 5) if value % d == 0]:
        kind = "add"
    if kind == "add":
        k = rng.randint(lo, hi)
        verb = rng.choice([("buy", "buys"), ("find", "finds"), ("are given", "is given")])[sing]
        return f"Then {who} {verb} {k} more {items}.", value + k, f"{value} + {k} = {value + k}"
    if kind == "sub":
        k = rng.randint(1, min(hi, value - 1))
        friend = rng.choice(_FRIENDS)
        verb = "gives" if sing else "give"
        return (
            f"Then {who} {verb} {k} {items} to {friend}.",
            value - k,
            f"{value} - {k} = {value - k}",
        )
    if kind == "mul":
        k = rng.choice([2, 3]) if hi < 10 else rng.randint(2, 4)
        word = {2: "doubles", 3: "triples"}.get(k, f"becomes {k} times as large")
        return f"Then the number of {items} {word}.", value * k, f"{value} × {k} = {value * k}"
    d = rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])
    verb = "splits" if sing else "split"
    return (
        f"Then {who} {verb} the {items} into {d} equal piles and keeps one pile."
        if sing
        else f"Then {who} split the {items} into {d} equal piles and keep one pile.",
        value // d,
        f"{value} ÷ {d} = {value // d}",
    )


def generate_problem(rng: random.Random, difficulty: str) -> tuple[str, int, str]:
    """A GSM-style story: (question, integer answer, step-by-step solution)."""
    (smin, smax), (alo, ahi), operand = DIFFICULTIES[difficulty]
    name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
    value = rng.randint(alo, ahi)
    sentences = [f"{name} has {value} {items}."]
    lines = [f"Start with {value}."]
    for _ in range(rng.randint(smin, smax)):
        who = name if rng.random() < 0.5 else "they"
        sent, value, line = _story_step(rng, value, items, operand, who)
        sentences.append(sent)
        lines.append(line)
    sentences.append(f"How many {items} does {name} have now?")
    solution = " ".join(lines) + f" The answer is \\boxed{{{value}}}."
    return " ".join(sentences), value, solution


def answers_match(pred: str, gold: str) -> bool:
    """Exact numeric equality when both parse as numbers, else math-verify equivalence."""
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None and _is_plain_number(pred) and _is_plain_number(gold):
        return numbers_close(
            p, g, 0.0 if isinstance(g, Fraction) and isinstance(p, Fraction) else 1e-9
        )
    if pred.strip() == gold.strip():
        return True
    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    kw = {} if main else {"parsing_timeout": None}
    gp = parse(f"${gold}$", **kw)
    pp = parse(f"${pred}$", **kw)
    if not gp or not pp:
        return False
    return bool(verify(gp, pp, **({} if main else {"timeout_seconds": None})))


_LAST_NUM_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_PLAIN = re.compile(
    r"^\$?\s*[-+]?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.))(?:\.\d+)?\s*(?:\\?%)?\s*(?:\\text\{[^{}]*\})?\s*\$?$"
)


def _is_plain_number(s: str) -> bool:
    """True for answers that are only a number (optionally with %, or a \\text{unit})."""
    return bool(_PLAIN.match(s.strip()))


@register_task("math")
class MathTask(Task):
    """Math word problems. kwargs: source ('generated'|'gsm_symbolic'|'real'), difficulty."""

    name = "math"
    parallel = "process"  # math-verify is CPU-bound and uses signal timeouts (main thread)
    _transient = ("_rows",)
    seed_prompt = "Let's think step by step and output the final answer within \\boxed{}."

    def __init__(
        self,
        source: str = "generated",
        difficulty: str = "easy",
        seed: int = 0,
        sizes: dict | None = None,
        path: str | None = None,
        hf_id: str | None = None,
        tfds_name: str | None = None,
        tfds_dir: str | None = None,
        answer_format: str | None = None,
    ):
        super().__init__()
        if source == "polaris":  # alias: the real Polaris loader
            source = "real"
        if source not in ("generated", "gsm_symbolic", "real"):
            raise ValueError(
                f"math source {source!r}: use 'generated', 'gsm_symbolic' or 'real' (alias 'polaris')."
            )
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"math difficulty {difficulty!r}: use one of {list(DIFFICULTIES)}.")
        self.source, self.difficulty, self.seed = source, difficulty, seed
        self.sizes = {"train": 4096, "validation": 256, "test": 256, **(sizes or {})}
        self.real = {"path": path, "hf_id": hf_id, "tfds_name": tfds_name, "tfds_dir": tfds_dir}
        if source == "real" and not any(self.real.values()):
            self.real["hf_id"] = POLARIS_ID
        # "boxed": only the last \boxed{} counts (DeepScaleR). "last_number": the last \boxed{}
        # if any, else the last number in the text (GSM8K-style); the default for "lite",
        # because a 135M model rarely writes \boxed{} (SmolLM2: 0/64 boxed answers).
        if answer_format is None:
            answer_format = "last_number" if difficulty == "lite" else "boxed"
        if answer_format not in ("boxed", "last_number"):
            raise ValueError(f"math answer_format {answer_format!r}: use 'boxed' or 'last_number'.")
        self.answer_format = answer_format
        self._rows: list[Example] | None = None

    def _load_split(self, split: str) -> list[Example]:
        if self.source == "generated":
            return self._generated(split)
        if self._rows is None:
            self._rows = self._gsm_symbolic() if self.source == "gsm_symbolic" else self._real()
        exs = [e for e in self._rows if split_of(e.question) == split]
        return exs[: self.sizes[split]]

    def _generated(self, split: str) -> list[Example]:
        out, seen, i = [], set(), 0
        while len(out) < self.sizes[split]:
            rng = random.Random(f"math:{self.seed}:{self.difficulty}:{i}")
            q, ans, sol = generate_problem(rng, self.difficulty)
            i += 1
            ex = Example(
                example_id(self.name, q),
                q,
                str(ans),
                {
                    "source": "generated",
                    "difficulty": self.difficulty,
                    "solution": sol,
                    "index": i - 1,
                },
            )
            if split_of(q) == split and ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
            if i > 100 * self.sizes[split] + 10_000:
                raise RuntimeError(
                    f"math/{self.difficulty}: only {len(out)} distinct {split} problems exist; "
                    "lower sizes or use a harder difficulty."
                )
        return out

    def _gsm_symbolic(self) -> list[Example]:
        import reasoning_gym

        n = int(sum(self.sizes.values()) * 1.2) + 16
        ds = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=self.seed)
        out, seen = [], set()
        for i in range(len(ds)):
            item = ds[i]
            q = item["question"]
            ex = Example(
                example_id(self.name, q),
                q,
                str(item["answer"]),
                {"source": "gsm_symbolic", "solution": item["metadata"].get("answer_cot", "")},
            )
            if ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
        return out

    def _real(self) -> list[Example]:
        rows = load_rows(**{k: v for k, v in self.real.items() if v})
        out, seen = [], set()
        for n, row in enumerate(rows):
            require(row, {"problem": str, "answer": (str, int, float)}, f"math row {n}")
            q = row["problem"].strip()
            ex = Example(
                example_id(self.name, q),
                q,
                str(row["answer"]).strip(),
                {
                    "source": "real",
                    "row": n,
                    "difficulty": row.get("difficulty"),
                    "solution": row.get("solution", ""),
                },
            )
            if ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
        return out

    def _verify(self, example: Example, completion: str) -> Verdict:
        gold = str(example.gold)
        pred, reason = last_boxed(completion)
        solution = example.metadata.get("solution") or ""
        ref = f" Reference solution: {solution}" if solution else ""
        if reason == "no_boxed" and self.answer_format == "last_number":
            nums = _LAST_NUM_RE.findall(completion)
            if nums:
                pred = nums[-1].replace(",", "").rstrip(".")
                if answers_match(pred, gold):
                    return Verdict(1.0, "correct", f"Your answer {pred} is correct.")
                return Verdict(
                    0.0,
                    "incorrect",
                    f"Your final number {pred} is incorrect (put the final answer within "
                    f"\\boxed{{}}). The correct answer is {gold}.{ref}",
                )
        if reason == "no_boxed":
            return Verdict(
                0.0,
                "no_answer",
                f"No \\boxed{{}} answer found; put the final answer within \\boxed{{}}. "
                f"The correct answer is {gold}.{ref}",
            )
        if reason == "unclosed":
            return Verdict(
                0.0,
                "no_answer",
                f"The last \\boxed{{ is never closed. The correct answer is {gold}.{ref}",
            )
        if not pred:
            return Verdict(
                0.0, "no_answer", f"The \\boxed{{}} is empty. The correct answer is {gold}.{ref}"
            )
        if answers_match(pred, gold):
            return Verdict(1.0, "correct", f"Your answer {pred} is correct.")
        return Verdict(
            0.0, "incorrect", f"Your answer {pred} is incorrect. The correct answer is {gold}.{ref}"
        )
