"""The FST-vs-RL study's numbers, figures, verdicts and README, computed from its runs' files.

`experiments/study.py` runs the arms (RL, FST, GEPA-only × reflection LMs × seeds, plus the
star-graph arms) and writes ``study.json`` (the manifest: arms → mode, reflection LM, kind and one
workdir per seed, plus the command and commit). Everything here reads those workdirs with
`fst_jax.analysis.runs` (no second parser) and the per-run ``resources.json`` the runner writes
(wall time, peak RSS).

Standard errors. A run's evaluation is one number (``val/mean@k`` over n problems × k samples),
so a group's SE combines the spread over seeds with each run's sampling error: the SE over
problems the run logged (``val/mean@k_se``), or for runs without it the Bernoulli bound (a
problem's mean@k lies in [0, 1], so its variance is at most p(1 - p) and a run's SE at most
sqrt(p(1 - p) / n)). Hence ``SE = sqrt(SE_seeds² + mean_seeds(SE_run²) / n_seeds)``. KL has no
sampling SE logged: its SE is over seeds only. A difference is called only when it
exceeds 2 SE of the difference; otherwise the verdict is "inconclusive (within 2 SE)".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fst_jax import metrics
from fst_jax.analysis.fit import steps_to_peak_ratio
from fst_jax.analysis.plots import save
from fst_jax.analysis.runs import FLAT_FRACTION, Run, load_run, seed_stats

MANIFEST = "study.json"
RESOURCES = "resources.json"
QUADRANTS = ("base_w/seed_p", "base_w/trained_p", "trained_w/seed_p", "trained_w/trained_p")
# Quadrant cells that are also scored on their own (same rollouts), so their SE is logged.
QUADRANT_SE = {"trained_w/trained_p": "{}_se", "trained_w/seed_p": "{}_seed_context_se"}
FIGURES = {"reward": "reward_vs_step.png", "kl": "kl_vs_reward.png"}


def _val(k: int) -> str:
    return metrics.VAL_MEAN.format(k=k)


def pm(mean: float, se: float) -> str:
    """How every number appears in the README (tests compare against this)."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {se:.3f}"


