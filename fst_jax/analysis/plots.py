"""The paper's figures as functions of loaded runs; the report, the run summary and the notebooks
all call these (one copy of the plotting code).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot's global state (safe
in a headless process and in a notebook: ``display(fig)``); :func:`save` writes a PNG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fst_jax import metrics, paths
from fst_jax.analysis.fit import SigmoidFit, running_max
from fst_jax.analysis.runs import Group, Run, group_runs, samples_at, seed_stats
from fst_jax.analysis.runs import load_runs as load_runs  # kept here for callers of plots.load_runs

MODE_COLORS = {"rl": "tab:blue", "gepa": "tab:green", "fst": "tab:red", "fst_distill": "tab:orange"}
_EXTRA = ["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def assign_colors(groups: Sequence[Group]) -> None:
    """Fixes each group's color once (the mode's color for its first group, then extra colors),
    so every figure of a report draws a group in the same color."""
    used, extra = set(), iter(_EXTRA * 4)
    for g in groups:
        c = MODE_COLORS.get(g.mode)
        g.color = c if c and c not in used else next(extra)
        used.add(g.color)


def colors(groups: Sequence[Group]) -> dict[str, str]:
    """Each group's color (assigned here for groups that have none yet)."""
    if any(g.color is None for g in groups):
        assign_colors(groups)
    return {g.label: g.color for g in groups}


