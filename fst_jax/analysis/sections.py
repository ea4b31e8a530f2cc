"""The report's sections: each computes its numbers from the runs (kept in ``Section.data``, which
the report also writes as JSON) and draws its figures, or says which run would produce it.

A section is drawn only when some run holds its metrics; metric keys are read defensively (a run
from an older or newer fst_jax simply lacks or adds keys).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fst_jax import metrics
from fst_jax.analysis import plots
from fst_jax.analysis.fit import fit_sigmoid, running_max, steps_to_peak_ratio
from fst_jax.analysis.runs import FLAT_FRACTION, Group, Run, last_value, load_run

QUADRANTS = ("base_w/seed_p", "base_w/trained_p", "trained_w/seed_p", "trained_w/trained_p")


@dataclasses.dataclass
class Section:
    id: str
    title: str
    intro: str
    missing: str | None = None  # set when no run holds this section's data: which run would
    figures: list[tuple[str, Figure]] = dataclasses.field(default_factory=list)
    tables: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def table(self, caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.tables.append({"caption": caption, "columns": list(columns),
                            "rows": [[_fmt(v) for v in r] for r in rows]})  # fmt: skip


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _pm(mean: float, se: float, n: int) -> str:
    return f"{mean:.3f} ± {se:.3f}" if n > 1 else f"{mean:.3f}"


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return float("nan"), float("nan"), 0
    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(np.mean(v)), se, len(v)


def _has(group: Group, key: str) -> bool:
    return any(len(r.series(key)[0]) for r in group.runs)


def _lists(d: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in d.items()}


# ----------------------------------------------------------------------------- reward curves


def data_efficiency(groups: Sequence[Group], k: int) -> Section:
    key = plots.val_key(k)
    sec = Section("data_efficiency", "Data efficiency",
                  f"Validation mean@{k} (best exported context) against RL step and against "
                  "rollouts spent (RL: problems × G per step; GEPA: every rollout of its rounds). "
                  "Lines: mean over seeds, band: ±1 standard error; dashed: running max.")  # fmt: skip
    have = [g for g in groups if _has(g, key)]
    if not have:
        sec.missing = f"no run logged {key}; any fst-train run with evaluation enabled writes it"
        return sec
    sec.figures.append(("data_efficiency", plots.plot_data_efficiency(have, k)))
    for g in have:
        st, sm = plots.group_curve(g, key), plots.group_curve(g, key, x="samples")
        sec.data[g.label] = {"seeds": g.seeds, "step": _lists(st), "samples": _lists(sm)}
    rows, peaks = [], {}
    for g in have:
        ref = next((r for r in have if r.mode == "rl" and r.key["task"] == g.key["task"]
                    and not r.key["init_from"]), None)  # fmt: skip
        if ref is None or ref is g:
            continue
        a, b = plots.group_curve(ref, key), plots.group_curve(g, key)
        p = steps_to_peak_ratio(a["x"], a["mean"], b["x"], b["mean"])
        peaks[g.label] = {"reference": ref.label, **p}
        rows.append((g.label, ref.label, p["ref_peak"], p["ref_steps_to_peak"],
                     p["steps_to_ref_peak"], p["speedup"]))  # fmt: skip
    sec.data["steps_to_rl_peak"] = peaks
    if rows:
        sec.table("Steps to reach RL's peak (seed-mean curves; speed-up = RL's steps ÷ this run's)",
                  ["group", "RL group", "RL peak", "RL steps to peak", "steps to RL peak",
                   "speed-up"], rows)  # fmt: skip
    else:
        sec.notes.append("steps to RL's peak need an --config.mode=rl run of the same task")
    return sec


def sigmoid_fit(groups: Sequence[Group], k: int, bootstrap: int) -> Section:
    key = plots.val_key(k)
    sec = Section("sigmoid", "Sigmoid fit (asymptote A)",
                  "ScaleRL's 4-parameter sigmoid fitted to every evaluation at step ≥ 1 (seeds "
                  f"pooled); A is the asymptote, with a {bootstrap}-resample bootstrap 95% "
                  "interval.")  # fmt: skip
    fits, rows = {}, []
    for g in groups:
        pts = [r.series(key) for r in g.runs]
        s = np.concatenate([p[0] for p in pts]).astype(np.float64)
        v = np.concatenate([p[1] for p in pts])
        try:
            fit = fit_sigmoid(s, v, bootstrap=bootstrap)
        except ValueError as e:
            if len(s):
                sec.notes.append(f"{g.label}: no fit — {e}")
            continue
        fits[g.label] = fit
        sec.data[g.label] = {"a": fit.a, "a_ci": fit.a_ci, "r0": fit.r0, "b": fit.b,
                             "c_mid": fit.c_mid, "n_points": int(np.sum(s >= 1))}  # fmt: skip
        ci = f"[{fit.a_ci[0]:.3f}, {fit.a_ci[1]:.3f}]" if fit.a_ci else "n/a"
        rows.append((g.label, fit.a, ci, fit.r0, fit.b, fit.c_mid, int(np.sum(s >= 1))))
    if not fits:
        sec.missing = ("no group has 5 evaluations after step 0; run longer or evaluate more "
                       "often (--config.eval.every_cycles=1)")  # fmt: skip
        return sec
    sec.figures.append(("sigmoid_fit", plots.plot_sigmoid([g for g in groups if g.label in fits],
                                                          fits, k)))  # fmt: skip
    sec.table("Fitted parameters", ["group", "A", "A 95% CI", "R0", "B", "C_mid", "points"], rows)
    return sec


def kl_vs_reward(groups: Sequence[Group], k: int) -> Section:
    sec = Section("kl_vs_reward", "KL to base vs reward",
                  "Validation reward against KL(π_θ ‖ π_base) on held-out prompts without "
                  "context (paper Fig. 4). Markers: every evaluation of every seed; line: "
                  "rolling mean of the seed-mean curve in step order; labels: RL step.")  # fmt: skip
    have = [g for g in groups if _has(g, metrics.VAL_KL_TO_BASE) and _has(g, plots.val_key(k))]
    if not have:
        sec.missing = "no run logged val/kl_to_base (evaluation with eval.kl_examples > 0)"
        return sec
    sec.figures.append(("kl_vs_reward", plots.plot_kl_vs_reward(have, k=k)))
    rows = []
    for g in have:
        rew, kl = (
            plots.group_curve(g, plots.val_key(k)),
            plots.group_curve(g, metrics.VAL_KL_TO_BASE),
        )
        steps = np.intersect1d(rew["x"], kl["x"])
        y = rew["mean"][np.searchsorted(rew["x"], steps)]
        x = kl["mean"][np.searchsorted(kl["x"], steps)]
        sec.data[g.label] = {"step": steps.tolist(), "kl": x.tolist(), "reward": y.tolist(),
                             "annotated": [int(steps[i]) for i in plots.annotated_indices(steps, y)]}  # fmt: skip
        rows.append((g.label, int(steps[-1]), float(x[-1]), float(y[-1])))
    sec.table("Last evaluation", ["group", "step", "KL to base", f"mean@{k}"], rows)
    return sec


# ----------------------------------------------------------------------------- paper probes


def _source_label(path: str) -> str:
    try:
        return f"from {load_run(path).mode} ({os.path.basename(path.rstrip('/'))})"
    except (OSError, ValueError):
        return f"from {os.path.basename(path.rstrip('/'))}"


def plasticity(groups: Sequence[Group], k: int) -> Section:
    key = plots.val_key(k)
    sec = Section("plasticity", "Plasticity",
                  "Fresh RL started from another run's weights (--config.init_from): final and "
                  "best validation reward per source, mean ± SE over seeds, next to RL from the "
                  "base model on the same task when present.")  # fmt: skip
    probes = [g for g in groups if g.key["init_from"]]
    if not probes:
        sec.missing = ("no run starts from another run's weights; run "
                       "experiments/configs/paper_plasticity.py with --config.init_from=<an rl or "
                       "fst workdir> (and one fresh rl run of the same task for reference)")  # fmt: skip
        return sec
    tasks = {g.key["task"] for g in probes}
    refs = [
        g for g in groups if g.mode == "rl" and not g.key["init_from"] and g.key["task"] in tasks
    ]
    col = plots.colors(list(groups))
    rows = []
    for g in refs + probes:
        label = _source_label(g.key["init_from"]) if g.key["init_from"] else "from base"
        fin = _stats([last_value(r, key) for r in g.runs])
        best = _stats([float(np.nanmax(r.series(key)[1])) if len(r.series(key)[1]) else math.nan
                       for r in g.runs])  # fmt: skip
        rows.append({"label": f"{g.label}: {label}", "final": fin[0], "final_se": fin[1],
                     "best": best[0], "best_se": best[1], "n": fin[2], "color": col[g.label]})  # fmt: skip
    sec.data["bars"] = rows
    sec.figures.append(("plasticity", plots.plot_bars(rows, "final", "final_se",
                                                      "Plasticity probe: final reward", f"validation mean@{k}")))  # fmt: skip
    sec.table("Plasticity probe", ["run", "final", "best", "seeds"],
              [(r["label"], _pm(r["final"], r["final_se"], r["n"]),
                _pm(r["best"], r["best_se"], r["n"]), r["n"]) for r in rows])  # fmt: skip
    return sec


def continual(groups: Sequence[Group], k: int) -> Section:
    sec = Section("continual", "Continual learning",
                  "Runs over a task stream (task.stream): validation reward per task with the "
                  "stage boundaries (task.switch_every).")  # fmt: skip
    have = [g for g in groups if len(g.runs[0].tasks) > 1]
    if not have:
        sec.missing = ("no task-stream run; run experiments/configs/paper_continual.py "
                       "(--config.task.stream=hover,codeio,physics --config.task.switch_every=200)")  # fmt: skip
        return sec
    for g in have:
        tasks, cfg = g.runs[0].tasks, g.runs[0].config.get("task", {})
        switch = int(cfg.get("switch_every", 0) or 0)
        per_task = {t: f"val/{t}/mean@{k}" for t in tasks if _has(g, f"val/{t}/mean@{k}")}
        if not per_task:
            per_task = {"current task": plots.val_key(k)}
            sec.notes.append(f"{g.label}: no per-task val/<task>/mean@{k}; showing the current "
                             "task's reward")  # fmt: skip
        bounds = [(i * switch, t) for i, t in enumerate(tasks)] if switch else []
        sec.figures.append(
            (f"continual_{len(sec.figures)}", plots.plot_continual([g], per_task, bounds))
        )
        sec.data[g.label] = {"boundaries": bounds, "curves": {
            t: _lists(plots.group_curve(g, key)) for t, key in per_task.items()}}  # fmt: skip
    return sec


def star_graph(groups: Sequence[Group]) -> Section:
    sec = Section("star_graph", "Star graph (zero-reward probe)",
                  "Training reward, gradient norm, and the fraction of groups dropped because "
                  "all G rewards were equal (no learning signal).")  # fmt: skip
    have = [g for g in groups if "star_graph" in g.key["task"] and _has(g, metrics.REWARD_MEAN)]
    if not have:
        sec.missing = "no star-graph run with RL steps; run experiments/configs/paper_star_graph.py"
        return sec
    panels = [(metrics.REWARD_MEAN, "train reward"), (metrics.TRAIN_GRAD_NORM, "grad norm"),
              (FLAT_FRACTION, "fraction of flat groups")]  # fmt: skip
    sec.figures.append(("star_graph", plots.plot_series_panels(have, panels, "Star graph")))
    for g in have:
        sec.data[g.label] = {key: _lists(plots.group_curve(g, key)) for key, _ in panels}
    return sec


def entropy(groups: Sequence[Group]) -> Section:
    sec = Section("entropy", "Policy entropy", "Token entropy of the sampled rollouts per RL step.")
    have = [g for g in groups if _has(g, metrics.TRAIN_ENTROPY)]
    if not have:
        sec.missing = "no run with RL steps (modes rl, fst, fst_distill log train/entropy)"
        return sec
    sec.figures.append(("entropy", plots.plot_series_panels(
        have, [(metrics.TRAIN_ENTROPY, "entropy (nats/token)")], "Entropy")))  # fmt: skip
    for g in have:
        sec.data[g.label] = _lists(plots.group_curve(g, metrics.TRAIN_ENTROPY))
    return sec


def quadrants(groups: Sequence[Group]) -> Section:
    sec = Section("quadrants", "Weights × contexts (2×2)",
                  "Final evaluation: {base, trained} weights × {seed, trained} context, mean "
                  "over seeds (± SE).")  # fmt: skip
    cells, rows = {}, []
    for g in groups:
        vals = {q: _stats([last_value(r, f"val/quadrant/{q}") for r in g.runs]) for q in QUADRANTS}
        if all(v[2] == 0 for v in vals.values()):
            continue
        cells[g.label] = {q: v[0] for q, v in vals.items()}
        sec.data[g.label] = {q: {"mean": v[0], "se": v[1], "n": v[2]} for q, v in vals.items()}
        rows.append((g.label, *(_pm(*vals[q]) for q in QUADRANTS)))
    if not cells:
        sec.missing = ("no run reached its final evaluation with eval.quadrants=True (the "
                       "default): let a run finish")  # fmt: skip
        return sec
    sec.figures.append(("quadrants", plots.plot_quadrants(cells)))
    sec.table("validation mean@k", ["group", "base w · seed ctx", "base w · trained ctx",
                                    "trained w · seed ctx", "trained w · trained ctx"], rows)  # fmt: skip
    return sec


def ablations(groups: Sequence[Group], k: int, fits: dict[str, Any]) -> Section:
    key = plots.val_key(k)
    sec = Section("ablations", "T and K ablations",
                  "Groups that differ only in the cycle length T (rl.steps_per_cycle) or the "
                  "contexts per problem K (gepa.k): final and best validation reward, mean ± SE "
                  "over seeds, and the fitted asymptote when available.")  # fmt: skip
    buckets: dict[tuple, list[Group]] = {}
    for g in groups:
        buckets.setdefault((g.mode, g.key["task"], g.key["init_from"]), []).append(g)
    rows, bars = [], []
    col = plots.colors(list(groups))
    for members in buckets.values():
        if len({(g.key["T"], g.key["K"]) for g in members}) < 2:
            continue
        for g in sorted(members, key=lambda g: (g.key["T"] or 0, g.key["K"] or 0)):
            fin = _stats([last_value(r, key) for r in g.runs])
            best = _stats([float(np.max(running_max(r.series(key)[1]))) if len(r.series(key)[1])
                           else math.nan for r in g.runs])  # fmt: skip
            a = fits.get(g.label, {}).get("a")
            sec.data[g.label] = {"T": g.key["T"], "K": g.key["K"], "final": fin[0],
                                 "final_se": fin[1], "best": best[0], "n": fin[2], "a": a}  # fmt: skip
            rows.append((g.label, g.key["T"], g.key["K"], _pm(*fin), _pm(*best), a, fin[2]))
            bars.append(
                {"label": g.label, "final": fin[0], "final_se": fin[1], "color": col[g.label]}
            )
    if not rows:
        sec.missing = ("no runs differing only in T or K; run e.g. experiments/configs/"
                       "ablations.py:<experiment>,T3 / T12 / K1 / K8 next to the default")  # fmt: skip
        return sec
    sec.figures.append(("ablations", plots.plot_bars(bars, "final", "final_se", "T / K ablations",
                                                     f"final validation mean@{k}")))  # fmt: skip
    sec.table("Ablations", ["group", "T", "K", "final", "best", "A", "seeds"], rows)
    return sec


# ----------------------------------------------------------------------------- GEPA


def lineage_tree(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Nodes (seeds + accepted children) with parent links, birth round, anchor score at birth,
    whether the last round exported them, and a y position from a depth-first walk."""
    rounds = [r for r in rows if r["kind"] == "round"]
    its = [r for r in rows if r["kind"] == "iteration"]
    first = rounds[0] if rounds else {"seeds": [], "anchor_means": {}}
    nodes = {s["id"]: {"id": s["id"], "parents": [], "cycle": -1, "hash": s["hash"],
                       "score": first["anchor_means"].get(str(s["id"]))} for s in first["seeds"]}  # fmt: skip
    for r in its:
        if r["decision"] == "accepted":
            nodes[r["child"]] = {"id": r["child"], "parents": list(r.get("child_parents") or [r["parent"]]),
                                 "cycle": r["cycle"], "hash": r["child_hash"],
                                 "score": r.get("child_anchor_mean")}  # fmt: skip
    exported = {e["id"] for e in rounds[-1]["exported"]} if rounds else set()
    children: dict[int, list[int]] = {}
    for n in nodes.values():
        n["exported"] = n["id"] in exported
        for p in n["parents"][:1]:
            children.setdefault(p, []).append(n["id"])
    roots = [n["id"] for n in nodes.values() if not n["parents"] or n["parents"][0] not in nodes]
    y = iter(range(len(nodes)))

    def walk(i: int) -> None:
        nodes[i]["y"] = -next(y)
        for c in sorted(children.get(i, [])):
            walk(c)

    for r in sorted(roots):
        walk(r)
    rejected = [{"cycle": r["cycle"], "parent": r["parent"], "hash": r["child_hash"]}
                for r in its if r["decision"] == "rejected"]  # fmt: skip
    max_cycle = max([r["cycle"] for r in rounds] or [0])
    return {"nodes": sorted(nodes.values(), key=lambda n: n["id"]), "rejected": rejected,
            "max_cycle": max_cycle}  # fmt: skip


