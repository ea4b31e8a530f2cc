"""The evidence study's base config (experiments/study.py): math lite, boxed answers, CPU-sized.

Every arm of the study (RL, FST, GEPA-only × reflection LMs × seeds) runs this config with only
the mode and the reflection LM changed, from the supervised warm start
(experiments/configs/sft_context_following.py, passed as ``--init_from``): the warm-started
model follows a format rule in its context (+0.055 ± 0.020 reward from the rule on this task,
experiments/results/context_effect/README.md), which the base model does not.

Task: `math` lite with ``answer_format="boxed"`` — reward 1 only for the right number inside
\\boxed{}, so the context's format rule matters; the seed context is the task's own seed prompt
(step by step, answer in \\boxed{}). Sized for ~5 minutes per run on 2 cores: 2 cycles × 3 RL
steps of 4 problems × 8 rollouts, a GEPA round of ≤ 54 rollouts on the cycle's 12 problems, evaluation (32
validation problems × 2 samples per setting) at start, after each cycle and at the end.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from default import get_config as default_config


def get_config():
    c = default_config()
    c.task.kwargs.answer_format = "boxed"
    c.num_cycles = 2
    c.rl.steps_per_cycle = 3
    c.rl.batch_size = 4
    c.rl.group_size = 8
    c.sampling.max_new_tokens = 96  # the warm start's \\boxed{} answers need room
    # The paper's lookahead anchors: the next T batches' problems (3 × 4 = 12), which is also
    # what rollout reuse (rl.reuse_gepa_rollouts) needs to cover a whole cycle.
    c.gepa.anchor_size = 12
    c.gepa.budget = 54  # 3 worst-case iterations (2 × minibatch 3 + 12 anchors each)
    c.eval.every_cycles = 1
    c.eval.num_examples = 32
    c.eval.k = 2
    c.eval.kl_examples = 32
    c.checkpoint.keep = 1
    return c
