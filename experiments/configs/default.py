"""Embedded CPU default: FST on SmolLM2-135M-Instruct, offline task, local reflection LM.

Sized for about 15 minutes on 2 CPU cores: 2 cycles × 3 RL steps (6 steps), a small GEPA round
per cycle, evaluation at start and end, one checkpoint per cycle, a KL-vs-reward PNG.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fst_base import base_config


def get_config():
    c = base_config()
    c.mode = "fst"
    c.num_cycles = 2
    c.model.spec = "smollm2-135m-instruct"
    c.model.dtype = "float32"  # XLA:CPU trained faster in fp32 than bf16 when measured
    c.task.name = "math"
    c.task.kwargs.difficulty = "lite"  # SmolLM2-135M base reward: low but non-zero
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 96
    c.sampling.max_context_len = 192
    c.rl.steps_per_cycle = 3
    c.rl.batch_size = 2  # × G=4 = 8 rollouts per step: one SmolLM2 train step ≈ 30 s on 2 cores
    c.rl.group_size = 4
    # Train-step memory bounded at any batch size by micro-batches of at most 512 tokens
    # (XLA:CPU's compiled step keeps ~2.4 MB per token of temporaries, with or without remat:
    # 3.7 vs 4.0 GB at 8x192); remat=none is then the faster setting at the same memory.
    c.model.remat = "none"
    c.rl.microbatch_tokens = 512
    c.rl.lr = 2e-5
    c.rl.warmup_steps = 2
    c.gepa.k = 2
    c.gepa.budget = 16  # ≤ 2 reflective iterations per round on 4 anchors
    c.gepa.anchor_size = 4  # rollout rows stay in the sampler's 4/8/16 buckets
    c.gepa.reflection_lm = "local"
    c.gepa.reflection_max_tokens = 128
    c.gepa.max_pool = 8
    c.eval.every_cycles = 2
    c.eval.num_examples = 4  # × k=4 = 16 rollouts per setting
    c.eval.kl_examples = 4
    c.checkpoint.keep = 2
    return c
