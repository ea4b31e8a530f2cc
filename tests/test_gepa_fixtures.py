"""Deterministic GEPA fixtures shared by the tests/test_gepa_*.py files.

A scripted "policy": the score of (context text, example id) is a fixed pseudo-random value in
{0, 0.5, 1} derived from a hash, with feedback and rollout text derived the same way. A scripted
reflection LM answers from a fixed list of replies in call order.
"""

from __future__ import annotations

import hashlib

from fst_jax.gepa import LocalReflectionLM


def scripted_score(text: str, example_id: str, salt: str = "") -> float:
    h = hashlib.sha256(f"{salt}|{text}|{example_id}".encode()).digest()
    return (0.0, 0.5, 1.0)[h[0] % 3]


class ScriptedPolicy:
    """Implements the fst_jax evaluate callback over a population state; logs every call."""

    def __init__(self, state, salt: str = "", bias: dict[str, float] | None = None):
        self.state = state
        self.salt = salt
        self.bias = bias or {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def score(self, text: str, eid: str) -> float:
        return min(1.0, scripted_score(text, eid, self.salt) + self.bias.get(text, 0.0))

    def __call__(self, candidate_ids, example_ids):
        texts = [self.state.candidates[c].text for c in candidate_ids]
        scores = [self.score(t, e) for t, e in zip(texts, example_ids)]
        # Group consecutive pairs of the same text into one logged call (like one adapter call).
        run: list = []
        for t, e in zip(texts, example_ids):
            if run and run[0] == t:
                run[1].append(e)
            else:
                if run:
                    self.calls.append((run[0], tuple(run[1])))
                run = [t, [e]]
        if run:
            self.calls.append((run[0], tuple(run[1])))
        feedback = [f"expected answer for {e}; got score {s}" for e, s in zip(example_ids, scores)]
        rollouts = [f"rollout of {e} under <{t}>" for t, e in zip(texts, example_ids)]
        return scores, feedback, rollouts


def fenced(text: str) -> str:
    return f"Here is the improved instruction:\n```text\n{text}\n```\n"


class ScriptedReplies:
    """A reflection LM (prompt -> reply) that answers from a list, in call order."""

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.prompts: list[str] = []

    def __call__(self, prompt):
        self.prompts.append(prompt if isinstance(prompt, str) else str(prompt))
        if len(self.prompts) > len(self.replies):
            raise AssertionError("scripted reflection LM ran out of replies")
        return self.replies[len(self.prompts) - 1]

    def as_local(self) -> LocalReflectionLM:
        return LocalReflectionLM(lambda convs: [self(convs[0][-1]["content"])], name="scripted")