def save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Writes a PNG to a local path or a URI (gs://...): rendered in memory, then written."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    paths.workdir_path(path).write_bytes(buf.getvalue())


def _groups(runs: Mapping[str, Run] | Sequence[Group]) -> list[Group]:
    if isinstance(runs, Mapping):
        return group_runs(runs.values())
    return list(runs)


def _finish(fig: Figure, *axes: Any) -> Figure:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _band(ax: Any, st: Mapping[str, np.ndarray], color: str, label: str, **kw: Any) -> None:
    ax.plot(st["x"], st["mean"], "o-", color=color, label=label, ms=3, **kw)
    if np.any(st["n"] > 1):
        ax.fill_between(st["x"], st["mean"] - st["se"], st["mean"] + st["se"], color=color,
                        alpha=0.2, lw=0)  # fmt: skip


def val_key(k: int) -> str:
    return metrics.VAL_MEAN.format(k=k)


def group_curve(group: Group, key: str, x: str = "step") -> dict[str, np.ndarray]:
    """Mean ± SE over the group's seeds of ``key`` against step (or samples)."""
    per = [r.series(key) if x == "step" else samples_at(r, key) for r in group.runs]
    return seed_stats([(np.asarray(s, np.float64), v) for s, v in per if len(s)])


def plot_data_efficiency(groups: Sequence[Group], k: int = 4) -> Figure:
    """Validation mean@k vs RL step and vs samples; mean over seeds with ±1 SE band; dashed:
    mean over seeds of each seed's running max."""
    fig = Figure(figsize=(11, 4.2))
    ax_s, ax_n = fig.subplots(1, 2)
    col = colors(groups)
    for g in groups:
        n = f" (n={len(g.runs)})" if len(g.runs) > 1 else ""
        _band(ax_s, group_curve(g, val_key(k)), col[g.label], g.label + n)
        _band(ax_n, group_curve(g, val_key(k), x="samples"), col[g.label], g.label + n)
        per = [(s.astype(np.float64), running_max(v)) for s, v in
               (r.series(val_key(k)) for r in g.runs) if len(s)]  # fmt: skip
        if per:
            rm = seed_stats(per)
            ax_s.plot(rm["x"], rm["mean"], "--", color=col[g.label], alpha=0.6)
    ax_s.set(xlabel="RL step", ylabel=f"validation mean@{k} (dashed: running max)",
             title="Reward vs step")  # fmt: skip
    ax_n.set(xlabel="rollouts spent (RL + GEPA)", ylabel=f"validation mean@{k}",
             title="Reward vs samples")  # fmt: skip
    return _finish(fig, ax_s, ax_n)


def plot_sigmoid(
    groups: Sequence[Group], fits: Mapping[str, SigmoidFit | None], k: int = 4
) -> Figure:
    """Every evaluation (pooled over seeds) and the fitted ScaleRL sigmoid per group."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    col = colors(groups)
    for g in groups:
        pts = [r.series(val_key(k)) for r in g.runs]
        s = np.concatenate([p[0] for p in pts]) if pts else np.array([])
        v = np.concatenate([p[1] for p in pts]) if pts else np.array([])
        ax.plot(s, v, "o", color=col[g.label], alpha=0.45, ms=4)
        fit = fits.get(g.label)
        if fit is None:
            continue
        xs = np.linspace(max(1.0, s[s >= 1].min()), s.max() * 1.5, 200)
        ci = f" [{fit.a_ci[0]:.3f}, {fit.a_ci[1]:.3f}]" if fit.a_ci else ""
        ax.plot(xs, fit(xs), "-", color=col[g.label], label=f"{g.label}: A={fit.a:.3f}{ci}")
        ax.axhline(fit.a, color=col[g.label], ls=":", alpha=0.6)
    ax.set(xlabel="RL step", ylabel=f"validation mean@{k}",
           title="Sigmoid fit R(C) = R0 + (A-R0)/(1+(C_mid/C)^B)")  # fmt: skip
    return _finish(fig, ax)


def _rolling(y: np.ndarray, w: int) -> np.ndarray:
    """Centered rolling mean with a window shrinking at the ends (keeps every point)."""
    h = w // 2
    return np.array([np.mean(y[max(0, i - h) : i + h + 1]) for i in range(len(y))])


def annotated_indices(steps: np.ndarray, reward: np.ndarray, n: int = 4) -> list[int]:
    """The few evaluations worth a step label: first, last, best, and evenly spaced others."""
    if len(steps) == 0:
        return []
    picks = {0, len(steps) - 1, int(np.nanargmax(reward))}
    for i in np.linspace(0, len(steps) - 1, n).round().astype(int):
        if len(picks) >= n:
            break
        picks.add(int(i))
    return sorted(picks)


def plot_kl_vs_reward(
    runs: Mapping[str, Run] | Sequence[Group], path: str | os.PathLike | None = None, k: int = 4
) -> Figure:
    """Reward vs KL(π_θ‖π_base) (paper Fig. 4) and reward vs step. Every evaluation is a marker
    (all seeds); the line is the rolling mean of the seed-mean curve in step order; only a few
    steps are labeled. Saves a PNG when ``path``."""
    groups = _groups(runs)
    fig = Figure(figsize=(11, 4.2))
    ax_kl, ax_step = fig.subplots(1, 2)
    col = colors(groups)
    for g in groups:
        rew, kl = group_curve(g, val_key(k)), group_curve(g, metrics.VAL_KL_TO_BASE)
        steps = np.intersect1d(rew["x"], kl["x"])
        if len(steps) == 0:
            continue
        c = col[g.label]
        y = rew["mean"][np.searchsorted(rew["x"], steps)]
        x = kl["mean"][np.searchsorted(kl["x"], steps)]
        for r in g.runs:
            s1, v1 = r.series(val_key(k))
            s2, v2 = r.series(metrics.VAL_KL_TO_BASE)
            both = np.intersect1d(s1, s2)
            ax_kl.plot(v2[np.isin(s2, both)], v1[np.isin(s1, both)], "o", color=c, alpha=0.35, ms=4)
        w = max(1, min(5, len(steps) // 4 * 2 + 1))
        ax_kl.plot(_rolling(x, w), _rolling(y, w), "-", color=c, lw=2, label=g.label)
        for i in annotated_indices(steps, y):
            ax_kl.annotate(f"{int(steps[i])}", (x[i], y[i]), fontsize=8, color=c,
                           xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax_step.plot(steps, y, "o-", color=c, label=g.label, ms=4)
        ax_step.plot(steps, running_max(y), "--", color=c, alpha=0.5)
    ax_kl.set(xlabel="KL(π_θ ‖ π_base) on held-out prompts", ylabel=f"validation mean@{k}",
              title="Distance from base vs reward (labels: RL step)")  # fmt: skip
    ax_step.set(xlabel="RL step", ylabel=f"validation mean@{k} (dashed: running max)",
                title="Reward vs step")  # fmt: skip
    _finish(fig, ax_kl, ax_step)
    if path is not None:
        save(fig, path)
    return fig


def plot_bars(
    rows: Sequence[Mapping[str, Any]], value: str, err: str, title: str, ylabel: str
) -> Figure:
    """One bar per row (``label``), with a ±1 SE error bar (plasticity, ablations)."""
    fig = Figure(figsize=(max(4.5, 1.3 * len(rows) + 2), 4))
    ax = fig.subplots()
    labels = [r["label"] for r in rows]
    vals = [r[value] for r in rows]
    errs = [r[err] for r in rows]
    ax.bar(range(len(rows)), vals, yerr=errs, capsize=4,
           color=[r.get("color", "tab:gray") for r in rows])  # fmt: skip
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(len(rows)), labels, rotation=15, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    return _finish(fig, ax)


def plot_continual(
    groups: Sequence[Group], keys: Mapping[str, str], boundaries: Sequence[tuple[int, str]]
) -> Figure:
    """One panel per group: a curve per metric key (per-task reward) and the stage boundaries."""
    fig = Figure(figsize=(5.5 * len(groups), 4))
    axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False)[0])
    for ax, g in zip(axes, groups):
        for i, (label, key) in enumerate(keys.items()):
            st = group_curve(g, key)
            if len(st["x"]):
                _band(ax, st, f"C{i}", label)
        for step, task in boundaries:
            ax.axvline(step, color="k", ls=":", alpha=0.6)
            ax.annotate(task, (step, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                        xytext=(3, -12), textcoords="offset points")  # fmt: skip
        ax.set(xlabel="RL step", ylabel="validation reward", title=g.label)
    return _finish(fig, *axes)


def plot_series_panels(
    groups: Sequence[Group], panels: Sequence[tuple[str, str]], title: str
) -> Figure:
    """One panel per (metric key or derived name, y label), mean over seeds per group."""
    fig = Figure(figsize=(4.6 * len(panels), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    col = colors(groups)
    for ax, (key, ylabel) in zip(axes, panels):
        for g in groups:
            st = group_curve(g, key)
            if len(st["x"]):
                _band(ax, st, col[g.label], g.label)
        ax.set(xlabel="RL step", ylabel=ylabel)
    fig.suptitle(title)
    return _finish(fig, *axes)


def plot_quadrants(cells: Mapping[str, Mapping[str, float]]) -> Figure:
    """One 2×2 heatmap per group: {base, trained} weights × {seed, trained} context."""
    cols = min(4, len(cells))
    rows = -(-len(cells) // cols)
    fig = Figure(figsize=(3.6 * cols + 0.5, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(cells) :]:
        ax.set_axis_off()
    for ax, (label, q) in zip(axes, cells.items()):
        m = np.array([[q["base_w/seed_p"], q["base_w/trained_p"]],
                      [q["trained_w/seed_p"], q["trained_w/trained_p"]]])  # fmt: skip
        top = max(1e-9, float(np.nanmax(m)))
        ax.imshow(m, vmin=0, vmax=top, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=10,
                    color="white" if v > 0.6 * top else "black")  # fmt: skip
        ax.set_xticks([0, 1], ["seed ctx", "trained ctx"])
        ax.set_yticks([0, 1], ["base w", "trained w"])
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return fig


def plot_gepa_rounds(rounds: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Per round: accepted / rejected / skipped iterations (bars) and best anchor score (line)."""
    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    cyc = np.array([r["cycle"] for r in rounds])
    bottom = np.zeros(len(rounds))
    for key, color in (("accepted", "tab:green"), ("rejected", "tab:red"),
                       ("unaffordable", "tab:purple"), ("skipped_perfect", "tab:gray"),
                       ("skipped_lm", "tab:olive")):  # fmt: skip
        v = np.array([r.get(key, 0) for r in rounds], np.float64)
        if v.any() or key in ("accepted", "rejected"):
            ax.bar(cyc, v, bottom=bottom, color=color, label=key)
            bottom += v
    ax.set(xlabel="cycle (GEPA round)", ylabel="iterations", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(1.0, bottom.max()) * 1.35)  # head room for the legends
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=4)
    ax2 = ax.twinx()
    ax2.plot(cyc, [r["best_mean"] for r in rounds], "k.-", label="best anchor mean")
    ax2.set_ylabel("best anchor mean score")
    ax2.set_ylim(0, max(1.0, *(r["best_mean"] for r in rounds)) * 1.35)
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_lineage(tree: Mapping[str, Any], title: str) -> Figure:
    """The candidate tree: x = round born, children to the right of parents; node = id and anchor
    score at birth; gold = exported at the last round; red ticks = rejected proposals."""
    nodes = tree["nodes"]
    fig = Figure(figsize=(max(6, 1.3 * (tree["max_cycle"] + 3)), max(3, 0.55 * len(nodes) + 1.5)))
    ax = fig.subplots()
    pos = {n["id"]: (n["cycle"], n["y"]) for n in nodes}
    for n in nodes:
        for p in n["parents"]:
            if p in pos:
                ax.plot([pos[p][0], n["cycle"]], [pos[p][1], n["y"]], "-", color="0.6", zorder=1)
    for n in nodes:
        color = "gold" if n["exported"] else ("0.8" if not n["parents"] else "tab:blue")
        ax.scatter([n["cycle"]], [n["y"]], s=520, color=color, edgecolor="k", zorder=2)
        score = "" if n["score"] is None else f"\n{n['score']:.2f}"
        ax.annotate(f"#{n['id']}{score}", (n["cycle"], n["y"]), fontsize=7, ha="center",
                    va="center", zorder=3)  # fmt: skip
    counts: dict[tuple[int, int], int] = {}
    for rej in tree["rejected"]:
        if rej["parent"] in pos:
            counts[(rej["cycle"], rej["parent"])] = counts.get((rej["cycle"], rej["parent"]), 0) + 1
    for (cycle, parent), n in counts.items():
        y = pos[parent][1]
        ax.plot([cycle + 0.25], [y], "x", color="tab:red", ms=5)
        if n > 1:
            ax.annotate(f"×{n}", (cycle + 0.25, y), fontsize=7, color="tab:red",
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("round (cycle) born; seeds at -1; x = rejected proposals from that parent")
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-1.6, tree["max_cycle"] + 0.8)
    ax.set_ylim(min((n["y"] for n in nodes), default=0) - 0.8, 0.8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