def combined_se(
    values: Sequence[float],
    n_problems: Sequence[float],
    run_se: Sequence[float | None] = (),
    bounded: bool = True,
) -> float:
    """SE of the seed-mean of per-run rewards (see the module docstring). `run_se[i]`: run i's
    own sampling SE when it logged one (``val/mean@k_se``); else the Bernoulli bound."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan")
    seeds = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    if not bounded:  # not a reward in [0, 1] (KL): the spread over seeds only
        return seeds
    n = np.maximum(np.asarray(n_problems, np.float64), 1.0)
    p = np.clip(v, 0.0, 1.0)
    var = p * (1 - p) / n
    logged = list(run_se) + [None] * (len(v) - len(run_se))
    var = np.asarray([var[i] if s is None else float(s) ** 2 for i, s in enumerate(logged)])
    return math.sqrt(seeds**2 + float(np.mean(var)) / len(v))


def verdict(
    diff: float, se: float, claim_holds_if_positive: bool = True
) -> tuple[str, bool | None]:
    """("reproduced" | "not reproduced" | "inconclusive (within 2 SE)", holds) for a difference
    whose positive sign supports the claim."""
    d = diff if claim_holds_if_positive else -diff
    if not math.isfinite(d) or not math.isfinite(se):
        return "inconclusive (not measured)", None
    if d > 2 * se:
        return "reproduced", True
    if d < -2 * se:
        return "not reproduced", False
    return "inconclusive (within 2 SE)", None


def load_study(study_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, list[Run]]]:
    """(manifest, runs per arm); arms with no finished workdir yet are left out."""
    with open(os.path.join(study_dir, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    runs: dict[str, list[Run]] = {}
    for arm, spec in manifest["arms"].items():
        got = []
        for _seed, wd in sorted(spec["workdirs"].items(), key=lambda kv: int(kv[0])):
            path = os.path.join(study_dir, wd)
            if os.path.exists(os.path.join(path, metrics.METRICS_FILE)):
                got.append(load_run(path))
        if got:
            runs[arm] = got
    return manifest, runs


def _resources(study_dir: str, wd: str) -> dict[str, Any]:
    p = os.path.join(study_dir, wd, RESOURCES)
    if not os.path.exists(p):
        return {}
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _eval_rows(run: Run, k: int) -> list[dict[str, Any]]:
    return [r for r in run.records if _val(k) in r]


def final_stats(
    runs: Sequence[Run], key: str, k: int, se_key: str | None = None
) -> dict[str, float]:
    """Seed-mean ± SE of ``key`` at each run's last evaluation (and at its first, ``start``);
    ``se_key``: where the run logged the sampling SE of ``key`` (default ``<key>_se``)."""
    out: dict[str, float] = {}
    for where, pick in (("end", -1), ("start", 0)):
        vals, ns, ses = [], [], []
        for r in runs:
            rows = [x for x in _eval_rows(r, k) if key in x]
            if rows:
                vals.append(float(rows[pick][key]))
                ns.append(float(rows[pick].get("val/num_examples", 1)))
                ses.append(rows[pick].get(se_key or f"{key}_se"))
        out[where] = float(np.mean(vals)) if vals else float("nan")
        bounded = key.startswith(("val/mean@", "val/quadrant/"))
        out[f"{where}_se"] = combined_se(vals, ns, ses, bounded) if vals else float("nan")
        out[f"{where}_n"] = len(vals)
        out[f"{where}_problems"] = int(np.mean(ns)) if ns else 0
    return out


def curve(runs: Sequence[Run], key: str, k: int) -> dict[str, list[float]]:
    """Seed-mean and combined SE of ``key`` against step (steps any seed logged)."""
    per = [r.series(key) for r in runs]
    st = seed_stats([(np.asarray(s, np.float64), v) for s, v in per if len(s)])
    ses = []
    for x in st["x"]:
        vals, ns, run_se = [], [], []
        for r in runs:
            rows = [row for row in r.records if row.get("step") == x and key in row]
            if rows:
                vals.append(float(rows[-1][key]))
                ns.append(float(rows[-1].get("val/num_examples", 1e9)))
                run_se.append(rows[-1].get(f"{key}_se"))
        bounded = key.startswith("val/mean@")  # a reward in [0, 1]: sampling error counts
        ses.append(combined_se(vals, ns, run_se, bounded))
    return {"step": st["x"].tolist(), "mean": st["mean"].tolist(), "se": ses,
            "n": st["n"].tolist()}  # fmt: skip


def first_non_flat(run: Run) -> dict[str, Any]:
    """First RL step with a group whose rewards differ (so the update is not skipped), and the
    mean train reward from that step on; None/NaN when every group stayed flat."""
    s, frac = run.series(FLAT_FRACTION)
    hit = np.nonzero(frac < 1.0)[0]
    rs, rew = run.series(metrics.REWARD_MEAN)
    if not len(hit):
        return {"step": None, "reward_after": float("nan"), "steps": len(s)}
    step = float(s[hit[0]])
    after = rew[rs >= step]
    return {"step": int(step), "reward_after": float(np.mean(after)) if len(after) else float("nan"),
            "steps": len(s)}  # fmt: skip


def aggregate(study_dir: str | os.PathLike) -> dict[str, Any]:
    """Every number the README reports, as plain JSON-able data."""
    study_dir = str(study_dir)
    manifest, runs = load_study(study_dir)
    k = int(manifest.get("k", 4))
    vk = _val(k)
    arms: dict[str, Any] = {}
    # Drift is measured from the weights the runs start from: the base model, or the warm start
    # (init_from) whose own distance from the base model is the same constant for every arm.
    kl_key = metrics.VAL_KL_TO_INIT if manifest.get("init_from") else metrics.VAL_KL_TO_BASE
    for arm, rs in runs.items():
        spec = manifest["arms"][arm]
        res = [_resources(study_dir, spec["workdirs"][str(r.seed)]) for r in rs]
        arms[arm] = {
            "mode": spec["mode"], "reflection_lm": spec.get("reflection_lm"),
            "kind": spec.get("kind", "main"), "seeds": [r.seed for r in rs],
            "steps": [max((x.get("step", 0) for x in r.records), default=0) for r in rs],
            "val": final_stats(rs, vk, k),
            "val_no_context": final_stats(rs, f"{vk}_no_context", k),
            "kl": final_stats(rs, kl_key, k),
            "val_seed_context": final_stats(rs, f"{vk}_seed_context", k),
            "quadrants": {q: final_stats(rs, f"val/quadrant/{q}", k, QUADRANT_SE.get(q, "").format(vk))
                          for q in QUADRANTS},
            "curve": curve(rs, vk, k),
            "train_curve": curve(rs, metrics.REWARD_MEAN, k),
            "kl_curve": curve(rs, kl_key, k),
            "non_flat": [first_non_flat(r) for r in rs],
            "wall_s": [x.get("wall_s") for x in res],
            "peak_rss_mb": [x.get("peak_rss_mb") for x in res],
        }  # fmt: skip
    out = {"k": k, "kl_key": kl_key, "arms": arms, "claims": claims(arms)}
    for key in ("command", "commit", "seeds", "base_config", "init_from", "overrides"):
        out[key] = manifest.get(key)
    return out


def _main(arms: Mapping[str, Any], mode: str) -> list[str]:
    return [a for a, v in arms.items() if v["kind"] == "main" and v["mode"] == mode]


def claims(arms: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's claims, each with its numbers and a verdict computed from them."""
    out: dict[str, Any] = {}
    rl = next(iter(_main(arms, "rl")), None)
    for fst in _main(arms, "fst"):
        if rl is None:
            break
        a, b = arms[rl]["curve"], arms[fst]["curve"]
        if not a["step"] or not b["step"]:
            continue
        sp = steps_to_peak_ratio(a["step"], a["mean"], b["step"], b["mean"])
        # Support: FST's mean exceeds RL's at the step RL first reaches its peak (same budget).
        at = sp["ref_steps_to_peak"]
        fi = int(np.argmin(np.abs(np.asarray(b["step"]) - at)))
        ri = a["step"].index(at)
        diff = b["mean"][fi] - a["mean"][ri]
        se = math.hypot(b["se"][fi], a["se"][ri])
        text, _ = verdict(diff, se)
        if at <= a["step"][0]:
            text = "inconclusive (RL never improved on its first evaluation: no peak to reach)"
        elif text == "reproduced" and not (sp["steps_to_ref_peak"] < at):
            text = "inconclusive (FST ahead at RL's peak step but did not reach the peak earlier)"
        if text == "not reproduced":
            text += (f": at step {int(at)} (RL's peak) FST's reward {pm(b['mean'][fi], b['se'][fi])}"
                     f" is below RL's {pm(a['mean'][ri], a['se'][ri])}")  # fmt: skip
        out[f"steps_to_rl_peak/{fst}"] = {**sp, "diff_at_rl_peak_step": diff, "se": se,
                                          "verdict": text}  # fmt: skip
        # KL-vs-reward: left of RL = less KL at no lower reward (final evaluation).
        kd = arms[fst]["kl"]["end"] - arms[rl]["kl"]["end"]
        kse = math.hypot(arms[fst]["kl"]["end_se"], arms[rl]["kl"]["end_se"])
        rd = arms[fst]["val"]["end"] - arms[rl]["val"]["end"]
        rse = math.hypot(arms[fst]["val"]["end_se"], arms[rl]["val"]["end_se"])
        text, holds = verdict(-kd, kse)
        if holds and rd < -2 * rse:
            text = "not reproduced: FST has less KL but also a lower reward (not the same reward)"
        elif holds is False:
            text += f": FST's KL exceeds RL's by {pm(kd, kse)}"
        out[f"kl_left_of_rl/{fst}"] = {"kl_diff": kd, "kl_se": kse, "reward_diff": rd,
                                       "reward_se": rse, "verdict": text}  # fmt: skip
    star = {a: v for a, v in arms.items() if v["kind"] == "star"}
    srl = [a for a, v in star.items() if v["mode"] == "rl"]
    for fst in [a for a, v in star.items() if v["mode"] == "fst"]:
        f_steps = [x["step"] for x in star[fst]["non_flat"]]
        r_steps = [x["step"] for x in star[srl[0]]["non_flat"]] if srl else []
        base = star[fst]["val"]["start"]
        if not srl:
            text = "inconclusive (no star-graph RL arm)"
        elif base is not None and math.isfinite(base) and base > 0:
            text = f"inconclusive (the base reward is {base:.3f}, not 0: resize the star graph)"
        elif any(s is None for s in f_steps):
            text = "not reproduced: FST never got a non-flat group in some seed"
        elif all(s is None for s in r_steps) or min(f_steps) < min(
            s for s in r_steps if s is not None
        ):
            text = "reproduced" if all(s is None for s in r_steps) else (
                "reproduced (RL also escapes, later)")  # fmt: skip
        else:
            text = "not reproduced: RL got a non-flat group no later than FST"
        out[f"star_escape/{fst}"] = {"fst_steps": f_steps, "rl_steps": r_steps, "verdict": text}
    return out


