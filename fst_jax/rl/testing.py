"""Synthetic rollouts in the training layout, for tests and benchmarks of the RL step.

Not a sampler: tokens are uniform random, but the layout (prompt ‖ completion ‖ padding, −1
positions, per-row lengths) is exactly what `fst_jax.sampling` returns, so the loss, the
sharding and the micro-batching are exercised on realistic ragged rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
