"""`rule`: a deterministic, rule-based reflection LM — a labelled stand-in for a strong reflector.

Why it exists: at laptop scale the only model-backed reflector is the frozen policy itself
(`local`), which rarely writes a usable context, so a study on CPU could not tell "GEPA does not
help" from "this reflector cannot write". `rule` writes what a strong reflection model typically
adds first: the format rule the checker's feedback states, and one worked example whose answer
the feedback reveals. It is NOT the paper's setting (a frontier LLM reflecting freely) and results
obtained with it must be labelled as such.

What it reads: ONLY the reflection request it is handed (the meta-prompt rendered by
`gepa.reflection.render_meta_prompt`: the current context in the first ``` block, then GEPA's
reflective records ``# Example n`` / ``## Inputs`` / ``## Generated Outputs`` / ``## Feedback``).
It has no task, dataset or model access; every problem, answer and rule it writes is copied from
that text. The reply is ``current context + format rule + one worked example`` inside one ```
block, as the Reflector's parser expects.

Deterministic: the example is chosen by a SHA-256 of the request (no RNG), so the same request
always gets the same reply, while different parents / minibatches get different examples and the
population can diversify. A context that already holds an example written by this backend has it
swapped for a new one (the context does not grow without bound). When the request offers nothing
new to add (no rule, no example with a revealed answer) the call fails with
``ReflectionLMError("nothing_to_add")``: a counted skip (``gepa/skip/lm_nothing_to_add``), never a
crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from typing import Any

from fst_jax.gepa.lm import LMReply, ReflectionLMError

FENCE = "```"
EXAMPLE_HEADER = "Worked example:"
MAX_SOLUTION_CHARS = 400  # a longer reference solution is left out of the worked example

_EXAMPLE_START = re.compile(r"^# Example (\d+)\n## Inputs\n", re.MULTILINE)
# Imperative clauses a checker's feedback uses to state the answer format.
_RULE_VERBS = re.compile(
    r"^(put|give|answer|write|use|output|return|format|reply|end|state|include|wrap)\b", re.I
)
_CLAUSE_SPLIT = re.compile(r"(?<=[.;!?])\s+|[()]")
_GOLD_PATTERNS = (
    # "The correct answer is 42." / "... path is 0,3,5." / "... output is {...}." (end or a tail)
    re.compile(r"The correct (?:answer|path|output|option|label) is (.+?)\.(?=\s+Reference solution:|\s*$)", re.S),
    re.compile(r"Your (?:answer|final answer) (.+?) is correct\.", re.S),
)  # fmt: skip
_SOLUTION = re.compile(r"Reference solution:\s*(.+)$", re.S)


@dataclasses.dataclass(frozen=True)
class Record:
    """One reflective record as read back from the request text."""

    problem: str
    feedback: str


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    current: str
    records: tuple[Record, ...]


def parse_request(prompt: str) -> ParsedRequest:
    """Current context and records from a rendered meta-prompt; ReflectionLMError if it is not
    one (a custom template without the ``# Example n`` records or the fenced context)."""
    starts = list(_EXAMPLE_START.finditer(prompt))
    # Only consecutive numbering from 1: a "# Example 7" inside a model's output is text.
    chain = []
    for m in starts:
        if int(m.group(1)) == len(chain) + 1:
            chain.append(m)
    first_fence = prompt.find(FENCE)
    if not chain or first_fence < 0:
        raise ReflectionLMError(
            "unparsable_prompt",
            "the rule reflection LM reads fst_jax's reflection meta-prompt (a ``` block with the "
            "current context, then '# Example n' records); this request has no such structure",
        )
    side_open = prompt.rfind(FENCE, 0, chain[0].start())
    curr_close = prompt.rfind(FENCE, 0, side_open)
    if curr_close <= first_fence:
        raise ReflectionLMError("unparsable_prompt", "no fenced current context before the records")
    current = prompt[first_fence + len(FENCE) : curr_close].strip("\n").strip()
    records = []
    for i, m in enumerate(chain):
        end = chain[i + 1].start() if i + 1 < len(chain) else len(prompt)
        chunk = prompt[m.end() : end]
        out_at = chunk.find("\n## Generated Outputs\n")
        fb_at = chunk.rfind("\n## Feedback\n")
        if out_at < 0 or fb_at < 0:
            continue
        feedback = chunk[fb_at + len("\n## Feedback\n") :]
        if i + 1 == len(chain):  # the last record ends where the records' ``` block closes
            close = feedback.find("\n" + FENCE)
            feedback = feedback[:close] if close >= 0 else feedback
        records.append(Record(chunk[:out_at].strip(), feedback.strip()))
    return ParsedRequest(current, tuple(records))


def format_rule(feedbacks: list[str]) -> str | None:
    """The answer-format instruction the feedback states most often (e.g. "Put the final answer
    within \\boxed{}."), copied from the feedback text; None when no feedback states one."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for fb in feedbacks:
        fb = fb.split("Reference solution:")[0]
        for clause in _CLAUSE_SPLIT.split(fb):
            clause = clause.strip().rstrip(".;!? ")
            if len(clause) < 8 or not (_RULE_VERBS.match(clause) or " must " in f" {clause} "):
                continue
            key = clause.lower()
            counts[key] += 1
            first.setdefault(key, clause)
    if not counts:
        return None
    best = max(counts, key=lambda k: (counts[k], -list(first).index(k)))
    text = first[best]
    return text[0].upper() + text[1:] + "."


def revealed_answer(feedback: str) -> tuple[str, str] | None:
    """(gold answer, reference solution or '') when the feedback shows the expected answer."""
    for pat in _GOLD_PATTERNS:
        m = pat.search(feedback)
        if m and m.group(1).strip():
            sol = _SOLUTION.search(feedback)
            solution = sol.group(1).strip() if sol else ""
            return m.group(1).strip(), solution if len(solution) <= MAX_SOLUTION_CHARS else ""
    return None


def _answer_shown(gold: str, rule: str | None) -> str:
    if rule and "\\boxed{}" in rule and "\\boxed{" not in gold:
        return f"\\boxed{{{gold}}}"
    return gold


def propose(prompt: str, attempt: int = 0) -> str:
    """The new context for one request (``attempt`` > 0: a retry asks for the next example)."""
    req = parse_request(prompt)
    base = req.current.split(f"\n\n{EXAMPLE_HEADER}\n")[0].rstrip()
    rule = format_rule([r.feedback for r in req.records])
    # Already stated (as a whole phrase: "output the answer" does not contain "put the answer").
    add_rule = rule is not None and not re.search(
        r"(?<![a-z])" + re.escape(rule.lower().rstrip(".")), base.lower()
    )
    usable = []
    for r in req.records:
        ans = revealed_answer(r.feedback)
        if ans and r.problem and f"Problem: {r.problem}" not in req.current:
            usable.append((r, *ans))
    parts = [base] if base else []
    if add_rule:
        parts.append(rule)
    if usable:
        h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
        rec, gold, solution = usable[(h + attempt) % len(usable)]
        lines = [EXAMPLE_HEADER, f"Problem: {rec.problem}"]
        if solution:
            lines.append(f"Solution: {solution}")
        lines.append(f"Answer: {_answer_shown(gold, rule)}")
        parts.append("\n".join(lines))
    if not add_rule and not usable:
        raise ReflectionLMError(
            "nothing_to_add",
            "the feedback states no new format rule and shows no expected answer to use as a "
            "worked example",
        )
    return "\n\n".join(parts)


class RuleReflectionLM:
    """The `rule` backend (see the module docstring). Settings meant for remote backends (model,
    endpoint, retries) that `run_setup.make_reflection_lm` passes are accepted and unused."""

    collective = False

    def __init__(self, **_remote_settings: Any) -> None:
        self.usage: dict[str, int] = {"requests": 0, "retries": 0, "prompt_tokens": 0,
                                      "completion_tokens": 0}  # fmt: skip

    def fingerprint(self) -> str:
        return "rule:v1"

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        self.usage["requests"] += 1
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            raise ReflectionLMError("unparsable_prompt", "no user message in the request")
        # Later user turns are the Reflector's corrective follow-ups: ask for the next example.
        text = propose(str(users[0].get("content", "")), attempt=len(users) - 1)
        return LMReply(text=f"{FENCE}\n{text}\n{FENCE}", finish_reason="stop")
