"""Supervised fine-tuning (``fst-train --config.mode=sft``): the warm start before RL / FST.

trainer  `run(config, workdir)`: token cross-entropy on assistant turns with the RL train step
         (loss ``sft``), checkpoints in the controller's layout (``--config.init_from`` works),
         exact resume, validation loss, HF export
data     chat rows from a generator / JSONL / HF dataset, assistant masks, length buckets
"""

from fst_jax.sft.data import (
    BatchPlan,
    encode_chat,
    list_generators,
    load_conversations,
    register_generator,
)
from fst_jax.sft.trainer import SFTRun, format_summary, run

__all__ = [
    "BatchPlan",
    "SFTRun",
    "encode_chat",
    "format_summary",
    "list_generators",
    "load_conversations",
    "register_generator",
    "run",
]
