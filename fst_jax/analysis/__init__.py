"""Analysis of run metrics: sigmoid asymptote fits, steps-to-peak ratios, KL-vs-reward plots."""

from fst_jax.analysis.fit import (
    SigmoidFit,
    first_step_reaching,
    fit_sigmoid,
    running_max,
    sigmoid,
    steps_to_peak_ratio,
)
from fst_jax.analysis.plots import eval_points, load_runs, plot_kl_vs_reward

__all__ = [
    "SigmoidFit",
    "eval_points",
    "first_step_reaching",
    "fit_sigmoid",
    "load_runs",
    "plot_kl_vs_reward",
    "running_max",
    "sigmoid",
    "steps_to_peak_ratio",
]
