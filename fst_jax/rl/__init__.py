"""RL core: math over batches plus one jitted, sharded update (no Python-side state).

advantages  group-relative advantages (registry: grpo, dr_grpo, rloo), flat-group dropping,
            aggregation row weights
batch       `RLBatch` (training layout + advantages + weights) and `make_batch`
collect     one RL step's rollouts: problems × G rows over the exported contexts, sampled or
            reused from GEPA's evaluations (`collect_rollouts`); the update's rollout dict
            (`train_rollouts`); the step's metrics (`step_metrics`)
reuse       the per-cycle store of GEPA's evaluation rollouts (rl.reuse_gepa_rollouts)
losses      per-token losses (registry: cispo, grpo, dr_grpo, gspo, fst_distill, sft)
kl          k1/k2/k3 estimators and the jitted `measure_kl` monitor
logprobs    chunked vocab projection: log-probs, entropy, full-vocab KL
train_step  `make_train_step(model_config, mesh, rl_config)` → sharded jitted AdamW update;
            `update_on_rollouts` = rl_config.updates_per_batch updates on one rollout batch
"""

from fst_jax.rl.advantages import (
    AGGREGATIONS,
    Advantages,
    compute_advantages,
    get_advantage,
    list_advantages,
    register_advantage,
    row_weights,
)
from fst_jax.rl.batch import RLBatch, make_batch, validate_batch
from fst_jax.rl.collect import (
    StepRollouts,
    collect_rollouts,
    rollout_metrics,
    step_metrics,
    train_rollouts,
    update_metrics,
)
from fst_jax.rl.kl import kl_estimate, make_measure_kl
from fst_jax.rl.logprobs import logps_from_hidden, token_logps
from fst_jax.rl.losses import LossConfig, get_loss, list_losses, register_loss
from fst_jax.rl.reuse import REUSE_MODES, RolloutStore, StoredRollout
from fst_jax.rl.train_step import (
    RLConfig,
    TrainState,
    TrainStep,
    host_metrics,
    make_logps_fn,
    make_optimizer,
    make_train_step,
    update_on_rollouts,
)

__all__ = [
    "AGGREGATIONS",
    "REUSE_MODES",
    "Advantages",
    "LossConfig",
    "RLBatch",
    "RLConfig",
    "RolloutStore",
    "StepRollouts",
    "StoredRollout",
    "TrainState",
    "TrainStep",
    "collect_rollouts",
    "compute_advantages",
    "get_advantage",
    "get_loss",
    "host_metrics",
    "kl_estimate",
    "list_advantages",
    "list_losses",
    "logps_from_hidden",
    "make_batch",
    "make_logps_fn",
    "make_measure_kl",
    "make_optimizer",
    "make_train_step",
    "register_advantage",
    "register_loss",
    "rollout_metrics",
    "row_weights",
    "step_metrics",
    "token_logps",
    "train_rollouts",
    "update_metrics",
    "update_on_rollouts",
    "validate_batch",
]
