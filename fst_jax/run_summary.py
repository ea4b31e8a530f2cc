"""The end-of-run summary: a dict (returned by `Controller.run`) and its one-screen text."""

from __future__ import annotations

from typing import Any

import numpy as np

from fst_jax import evaluation
from fst_jax.run_state import RunState


def summarize(
    state: RunState, *, workdir: Any, mode: str, k: int, wall_s: float, checkpoints: list[int]
) -> dict[str, Any]:
    key = f"val/mean@{k}"
    first, last = state.first_eval, state.last_eval
    se = lambda m, suffix="": m.get(f"{key}{suffix}_se")  # noqa: E731
    return {
        "workdir": str(workdir), "mode": mode, "steps": state.step, "cycles": state.cycle,
        "wall_s": round(wall_s, 1), "val_start": first.get(key), "val_end": last.get(key),
        "val_running_max": state.running_max.value,
        "val_no_context_start": first.get(f"{key}_no_context"),
        "val_no_context_end": last.get(f"{key}_no_context"),
        "val_se_start": se(first), "val_se_end": se(last),
        "val_no_context_se_start": se(first, "_no_context"),
        "val_no_context_se_end": se(last, "_no_context"),
        "val_seed_context_start": first.get(f"{key}_seed_context"),
        "val_seed_context_end": last.get(f"{key}_seed_context"),
        "val_seed_context_se_start": se(first, "_seed_context"),
        "val_seed_context_se_end": se(last, "_seed_context"),
        "num_val_rollouts": (first or last).get("val/num_examples", 0) * k,
        **_learned(first, last, k),
        "kl_to_base_end": last.get(evaluation.KL_KEY),
        "population": len(state.population.candidates), "best_context": state.exported[0],
        "checkpoints": checkpoints,
        "quadrants": {q: v for q, v in last.items() if q.startswith("val/quadrant/")},
    }  # fmt: skip


def _learned(first: dict[str, Any], last: dict[str, Any], k: int) -> dict[str, Any]:
    """The paired start-vs-end change under the seed context (one fixed context, the same
    validation problems and samples per problem) and the plain verdict it supports."""
    key = f"val/per_example@{k}_seed_context"
    if key not in first or key not in last or first is last:
        return {"delta_seed_context": None, "delta_seed_context_se": None,
                "verdict": "no verdict: the run has no start and end evaluation to compare "
                "(eval.at_start and a final evaluation are both needed)"}  # fmt: skip
    d, se = evaluation.paired_delta(first[key], last[key])
    n = len(first[key])
    z = d / se if se > 0 else (0.0 if d == 0 else float("inf") * np.sign(d))
    what = f"{d:+.3f} ± {se:.3f} (z = {z:+.1f}) under the seed context, {n} problems × {k}"
    if z > 2:
        verdict = f"LEARNED: validation reward rose {what}."
    elif z < -2:
        verdict = f"GOT WORSE: validation reward fell {what}."
    else:
        verdict = f"DID NOT LEARN (within 2 SE): validation reward changed {what}."
    return {"delta_seed_context": d, "delta_seed_context_se": se, "verdict": verdict}


def plot(workdir: Any, k: int) -> str:
    """The KL-vs-reward PNG of this run (reads its metrics.jsonl); returns its path. `workdir`
    is a path object (`fst_jax.paths.workdir_path`: local or gs://)."""
    from fst_jax.analysis import load_runs, plot_kl_vs_reward

    png = workdir / "kl_vs_reward.png"
    plot_kl_vs_reward(load_runs([workdir]), png, k=k)
    return str(png)


def format_summary(s: dict[str, Any]) -> str:
    """The one-screen end-of-run summary."""
    f = lambda x: "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731

    def pm(name: str, when: str) -> str:
        v, e = s.get(f"{name}_{when}"), s.get(f"{name}_se_{when}")
        return f(v) if e is None or v is None else f"{v:.3f} ± {e:.3f}"

    lines = [
        "=" * 72,
        f"fst-train summary  mode={s['mode']}  steps={s['steps']}  cycles={s['cycles']}  "
        f"wall={s['wall_s']}s  validation rollouts per setting={s.get('num_val_rollouts', 'n/a')}",
        f"  seed context    start {pm('val_seed_context', 'start')}  ->  end "
        f"{pm('val_seed_context', 'end')}   (one fixed context: the learning signal)",
        f"  best context    start {pm('val', 'start')}  ->  end {pm('val', 'end')}   "
        f"running max {f(s['val_running_max'])}",
        f"  no context      start {pm('val_no_context', 'start')}  ->  end "
        f"{pm('val_no_context', 'end')}",
        f"  KL(pi || base)  end {f(s['kl_to_base_end'])}",
    ]
    for q, v in s["quadrants"].items():
        lines.append(f"  {q.removeprefix('val/quadrant/'):<22} {f(v)}")
    best = s["best_context"].replace("\n", " ")
    lines += [
        f"  population      {s['population']} candidates; best context: {best[:200]!r}",
        f"  checkpoints     {s['checkpoints']} in {s['workdir']}/checkpoints",
        f"  metrics         {s['workdir']}/metrics.jsonl  (TensorBoard: {s['workdir']}/tensorboard)",
    ]
    if "png" in s:
        lines.append(f"  KL vs reward    {s['png']}")
    lines.append(f"  verdict         {s.get('verdict', 'n/a')}")
    lines.append("=" * 72)
    return "\n".join(lines)
