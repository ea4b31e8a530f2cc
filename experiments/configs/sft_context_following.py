"""Supervised warm start of SmolLM2-135M-Instruct on context-following demonstrations (CPU).

Why: the embedded model barely reads its system turn, so FST's contexts have nothing to move
(issue 21). This teaches the *form* of the answer to follow the context (\\boxed{}, JSON, last
line, a prefix, length, a worked example's style, a named strategy; plain prose when there is
no rule) on question families disjoint from the RL tasks (fst_jax/tasks/demos.py).

    fst-train --config=experiments/configs/sft_context_following.py --workdir=runs/sft-cf
    fst-train --config=experiments/configs/default.py --config.init_from=runs/sft-cf ...  # then RL
    python experiments/context_effect.py --model runs/sft-cf/export --out <dir>  # measure

Sized for 2 CPU cores: 20 steps × 16 conversations (320 demonstrations of 35-190 tokens),
2 micro-batches with per-layer remat. Measured on a 2-core machine shared with ~6 other jobs
(load average ~20): 24 min wall including model load, 3 compilations and validation; peak RSS
7.6 GB (experiments/results/sft_warm_start/README.md). Alone on 2 cores it should take a
fraction of that (about 30 s per step under contention, most of it waiting for CPU).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fst_base import base_config


def get_config():
    c = base_config()
    c.mode = "sft"
    c.model.spec = "smollm2-135m-instruct"
    c.model.dtype = "float32"  # XLA:CPU trains faster in fp32
    c.model.remat = "layer"  # lower peak RSS (no remat: 8.6 GB, OOM-killed on a shared box)
    c.task.name = "math"  # unused by SFT; kept valid for a later init_from run
    c.sft.data = "context_following"
    c.sft.data_kwargs.n = 2400
    c.sft.data_kwargs.seed = 0
    c.sft.val_rows = 32
    c.sft.steps = 20  # LR is constant after warm-up: the first 20 of a longer run are identical
    c.sft.batch_size = 16
    c.sft.max_len = 384
    c.sft.length_buckets = "96,192,384"  # few buckets: each is one compilation
    c.sft.lr = 2e-4
    c.sft.warmup_steps = 5
    c.sft.grad_clip = 1.0
    c.sft.micro_batches = 2
    c.sft.eval_every = 20
    c.sft.checkpoint_every = 20
    c.checkpoint.keep = 2
    return c
