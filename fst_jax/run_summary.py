"""The end-of-run summary: a dict (returned by `Controller.run`) and its one-screen text."""

from __future__ import annotations

from typing import Any

from fst_jax import evaluation
from fst_jax.run_state import RunState


def summarize(
    state: RunState, *, workdir: Any, mode: str, k: int, wall_s: float, checkpoints: list[int]
) -> dict[str, Any]:
    key = f"val/mean@{k}"
    first, last = state.first_eval, state.last_eval
    return {
        "workdir": str(workdir), "mode": mode, "steps": state.step, "cycles": state.cycle,
        "wall_s": round(wall_s, 1), "val_start": first.get(key), "val_end": last.get(key),
        "val_running_max": state.running_max.value,
        "val_no_context_start": first.get(f"{key}_no_context"),
        "val_no_context_end": last.get(f"{key}_no_context"),
        "kl_to_base_end": last.get(evaluation.KL_KEY),
        "population": len(state.population.candidates), "best_context": state.exported[0],
        "checkpoints": checkpoints,
        "quadrants": {q: v for q, v in last.items() if q.startswith("val/quadrant/")},
    }  # fmt: skip


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
    lines = [
        "=" * 72,
        f"fst-train summary  mode={s['mode']}  steps={s['steps']}  cycles={s['cycles']}  "
        f"wall={s['wall_s']}s",
        f"  val mean@k      start {f(s['val_start'])}  ->  end {f(s['val_end'])}   "
        f"running max {f(s['val_running_max'])}",
        f"  no context      start {f(s['val_no_context_start'])}  ->  end "
        f"{f(s['val_no_context_end'])}",
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
    lines.append("=" * 72)
    return "\n".join(lines)
