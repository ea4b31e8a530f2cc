"""Physics: short-answer numeric (or multiple-choice) problems with tolerance checking.

The FST paper does not name its Physics dataset, so the offline source is a templated
generator of one- and two-formula problems (kinematics, Ohm's law, energy, momentum, density,
waves) with SI values; gold is computed in Python. `format="mc"` turns each problem into four
options A-D. Verifier: last `\\boxed{}`, units stripped, relative tolerance (default 1e-2); for
rows from a real file (`question`/`problem` + `answer`, optional `choices`) non-numeric answers
fall back to math-verify / letter match. Feedback: gold value + unit + the formula used.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from fst_jax.tasks.base import Example, Task, Verdict, example_id, register_task, split_of
from fst_jax.tasks.extract import last_boxed, numbers_close, parse_number
from fst_jax.tasks.loaders import load_rows, require
from fst_jax.tasks.math import answers_match

G = 9.8


def _r(rng: random.Random, lo: float, hi: float, step: float = 1.0) -> float:
    n = round(rng.uniform(lo, hi) / step)
    return round(max(n, 1) * step, 6)


def _fmt(x: float) -> str:
    return f"{x:g}"


# Each template: rng -> (question, value, unit, formula); two_step templates combine formulas.
def _velocity(rng):
    u, a, t = _r(rng, 0, 20), _r(rng, 1, 5), _r(rng, 1, 10)
    return (
        f"A cart starts at {_fmt(u)} m/s and accelerates uniformly at {_fmt(a)} m/s^2 for "
        f"{_fmt(t)} s. What is its final speed in m/s?",
        u + a * t,
        "m/s",
        "v = u + a t",
    )


def _distance(rng):
    u, a, t = _r(rng, 0, 10), _r(rng, 1, 4), _r(rng, 1, 8)
    return (
        f"A runner starts at {_fmt(u)} m/s and accelerates uniformly at {_fmt(a)} m/s^2. "
        f"How far in metres does the runner travel in {_fmt(t)} s?",
        u * t + 0.5 * a * t * t,
        "m",
        "s = u t + a t^2 / 2",
    )


def _ohm(rng):
    i, r = _r(rng, 0.5, 5, 0.5), _r(rng, 2, 50)
    return (
        f"A current of {_fmt(i)} A flows through a {_fmt(r)} ohm resistor. What is the voltage "
        "across it in volts?",
        i * r,
        "V",
        "V = I R",
    )


def _power(rng):
    v, r = _r(rng, 6, 24), _r(rng, 2, 12)
    return (
        f"A {_fmt(r)} ohm heater is connected to a {_fmt(v)} V supply. What power in watts does "
        "it dissipate?",
        v * v / r,
        "W",
        "I = V / R, P = V I = V^2 / R",
    )


def _kinetic(rng):
    m, v = _r(rng, 1, 20), _r(rng, 1, 15)
    return (
        f"What is the kinetic energy in joules of a {_fmt(m)} kg ball moving at {_fmt(v)} m/s?",
        0.5 * m * v * v,
        "J",
        "E = m v^2 / 2",
    )


def _potential(rng):
    m, h = _r(rng, 1, 20), _r(rng, 1, 30)
    return (
        f"A {_fmt(m)} kg box is lifted {_fmt(h)} m. Using g = 9.8 m/s^2, how much gravitational "
        "potential energy in joules does it gain?",
        m * G * h,
        "J",
        "E = m g h",
    )


def _momentum(rng):
    m, v = _r(rng, 1, 50), _r(rng, 1, 20)
    return (
        f"What is the momentum in kg m/s of a {_fmt(m)} kg object moving at {_fmt(v)} m/s?",
        m * v,
        "kg m/s",
        "p = m v",
    )


def _density(rng):
    m, vol = _r(rng, 1, 50), _r(rng, 1, 10)
    return (
        f"A block has mass {_fmt(m)} kg and volume {_fmt(vol)} m^3. What is its density in kg/m^3?",
        m / vol,
        "kg/m^3",
        "rho = m / V",
    )


def _force(rng):
    m, a = _r(rng, 1, 30), _r(rng, 1, 10)
    return (
        f"What net force in newtons accelerates a {_fmt(m)} kg mass at {_fmt(a)} m/s^2?",
        m * a,
        "N",
        "F = m a",
    )


def _wave(rng):
    f, lam = _r(rng, 10, 500), _r(rng, 0.5, 5, 0.5)
    return (
        f"A wave has frequency {_fmt(f)} Hz and wavelength {_fmt(lam)} m. What is its speed in "
        "m/s?",
        f * lam,
        "m/s",
        "v = f lambda",
    )


def _fall_speed(rng):
    h = _r(rng, 2, 50)
    return (
        f"A stone is dropped from rest from a height of {_fmt(h)} m. Ignoring air resistance "
        "and using g = 9.8 m/s^2, what is its speed in m/s just before it lands?",
        (2 * G * h) ** 0.5,
        "m/s",
        "m g h = m v^2 / 2, so v = sqrt(2 g h)",
    )


def _collision(rng):
    m1, v1, m2 = _r(rng, 1, 10), _r(rng, 1, 10), _r(rng, 1, 10)
    return (
        f"A {_fmt(m1)} kg cart moving at {_fmt(v1)} m/s hits a {_fmt(m2)} kg cart at rest and "
        "they stick together. What is their common speed in m/s?",
        m1 * v1 / (m1 + m2),
        "m/s",
        "momentum conservation: v = m1 v1 / (m1 + m2)",
    )


ONE_STEP: list[Callable] = [
    _velocity,
    _ohm,
    _kinetic,
    _potential,
    _momentum,
    _density,
    _force,
    _wave,
]
TWO_STEP: list[Callable] = [_distance, _power, _fall_speed, _collision]
LEVELS = {"easy": ONE_STEP, "medium": ONE_STEP + TWO_STEP, "hard": TWO_STEP}


@register_task("physics")
class PhysicsTask(Task):
    """Physics QA. kwargs: source ('generated'|'real'), level, format ('numeric'|'mc'), rel_tol."""

    name = "physics"
    seed_prompt = (
        "Solve the physics problem step by step and give the final number (no units) in \\boxed{}."
    )

    def __init__(
        self,
        source: str = "generated",
        level: str = "medium",
        format: str = "numeric",
        rel_tol: float = 1e-2,
        answer_format: str = "boxed",
        seed: int = 0,
        sizes: dict | None = None,
        path: str | None = None,
        hf_id: str | None = None,
        tfds_name: str | None = None,
        tfds_dir: str | None = None,
    ):
        super().__init__()
        if source not in ("generated", "real"):
            raise ValueError(f"physics source {source!r}: use 'generated' or 'real'.")
        if level not in LEVELS:
            raise ValueError(f"physics level {level!r}: use one of {list(LEVELS)}.")
        if format not in ("numeric", "mc"):
            raise ValueError(f"physics format {format!r}: use 'numeric' or 'mc'.")
        if source == "real" and not (path or hf_id or tfds_name):
            raise ValueError(
                "physics source='real' needs path=, hf_id= or tfds_name= (no default "
                "dataset: FST's physics set is not public)."
            )
        self.source, self.level, self.format, self.rel_tol, self.seed = (
            source,
            level,
            format,
            rel_tol,
            seed,
        )
        self.sizes = {"train": 4096, "validation": 256, "test": 256, **(sizes or {})}
        self.real = {"path": path, "hf_id": hf_id, "tfds_name": tfds_name, "tfds_dir": tfds_dir}
        # "last_number": without a \boxed{}, the last number (or, for options, the last
        # standalone letter A-D) in the text counts; for very small models.
        if answer_format not in ("boxed", "last_number"):
            raise ValueError(
                f"physics answer_format {answer_format!r}: use 'boxed' or 'last_number'."
            )
        self.answer_format = answer_format

    def _load_split(self, split: str) -> list[Example]:
        if self.source == "real":
            return self._real(split)
        out, seen, i = [], set(), 0
        templates = LEVELS[self.level]
        while len(out) < self.sizes[split]:
            rng = random.Random(f"physics:{self.seed}:{self.level}:{self.format}:{i}")
            i += 1
            q, value, unit, formula = rng.choice(templates)(rng)
            gold = {"value": round(value, 6), "unit": unit, "formula": formula}
            if self.format == "mc":
                q, gold = self._to_mc(rng, q, gold)
            ex = Example(
                example_id(self.name, q), q, gold, {"source": "generated", "level": self.level}
            )
            if split_of(q) == split and ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
            if i > 100 * self.sizes[split] + 10_000:
                raise RuntimeError(f"physics: cannot fill split {split!r}; lower sizes.")
        return out

    @staticmethod
    def _to_mc(rng: random.Random, q: str, gold: dict):
        v = gold["value"]
        factors = rng.sample([0.5, 2.0, 1.5, 0.25, 3.0, 0.75], 3)
        options = [v] + [round(v * f, 6) for f in factors]
        rng.shuffle(options)
        letter = "ABCD"[options.index(v)]
        lines = "\n".join(f"{c}. {_fmt(o)} {gold['unit']}" for c, o in zip("ABCD", options))
        q = f"{q}\n{lines}\nAnswer with the letter of the correct option."
        return q, {**gold, "choice": letter, "choices": [_fmt(o) for o in options]}

    def _real(self, split: str) -> list[Example]:
        rows = load_rows(**{k: v for k, v in self.real.items() if v})
        out, seen = [], set()
        for n, row in enumerate(rows):
            where = f"physics row {n}"
            qkey = "question" if "question" in row else "problem"
            require(row, {qkey: str, "answer": (str, int, float)}, where)
            q = row[qkey].strip()
            gold: dict = {"answer": str(row["answer"]).strip(), "unit": row.get("unit", "")}
            if row.get("choices"):
                if not isinstance(row["choices"], list):
                    raise ValueError(f"{where}: field 'choices' must be a list of option strings.")
                q = q + "\n" + "\n".join(f"{c}. {o}" for c, o in zip("ABCDEFGH", row["choices"]))
                gold["choice"] = gold["answer"].strip().upper()[:1]
            num = parse_number(gold["answer"])
            if num is not None and "choice" not in gold:
                gold["value"] = float(num)
            ex = Example(example_id(self.name, q), q, gold, {"source": "real", "row": n})
            if split_of(q) == split and ex.id not in seen:
                seen.add(ex.id)
                out.append(ex)
        return out[: self.sizes[split]]

    def _verify(self, example: Example, completion: str) -> Verdict:
        gold = example.gold
        pred, reason = last_boxed(completion)
        shown = gold.get("choice") or (
            f"{_fmt(gold['value'])} {gold.get('unit', '')}".strip()
            if "value" in gold
            else gold["answer"]
        )
        how = f" (formula: {gold['formula']})" if gold.get("formula") else ""
        if reason == "no_boxed" and self.answer_format == "last_number":
            pat = r"\b([A-D])\b" if "choice" in gold else r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
            found = re.findall(pat, completion)
            if found:
                pred, reason = found[-1], "ok"
        if reason != "ok" or not pred:
            what = {
                "no_boxed": "No \\boxed{} answer found",
                "unclosed": "The last \\boxed{ is never closed",
            }
            return Verdict(
                0.0,
                "no_answer",
                f"{what.get(reason, 'The boxed answer is empty')}; put only the final "
                f"answer in \\boxed{{}}. The correct answer is {shown}{how}.",
            )
        if "choice" in gold:
            m = re.match(r"^\s*(?:\\text\{)?\(?([A-Ha-h])\)?", pred)
            ok = bool(m) and m.group(1).upper() == gold["choice"]
        elif "value" in gold:
            num = parse_number(pred)
            if num is None:
                return Verdict(
                    0.0,
                    "unparsable",
                    f"Could not read a number from {pred!r}. The correct answer is {shown}{how}.",
                )
            ok = numbers_close(num, gold["value"], self.rel_tol)
        else:
            ok = answers_match(pred, gold["answer"])
        if ok:
            return Verdict(1.0, "correct", f"Your answer {pred} is correct.")
        return Verdict(
            0.0,
            "incorrect",
            f"Your answer {pred} is incorrect. The correct answer is {shown}{how}.",
        )
