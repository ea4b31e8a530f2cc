"""Context-following demonstrations: (context, question) → an answer whose FORM the context decides.

Why: FST's fast weights are contexts, so they only help a model that reads its system turn. A
small instruct model (SmolLM2-135M) mostly ignores it. These chats teach exactly that skill: the
same kind of question is answered in `\\boxed{}`, as JSON, on the last line, after a prefix, in
one word or one sentence, in the style of a worked example, or following a named strategy —
whatever the context says — and with no format rule the answer is plain prose. The paraphrases
of every rule, the placement (system turn, or prepended to the user turn) and extra sentences
in the context vary, so no single format becomes the default.

What it must NOT teach: the RL tasks' answers. The questions come from seven small families
(bare arithmetic, letter counting, sorting, the larger of two numbers, spelling backwards, the
next number of a sequence, hours to minutes) that share no template with the RL tasks: no
`math` word stories, no star-graph path questions, no physics or code problems.
`rl_task_overlap` re-checks this against those tasks' validation questions; the SFT warm start
therefore moves the answer *format* and the habit of reading the context, not task knowledge.

`context_following(split, n, seed)` returns chat rows ``{"messages": [...], "meta": {...}}``;
splits are assigned by hashing the question (disjoint by construction). `check_reply(meta,
reply)` says whether a reply has the form the context asked for and the right answer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

from fst_jax.tasks.base import check_split_name, split_of

_WORDS = (
    "banana", "letter", "mississippi", "coffee", "balloon", "pepper", "garden", "rabbit",
    "window", "yellow", "summer", "kitten", "puzzle", "bottle", "cookie", "parrot", "tomato",
    "carrot", "button", "orange", "planet", "silver", "marble", "pillow", "lemon", "river",
)  # fmt: skip


def _fmt_num(x: int) -> str:
    return str(x)


# ---------------------------------------------------------------- question families
# Each returns (question, answer text, one-sentence reasoning).


def _arith(rng: random.Random) -> tuple[str, str, str]:
    op = rng.choice("+-*")
    a, b = rng.randint(11, 99), rng.randint(2, 40)
    if op == "*":
        a, b = rng.randint(3, 30), rng.randint(2, 9)
    if op == "-" and b > a:
        a, b = b, a
    ans = {"+": a + b, "-": a - b, "*": a * b}[op]
    sym = {"+": "+", "-": "-", "*": "×"}[op]
    q = rng.choice(["What is {a} {s} {b}?", "Compute {a} {s} {b}.", "Calculate {a} {s} {b}."])
    return q.format(a=a, s=sym, b=b), _fmt_num(ans), f"{a} {sym} {b} = {ans}."


def _count_letter(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    ch = rng.choice(sorted(set(w)))
    k = w.count(ch)
    q = f"How many times does the letter '{ch}' appear in the word '{w}'?"
    return q, str(k), f"The letters of '{w}' are {', '.join(w)}; '{ch}' appears {k} times."


def _sort(rng: random.Random) -> tuple[str, str, str]:
    xs = rng.sample(range(1, 100), rng.randint(3, 5))
    s = sorted(xs)
    q = f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}."
    return (
        q,
        ",".join(map(str, s)),
        f"In increasing order the numbers are {', '.join(map(str, s))}.",
    )


def _larger(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(10, 1000), 2)
    q = f"Which number is larger, {a} or {b}?"
    hi, lo = max(a, b), min(a, b)
    return q, str(hi), f"{hi} is greater than {lo}."


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    q = f"Write the word '{w}' backwards."
    return q, w[::-1], f"Reading '{w}' from the last letter to the first gives {w[::-1]}."


def _sequence(rng: random.Random) -> tuple[str, str, str]:
    start, step = rng.randint(1, 30), rng.randint(2, 9)
    seq = [start + i * step for i in range(4)]
    nxt = seq[-1] + step
    q = f"What number comes next in the sequence {', '.join(map(str, seq))}?"
    return (
        q,
        str(nxt),
        f"Each number is {step} more than the one before, so {seq[-1]} + {step} = {nxt}.",
    )


def _minutes(rng: random.Random) -> tuple[str, str, str]:
    h = rng.randint(2, 24)
    q = f"How many minutes are there in {h} hours?"
    return q, str(60 * h), f"One hour has 60 minutes, so {h} × 60 = {60 * h}."


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "arith": _arith,
    "count_letter": _count_letter,
    "sort": _sort,
    "larger": _larger,
    "reverse": _reverse,
    "sequence": _sequence,
    "minutes": _minutes,
}

# ---------------------------------------------------------------- answer forms
# Each form: (rule paraphrases, reply builder(answer, reasoning, rng, extra) -> reply).

_BOXED_RULES = (
    "Put the final answer within \\boxed{}.",
    "Show your work briefly and give the final answer inside \\boxed{}, for example \\boxed{7}.",
    "Write the result inside \\boxed{...} at the end of your reply.",
    "Always finish with the answer in LaTeX \\boxed{} notation.",
)
_JSON_RULES = (
    'Reply with JSON only, in the form {"answer": <answer>}.',
    'Respond with a single JSON object that has one key, "answer".',
    'Output only JSON: {"answer": ...}. No other text.',
)
_LAST_LINE_RULES = (
    "Explain briefly, then write only the answer on the last line.",
    "Give one line of reasoning, then put the bare answer alone on a final line.",
    "The last line of your reply must contain the answer and nothing else.",
)
_SHORT_RULES = (
    "Answer with the answer only, no other words.",
    "Reply with just the answer.",
    "Be extremely brief: output only the final answer.",
)
_SENTENCE_RULES = (
    "Answer in one complete sentence.",
    "Reply with exactly one full sentence that states the answer.",
)
_PREFIXES = ("Answer:", "Final answer:", "####", "Result:", "ANSWER ->")
_STYLES = ("=> {a}", "[[{a}]]", "<answer>{a}</answer>", "RESULT = {a}", "\\boxed{{{a}}}")
_STRATEGIES = {
    "numbered steps": (
        "number each step of your reasoning (1., 2., ...) and end with 'So the answer is X.'",
        lambda a, r: f"1. Read what is asked.\n2. {r}\n3. So the answer is {a}.",
    ),
    "answer first": (
        "state the answer first, then give the reason in one sentence",
        lambda a, r: f"{a}. Reason: {r}",
    ),
    "check": (
        "solve it, then add a line 'Check:' that repeats the key fact, then 'Answer: X'",
        lambda a, r: f"{r}\nCheck: {r}\nAnswer: {a}",
    ),
}
_PERSONAS = (
    "You are a helpful assistant.",
    "You are a careful tutor.",
    "You are a concise assistant.",
    "",
)
_FILLERS = ("Be polite.", "Read the question carefully.", "Keep it short.", "", "", "")
_PLAIN_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a friendly assistant. Answer the user's question.",
    "Answer the question.",
)

FORMS = (
    "boxed", "json", "last_line", "prefix", "short", "sentence", "example", "strategy", "plain",
)  # fmt: skip


def _json_value(a: str) -> int | str:
    return int(a) if re.fullmatch(r"-?\d+", a) else a


def _render(form: str, q: str, a: str, r: str, rng: random.Random) -> tuple[str, str, dict]:
    """(context text, reply, meta extras) for one question under one answer form."""
    extra: dict = {}
    if form == "boxed":
        rule = rng.choice(_BOXED_RULES)
        reply = rng.choice([f"{r} The answer is \\boxed{{{a}}}.", f"{r}\n\\boxed{{{a}}}"])
    elif form == "json":
        rule = rng.choice(_JSON_RULES)
        reply = json.dumps({"answer": _json_value(a)})
    elif form == "last_line":
        rule = rng.choice(_LAST_LINE_RULES)
        reply = f"{r}\n{a}"
    elif form == "prefix":
        p = rng.choice(_PREFIXES)
        extra["prefix"] = p
        if rng.random() < 0.5:
            rule = f"End your reply with a final line of the form '{p} <answer>'."
            reply = f"{r}\n{p} {a}"
        else:
            rule = f"Start your reply with '{p}' followed by the answer, then explain."
            reply = f"{p} {a}\n{r}"
    elif form == "short":
        rule = rng.choice(_SHORT_RULES)
        reply = a
    elif form == "sentence":
        rule = rng.choice(_SENTENCE_RULES)
        reply = rng.choice([f"The answer is {a}.", f"It is {a}."])
    elif form == "example":
        style = rng.choice(_STYLES)
        extra["style"] = style
        fam = rng.choice(sorted(FAMILIES))
        eq, ea, er = FAMILIES[fam](rng)
        demo = f"{er} {style.format(a=ea)}"
        rule = (
            "Answer in exactly the style of this worked example.\n"
            f"Example question: {eq}\nExample answer: {demo}"
        )
        reply = f"{r} {style.format(a=a)}"
    elif form == "strategy":
        name = rng.choice(sorted(_STRATEGIES))
        desc, build = _STRATEGIES[name]
        extra["strategy"] = name
        rule = f"Use the '{name}' strategy: {desc}."
        reply = build(a, r)
    elif form == "plain":
        return rng.choice(_PLAIN_SYSTEMS), f"{r} So the answer is {a}.", extra
    else:
        raise ValueError(f"unknown form {form!r}; use one of {FORMS}")
    parts = [rng.choice(_PERSONAS), rng.choice(_FILLERS), rule]
    if rng.random() < 0.5:
        parts = [parts[0], rule, parts[1]]
    return " ".join(p for p in parts if p).replace(" \n", "\n"), reply, extra


def demo_row(index: int, seed: int = 0, user_turn_frac: float = 0.2) -> dict:
    """Demonstration number `index` of generator `seed` (byte-identical in any process)."""
    rng = random.Random(f"demos:{seed}:{index}")
    family = rng.choice(sorted(FAMILIES))
    q, a, r = FAMILIES[family](rng)
    form = rng.choice(FORMS)
    context, reply, extra = _render(form, q, a, r, rng)
    where = "user" if form != "plain" and rng.random() < user_turn_frac else "system"
    if where == "system":
        msgs = [{"role": "system", "content": context}, {"role": "user", "content": q}]
    else:
        msgs = [{"role": "user", "content": f"{context}\n\n{q}"}]
    msgs.append({"role": "assistant", "content": reply})
    meta = {"family": family, "form": form, "where": where, "answer": a, "question": q, **extra}
    return {"messages": msgs, "meta": meta}


def context_following(
    split: str = "train", n: int = 4096, seed: int = 0, user_turn_frac: float = 0.2
) -> list[dict]:
    """`n` demonstrations of one split (train / validation / test by question hash)."""
    check_split_name(split)
    out, i = [], 0
    while len(out) < n:
        row = demo_row(i, seed, user_turn_frac)
        i += 1
        if split_of(row["meta"]["question"]) == split:
            out.append(row)
        if i > 200 * n + 10_000:
            raise RuntimeError(f"context_following: cannot fill {n} {split} rows")
    return out


def check_reply(meta: dict, reply: str) -> bool:
    """Whether `reply` has the form the demo's context asked for, with the right answer."""
    a, form, t = meta["answer"], meta["form"], reply.strip()
    if form == "boxed":
        m = re.findall(r"\\boxed\{([^{}]*)\}", t)
        return bool(m) and m[-1].replace(" ", "") == a
    if form == "json":
        try:
            obj = json.loads(t)
        except json.JSONDecodeError:
            return False
        return isinstance(obj, dict) and set(obj) == {"answer"} and str(obj["answer"]) == a
    if form == "last_line":
        return t.splitlines()[-1].strip() == a if t else False
    if form == "prefix":
        p = meta["prefix"]
        lines = t.splitlines() or [""]
        return lines[-1].strip() == f"{p} {a}" or lines[0].strip() == f"{p} {a}"
    if form == "short":
        return t == a
    if form == "sentence":
        return t.count(".") == 1 and t.endswith(".") and a in t
    if form == "example":
        return t.endswith(meta["style"].format(a=a))
    if form == "strategy":
        name = meta["strategy"]
        if name == "numbered steps":
            return t.startswith("1.") and t.endswith(f"So the answer is {a}.")
        if name == "answer first":
            return t.startswith(f"{a}.")
        return "Check:" in t and t.endswith(f"Answer: {a}")
    return a in t  # plain: the answer is stated


def rl_task_overlap(rows: list[dict]) -> list[str]:
    """Demo questions that also occur as a validation question of an offline RL task ([] = none)."""
    from fst_jax.tasks import get_task

    seen = {r["meta"]["question"] for r in rows}
    hits = []
    configs = [("math", {"difficulty": d}, 256) for d in ("lite", "easy", "medium", "hard")]
    configs += [("star_graph", {"size": "tiny"}, 32), ("star_graph", {"size": "easy"}, 256)]
    configs += [("physics", {"level": "easy"}, 256), ("codeio", {"num_ops": 1}, 256)]
    for name, kw, n in configs:  # n: validation size (star_graph tiny has fewer than 64)
        task = get_task(name, sizes={"validation": n, "train": 1, "test": 1}, **kw)
        hits += [ex.question for ex in task.examples("validation") if ex.question in seen]
    return hits
