"""The teacher view of ``fst_distill``: the student's own completions after the prompt WITH a
context φ, so the loss can compare π_θ(·|x, y<t) with sg π_θ(·|φ, x, y<t) on the same tokens.

Host-side numpy (no JAX): built once per RL step from the sampler's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TEACHER_BUCKET = 64  # teacher lengths are padded to a multiple of this: steps share a compilation


def teacher_view(
    bank: Any, ctx_slot: np.ndarray, rows: Sequence[Any], out: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, positions, completion mask) [B, S]: row b = context ``bank.texts[ctx_slot[b]]``
    + task b + the chat suffix + the student's completion b; −1 positions on padding."""
    layout, comp = bank.layout, np.asarray(out.completion_tokens)
    lengths = np.asarray(out.completion_lengths)
    seqs = []
    for b, ex in enumerate(rows):
        prompt = (list(layout.encode_context(bank.texts[ctx_slot[b]]))
                  + list(layout.encode_task(ex.question)) + list(layout.suffix_ids))  # fmt: skip
        seqs.append((prompt, comp[b, : lengths[b]].tolist()))
    s = max(len(p) + len(c) for p, c in seqs)
    s = -(-s // TEACHER_BUCKET) * TEACHER_BUCKET
    tok = np.zeros((len(seqs), s), np.int32)
    pos = np.full((len(seqs), s), -1, np.int32)
    msk = np.zeros((len(seqs), s), np.float32)
    for b, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        tok[b, :n] = p + c
        pos[b, :n] = np.arange(n)
        msk[b, len(p) : n] = 1.0
    return tok, pos, msk