def gepa(runs: Sequence[Run], max_trees: int = 6) -> Section:
    sec = Section("gepa", "GEPA: lineage, decisions, exports, reflection LM",
                  "From each run's gepa_log.jsonl: the tree of accepted contexts (score = mean "
                  "on the round's anchor set at birth), accepted / rejected iterations per "
                  "round, the exported top-K, and the reflection LM's usage.")  # fmt: skip
    logged = [r for r in runs if any(row["kind"] == "round" for row in r.gepa_log)]
    for r in runs:
        if r not in logged and any("gepa/calls_used" in rec for rec in r.records):
            sec.notes.append(f"{r.name}: GEPA ran but wrote no gepa_log.jsonl (an older fst_jax)")
    if not logged:
        sec.missing = "no GEPA log; runs of modes gepa, fst and fst_distill write gepa_log.jsonl"
        return sec
    usage_rows = []
    for run in logged:
        rounds = [row for row in run.gepa_log if row["kind"] == "round"]
        tree = lineage_tree(run.gepa_log)
        label = f"{run.mode} seed {run.seed} ({run.name})"
        if len(sec.data) < max_trees:
            sec.figures.append(
                (f"gepa_lineage_{run.name}", plots.plot_lineage(tree, f"Lineage: {label}"))
            )
            sec.figures.append(
                (f"gepa_rounds_{run.name}", plots.plot_gepa_rounds(rounds, f"GEPA rounds: {label}"))
            )
        keys = (
            "cycle",
            "step",
            "iterations",
            "accepted",
            "rejected",
            "unaffordable",
            "skipped_perfect",
            "skipped_lm",
            "calls_used",
            "budget",
            "best_mean",
        )
        per_round = [{k: rd.get(k, 0) for k in keys} | {"exported": [e["id"] for e in rd["exported"]]}
                     for rd in rounds]  # fmt: skip
        usage = {k: sum(rd["usage"].get(k, 0) for rd in rounds) for k in rounds[0]["usage"]}
        sec.data[run.name] = {"rounds": per_round, "usage": usage, "tree": tree}
        sec.table(f"Rounds — {label}", ["cycle", "iterations", "accepted", "rejected",
                                        "unaffordable", "skipped", "calls / budget",
                                        "best anchor mean", "exported ids"],
                  [(p["cycle"], p["iterations"], p["accepted"], p["rejected"], p["unaffordable"],
                    p["skipped_perfect"] + p["skipped_lm"], f"{p['calls_used']} / {p['budget']}",
                    p["best_mean"], ", ".join(map(str, p["exported"]))) for p in per_round])  # fmt: skip
        sec.table(f"Exported at the last round — {label}", ["id", "anchor mean", "on front", "context"],
                  [(e["id"], e["mean_score"], e["on_front"], e["text"]) for e in rounds[-1]["exported"]])  # fmt: skip
        usage_rows.append((label, *(usage.get(k, 0) for k in
                                    ("requests", "retries", "prompt_tokens", "completion_tokens", "cache_hits"))))  # fmt: skip
    sec.table("Reflection LM usage (all rounds)", ["run", "requests", "retries", "prompt tokens",
                                                   "completion tokens", "cache hits"], usage_rows)  # fmt: skip
    return sec
