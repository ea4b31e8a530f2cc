"""The work of the old default run (commit 58c3b67's experiments/configs/default.py) on today's code.

Sizes are the old default's (2 cycles × 3 CISPO steps of 2 problems × G=4, T 1.0, 96 new tokens,
GEPA k=2 / budget 16 / 4 anchors / local reflection LM, evaluation 4 problems × k=4 + KL on 4 at
start and end); the implementation settings (remat, micro-batching by token budget) are today's
default's, because choosing them is part of what is compared.

    fst-train --config=experiments/results/main_job_vs_old/old_default_work.py --workdir=…
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))

from default import get_config as default_config


def get_config():
    c = default_config()
    c.num_cycles = 2
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 96
    c.rl.steps_per_cycle = 3
    c.rl.batch_size = 2
    c.rl.group_size = 4
    c.gepa.k = 2
    c.gepa.budget = 16
    c.gepa.anchor_size = 4
    c.eval.every_cycles = 2
    c.eval.num_examples = 4
    c.eval.kl_examples = 4
    c.checkpoint.keep = 2
    return c
