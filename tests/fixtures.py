"""Test fixtures shared across test files (imported as ``from fixtures import ...``: pytest puts
tests/ on sys.path, as in levanter's test_utils). Library code holds no test hooks.

GEPA: a scripted "policy": the score of (context text, example id) is a fixed pseudo-random value in
{0, 0.5, 1} derived from a hash, with feedback and rollout text derived the same way. A scripted
reflection LM answers from a fixed list of replies in call order.

RL: `random_rollouts`, synthetic rollouts in the training layout. Not a sampler: tokens are
uniform random, but the layout (prompt ‖ completion ‖ padding, −1 positions, per-row lengths) is
exactly what `fst_jax.sampling` returns, so the loss, the sharding and the micro-batching are
exercised on realistic ragged rows.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from fst_jax.gepa import LocalReflectionLM

# The contexts of conftest's shared `bank` (a short, a longer and a persona context).
BANK_CONTEXTS = ("Be brief.", "Think step by step, then answer.", "You are a pirate.")


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


def random_rollouts(
    seed: int,
    *,
    batch: int,
    seq_len: int,
    vocab_size: int,
    group_size: int,
    min_prompt: int = 2,
    max_prompt: int | None = None,
    min_completion: int = 1,
) -> dict[str, Any]:
    """Ragged random rows: keys tokens, positions, completion_mask, logps, rewards, group_ids.

    `logps` are plausible negatives (not from any model); rewards are 0/1 with at least one
    flat group when there are more than two groups, so dropping is exercised.
    """
    if batch % group_size:
        raise ValueError(f"group_size={group_size} must divide batch={batch}")
    rng = np.random.default_rng(seed)
    max_prompt = max_prompt or max(min_prompt, seq_len // 3)
    tokens = np.zeros((batch, seq_len), np.int32)
    positions = np.full((batch, seq_len), -1, np.int32)
    mask = np.zeros((batch, seq_len), np.float32)
    for b in range(batch):
        p = int(rng.integers(min_prompt, max_prompt + 1))
        c = int(rng.integers(min_completion, seq_len - p + 1))
        tokens[b, : p + c] = rng.integers(1, vocab_size, p + c)
        positions[b, : p + c] = np.arange(p + c)
        mask[b, p : p + c] = 1.0
    logps = np.where(mask > 0, -rng.exponential(2.0, mask.shape), 0.0).astype(np.float32)
    groups = batch // group_size
    rewards = rng.integers(0, 2, batch).astype(np.float32)
    if groups > 2:
        rewards[:group_size] = 1.0  # one flat group
    group_ids = np.repeat(np.arange(groups), group_size).astype(np.int32)
    return {
        "tokens": tokens,
        "positions": positions,
        "completion_mask": mask,
        "logps": logps,
        "rewards": rewards,
        "group_ids": group_ids,
    }
