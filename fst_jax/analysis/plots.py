"""Plots the run writes and the notebooks reuse: KL-to-base vs reward, reward vs step."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fst_jax import metrics, paths


def load_runs(workdirs: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """Reads each workdir's JSONL; labels are ``<mode>:<dirname>`` from the run's config record."""
    runs = {}
    for wd in workdirs:
        recs = metrics.read_metrics(wd)
        mode = next((r["run/mode"] for r in recs if "run/mode" in r), "run")
        runs[f"{mode}:{paths.workdir_path(wd).name}"] = {
            "records": recs,
            "mode": mode,
            "workdir": str(wd),
        }
    return runs


def eval_points(records: Sequence[Mapping[str, Any]], k: int = 4) -> dict[str, np.ndarray]:
    """Per-evaluation arrays (step, reward = val/mean@k, kl = val/kl_to_base) where both exist."""
    rew_key, kl_key = metrics.VAL_MEAN.format(k=k), metrics.VAL_KL_TO_BASE
    rows = [r for r in records if rew_key in r and kl_key in r]
    return {
        "step": np.array([r["step"] for r in rows], dtype=np.int64),
        "reward": np.array([float(r[rew_key]) for r in rows]),
        "kl": np.array([float(r[kl_key]) for r in rows]),
    }


def plot_kl_vs_reward(
    runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike | None = None, k: int = 4
):
    """Two panels: validation reward vs KL(π_θ‖π_base) (one marker per evaluation, line in step
    order, as the paper's Fig. 4) and validation reward vs step. Saves a PNG when ``path``."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_step) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, run in runs.items():
        pts = eval_points(run["records"], k)
        if len(pts["step"]) == 0:
            continue
        line = ax_kl.plot(pts["kl"], pts["reward"], "o-", label=label, alpha=0.85)[0]
        for s, x, y in zip(pts["step"], pts["kl"], pts["reward"]):
            ax_kl.annotate(str(s), (x, y), fontsize=7, color=line.get_color())
        ax_step.plot(pts["step"], pts["reward"], "o-", color=line.get_color(), label=label)
        rm_key = metrics.VAL_MEAN_RUNNING_MAX.format(k=k)
        steps, rm = metrics.series(run["records"], rm_key)
        if len(steps):
            ax_step.plot(steps, rm, "--", color=line.get_color(), alpha=0.5)
    ax_kl.set_xlabel("KL(π_θ ‖ π_base) on held-out prompts")
    ax_kl.set_ylabel(f"validation mean@{k}")
    ax_kl.set_title("Distance from base vs reward")
    ax_step.set_xlabel("RL step")
    ax_step.set_ylabel(f"validation mean@{k} (dashed: running max)")
    ax_step.set_title("Reward vs step")
    for ax in (ax_kl, ax_step):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:  # a local path or a URI (gs://...): render, then write the bytes
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        paths.workdir_path(path).write_bytes(buf.getvalue())
        plt.close(fig)
    return fig
