"""Analysis of run directories: sigmoid asymptote fits, steps-to-peak, the paper's figures and the
HTML report (``fst-report``)."""

from fst_jax.analysis.fit import (
    SigmoidFit,
    first_step_reaching,
    fit_sigmoid,
    running_max,
    sigmoid,
    steps_to_peak_ratio,
)
from fst_jax.analysis.plots import plot_data_efficiency, plot_kl_vs_reward
from fst_jax.analysis.runs import Group, Run, eval_points, group_runs, load_run, load_runs

__all__ = [
    "Group",
    "Run",
    "SigmoidFit",
    "eval_points",
    "first_step_reaching",
    "fit_sigmoid",
    "group_runs",
    "load_run",
    "load_runs",
    "plot_data_efficiency",
    "plot_kl_vs_reward",
    "running_max",
    "sigmoid",
    "steps_to_peak_ratio",
]