# ---------------------------------------------------------------------------------------------
# Figures and README.


def _band(ax: Any, c: Mapping[str, list[float]], label: str, style: str = "o-") -> None:
    x, m, s = (np.asarray(c[key], np.float64) for key in ("step", "mean", "se"))
    (line,) = ax.plot(x, m, style, ms=3, label=label)
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)


def figures(agg: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    """Reward vs step (validation and train reward) and KL vs reward, as PNGs in `out_dir`."""
    main = {a: v for a, v in agg["arms"].items() if v["kind"] == "main"}
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for a, v in main.items():
        _band(ax1, v["curve"], a)
        if v["train_curve"]["step"]:
            _band(ax2, v["train_curve"], a, "-")
    ax1.set(xlabel="RL step", ylabel=f"val mean@{agg['k']} (± SE)", title="validation reward")
    ax2.set(xlabel="RL step", ylabel="train reward (± SE over seeds)", title="train reward")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, FIGURES["reward"]))
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for a, v in main.items():
        kl, rw = v["kl_curve"], v["curve"]
        common = sorted(set(kl["step"]) & set(rw["step"]))
        if common:
            x = [kl["mean"][kl["step"].index(s)] for s in common]
            y = [rw["mean"][rw["step"].index(s)] for s in common]
            ax.plot(x, y, "o-", ms=4, label=a)
    ref = "π_start" if agg.get("kl_key") == metrics.VAL_KL_TO_INIT else "π_base"
    ax.set(xlabel=f"KL(π_θ ‖ {ref})", ylabel=f"val mean@{agg['k']}", title="KL vs reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, FIGURES["kl"]))
    return dict(FIGURES)


def _mb(x: Any) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def readme(agg: Mapping[str, Any]) -> str:
    """The study's README: tables, figure links, command, commit, seeds, verdicts."""
    k, arms = agg["k"], agg["arms"]
    main = {a: v for a, v in arms.items() if v["kind"] == "main"}
    star = {a: v for a, v in arms.items() if v["kind"] == "star"}
    L = ["# FST vs RL vs GEPA-only study", "",
         "Reflection LMs: `local` = the frozen policy itself (honest at this scale); `rule` = "
         "`fst_jax/gepa/rule_lm.py`, a deterministic stand-in for a strong reflection model that "
         "copies a format rule and one worked example from the feedback — **not the paper's "
         "setting**.", "",
         f"Command: `{agg.get('command')}`  ", f"Commit: `{agg.get('commit')}`  ",
         f"Seeds: {agg.get('seeds')}; base config `{agg.get('base_config')}`; init_from "
         f"`{agg.get('init_from') or '-'}`; overrides `{agg.get('overrides') or []}`", "",
         "Every figure is mean ± SE over seeds; a reward's SE combines the seed spread with each "
         "evaluation's SE over problems (logged `val/mean@k_se`, else the Bernoulli bound); "
         "KL's SE is over seeds only (`fst_jax/analysis/study.py`). Train-reward curves: SE "
         f"over seeds. KL is `{agg.get('kl_key', metrics.VAL_KL_TO_BASE)}` (drift from the "
         "weights the runs start from).", "",
         "## Verdicts", ""]  # fmt: skip
    for name, c in agg["claims"].items():
        L.append(f"- `{name}`: {c['verdict']}")
    if not agg["claims"]:
        L.append("- no claim could be evaluated (missing arms)")
    L += ["", f"![reward vs step]({FIGURES['reward']}) ![KL vs reward]({FIGURES['kl']})", "",
          "## Reward with and without context, KL (first and last evaluation)", "",
          "val = the best exported context; seed context = the run's fixed seed context (the "
          "same context at start and end); no context = no system context.", "",
          "| arm | seeds | problems × k | val start | val end | seed context start | "
          "seed context end | no-context start | no-context end | KL end |",
          "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a, v in main.items():
        s, n, kl, sc = v["val"], v["val_no_context"], v["kl"], v["val_seed_context"]
        L.append(f"| {a} | {len(v['seeds'])} | {s['end_problems']} × {k} | "
                 f"{pm(s['start'], s['start_se'])} | {pm(s['end'], s['end_se'])} | "
                 f"{pm(sc['start'], sc['start_se'])} | {pm(sc['end'], sc['end_se'])} | "
                 f"{pm(n['start'], n['start_se'])} | {pm(n['end'], n['end_se'])} | "
                 f"{pm(kl['end'], kl['end_se'])} |")  # fmt: skip
    L += ["", "## Steps for FST to reach RL's peak", "",
          "RL's peak = the maximum of its seed-mean validation curve; steps = the first evaluation "
          "step whose running maximum reaches it (`fst_jax.analysis.fit.steps_to_peak_ratio`); "
          "speedup = RL's steps ÷ FST's. Verdict: FST's minus RL's reward at RL's peak step, > 2 SE.",
          "", "| arm | RL peak | RL steps to peak | FST steps to it | speedup | Δ at RL's peak step "
          "| verdict |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, c in agg["claims"].items():
        if name.startswith("steps_to_rl_peak/"):
            L.append(f"| {name.split('/', 1)[1]} | {c['ref_peak']:.3f} | "
                     f"{c['ref_steps_to_peak']:.0f} | {c['steps_to_ref_peak']:.0f} | "
                     f"{c['speedup']:.2f} | {pm(c['diff_at_rl_peak_step'], c['se'])} | "
                     f"{c['verdict']} |")  # fmt: skip
    L += ["", "## KL vs reward (final evaluation; FST minus RL)", "",
          "| arm | ΔKL | Δreward | verdict |", "|---|---|---|---|"]  # fmt: skip
    for name, c in agg["claims"].items():
        if name.startswith("kl_left_of_rl/"):
            L.append(f"| {name.split('/', 1)[1]} | {pm(c['kl_diff'], c['kl_se'])} | "
                     f"{pm(c['reward_diff'], c['reward_se'])} | {c['verdict']} |")  # fmt: skip
    L += ["", "## Weights × contexts (2×2, final evaluation)", "",
          "| arm | " + " | ".join(QUADRANTS) + " |", "|---|" + "---|" * len(QUADRANTS)]  # fmt: skip
    for a, v in main.items():
        q = v["quadrants"]
        L.append(
            f"| {a} | " + " | ".join(pm(q[x]["end"], q[x]["end_se"]) for x in QUADRANTS) + " |"
        )
    if star:
        L += ["", "## Star graph (base reward 0)", "",
              "First non-flat group = the first RL step with a group whose rollouts' rewards "
              "differ (so the update is not skipped); reward after = mean train reward from then on.",
              "", "| arm | seed | val start | first non-flat step | RL steps | reward after |",
              "|---|---|---|---|---|---|"]  # fmt: skip
        for a, v in star.items():
            for seed, nf in zip(v["seeds"], v["non_flat"], strict=True):
                ra = nf["reward_after"]
                L.append(f"| {a} | {seed} | {pm(v['val']['start'], v['val']['start_se'])} | "
                         f"{nf['step'] if nf['step'] is not None else 'never'} | {nf['steps']} | "
                         f"{'n/a' if not math.isfinite(ra) else f'{ra:.3f}'} |")  # fmt: skip
    L += ["", "## Cost per run", "", "| arm | seed | RL steps | wall s | peak RSS MB |",
          "|---|---|---|---|---|"]  # fmt: skip
    for a, v in arms.items():
        for i, seed in enumerate(v["seeds"]):
            w = v["wall_s"][i]
            L.append(f"| {a} | {seed} | {v['steps'][i]} | {'n/a' if w is None else f'{w:.0f}'} | "
                     f"{_mb(v['peak_rss_mb'][i])} |")  # fmt: skip
    walls = [w for v in arms.values() for w in v["wall_s"] if w is not None]
    rss = [x for v in arms.values() for x in v["peak_rss_mb"] if x is not None]
    L += ["", f"Total: {len(walls)} runs, {sum(walls) / 60:.1f} min of run wall time; largest "
          f"peak RSS {_mb(max(rss) if rss else None)} MB."]  # fmt: skip
    return "\n".join(L) + "\n"


def write(study_dir: str | os.PathLike) -> dict[str, Any]:
    """aggregate → results.json, the PNGs and README.md in `study_dir`; returns the aggregate."""
    agg = aggregate(study_dir)
    figures(agg, str(study_dir))
    with open(os.path.join(study_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(agg, f, indent=1, default=lambda x: None, allow_nan=True)
    with open(os.path.join(study_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme(agg))
    return agg
