"""Ablations as named overrides of a paper setup: ``ablations.py:<experiment>,<ablation>[,...]``.

e.g. ``--config=experiments/configs/ablations.py:codeio,rl`` (RL baseline on CodeIO) or
``ablations.py:hover,T12,K8``. Every ablation is also reachable as a plain flag override; this
file only names the sweeps the paper (and its open questions, paper.md §8) call for.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fst_paper

ABLATIONS = {
    # modes
    "rl": {"mode": "rl"},
    "gepa": {"mode": "gepa"},
    "fst": {"mode": "fst"},
    "fst_distill": {"mode": "fst_distill"},
    # cycle length T
    "T3": {"rl.steps_per_cycle": 3},
    "T12": {"rl.steps_per_cycle": 12},
    # contexts per problem K (must divide G)
    "K1": {"gepa.k": 1},
    "K2": {"gepa.k": 2},
    "K8": {"gepa.k": 8},
    # group size G
    "G4": {"rl.group_size": 4, "gepa.k": 4},
    "G16": {"rl.group_size": 16},
    # CISPO truncation tau
    "tau2": {"rl.tau": 2.0},
    "tau8": {"rl.tau": 8.0},
    # KL to base in the loss
    "kl1e-3": {"rl.kl_coef": 1e-3},
    "kl1e-2": {"rl.kl_coef": 1e-2},
    # loss / advantage registries
    "grpo_loss": {"rl.loss": "grpo"},
    "gspo": {
        "rl.loss": "gspo",
        "rl.aggregation": "sequence_mean",
        "rl.eps_low": 3e-4,
        "rl.eps_high": 4e-4,
    },  # GSPO paper's clip range
    "rloo": {"rl.advantage": "rloo"},
    # several optimizer updates per rollout batch: where CISPO's truncation acts
    "U2": {"rl.updates_per_batch": 2},
    "U4": {"rl.updates_per_batch": 4},
    # GEPA anchors held out from the RL stream (answer-leak control)
    "disjoint_anchors": {"gepa.anchors": "disjoint", "gepa.disjoint_size": 960},
}


def get_config(arg: str = "codeio,rl"):
    experiment, *names = [a.strip() for a in arg.split(",") if a.strip()]
    c = fst_paper.get_config(experiment)
    steps = fst_paper.EXPERIMENTS[experiment]["steps"]
    for name in names:
        if name not in ABLATIONS:
            import difflib

            near = difflib.get_close_matches(name, ABLATIONS, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}.{hint}")
        for key, value in ABLATIONS[name].items():
            node = c
            *path, leaf = key.split(".")
            for p in path:
                node = node[p]
            node[leaf] = value
    c.num_cycles = fst_paper.cycles_for(c, steps)  # same RL steps when T changes (rounded up)
    return c
