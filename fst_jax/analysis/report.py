"""``fst-report RUN_DIR... --out=DIR``: one self-contained HTML page with every paper figure the
runs can support, each figure also as a PNG, and the numbers behind them as ``report.json``.

    fst-report runs/rl runs/fst runs/fst-seed1 --out=report/

Run directories are local paths or URIs (``gs://...``); they are grouped by experiment (mode,
task, T, K, plasticity source) from their saved configs, seeds averaged. Sections without data say
which run would produce them. The HTML embeds its images, so it can be mailed or archived alone.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jinja2
import numpy as np

from fst_jax import paths
from fst_jax.analysis import plots, sections
from fst_jax.analysis.runs import Group, Run, group_runs, last_value, load_runs

TEMPLATE = "report.html.jinja"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def overview(groups: Sequence[Group], k: int) -> sections.Section:
    sec = sections.Section("runs", "Runs", "Every run directory, grouped by experiment (from its "
                           "saved config); seeds of a group are averaged in the figures.")  # fmt: skip
    rows = []
    for g in groups:
        for r in g.runs:
            steps = max((rec.get("step", 0) for rec in r.records), default=0)
            rows.append((g.label, r.seed, r.key["task"], r.key["T"], r.key["K"], steps,
                         last_value(r, f"val/mean@{k}"), r.workdir))  # fmt: skip
            sec.data.setdefault(g.label, []).append(
                {"workdir": r.workdir, "seed": r.seed, "steps": steps}
            )
    sec.table(
        "", ["group", "seed", "task", "T", "K", "steps", f"last val mean@{k}", "workdir"], rows
    )
    return sec


def build_sections(
    runs: Sequence[Run], k: int | None = None, bootstrap: int = 200
) -> list[sections.Section]:
    """Every section of the report, computed from the runs (figures not yet written)."""
    groups = group_runs(runs)
    plots.assign_colors(groups)
    if k is None:
        k = int(runs[0].config.get("eval", {}).get("k", 4))
    fit = sections.sigmoid_fit(groups, k, bootstrap)
    return [
        overview(groups, k),
        sections.data_efficiency(groups, k),
        fit,
        sections.kl_vs_reward(groups, k),
        sections.plasticity(groups, k),
        sections.continual(groups, k),
        sections.star_graph(groups),
        sections.entropy(groups),
        sections.quadrants(groups),
        sections.ablations(groups, k, fit.data),
        sections.gepa(runs),
    ]


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fst_jax.analysis", "templates"),
        autoescape=jinja2.select_autoescape(["html", "jinja"]),
        undefined=jinja2.StrictUndefined,
    )


def build_report(
    workdirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    k: int | None = None,
    bootstrap: int = 200,
    title: str = "fst_jax report",
) -> dict[str, Any]:
    """Writes ``out/index.html``, ``out/<figure>.png`` and ``out/report.json``; returns the JSON."""
    runs = list(load_runs(workdirs).values())
    secs = build_sections(runs, k, bootstrap)
    out = paths.workdir_path(out)
    out.mkdir(parents=True, exist_ok=True)
    rendered, figures = [], []
    for sec in secs:
        figs = []
        for name, fig in sec.figures:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            png = buf.getvalue()
            (out / f"{name}.png").write_bytes(png)
            figs.append({"name": name, "file": f"{name}.png",
                         "data_uri": "data:image/png;base64," + base64.b64encode(png).decode()})  # fmt: skip
            figures.append(f"{name}.png")
        rendered.append({**{f.name: getattr(sec, f.name) for f in dataclasses.fields(sec)},
                         "figures": figs})  # fmt: skip
    html = _env().get_template(TEMPLATE).render(title=title, sections=rendered,
                                                 workdirs=[str(w) for w in workdirs])  # fmt: skip
    (out / "index.html").write_text(html, encoding="utf-8")
    data = {
        "title": title, "workdirs": [str(w) for w in workdirs], "figures": figures,
        "sections": {s.id: {"title": s.title, "missing": s.missing, "notes": s.notes,
                            "figures": [n for n, _ in s.figures], "data": _jsonable(s.data)}
                     for s in secs},
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fst-report",
        description="Turn fst-train run directories into an HTML report of the paper's figures.",
    )
    p.add_argument(
        "workdirs", nargs="+", metavar="RUN_DIR", help="fst-train --workdir (path or URI)"
    )
    p.add_argument("--out", required=True, help="output directory (index.html, *.png, report.json)")
    p.add_argument("--k", type=int, default=None, help="mean@k to read (default: the runs' eval.k)")
    p.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples for A's interval"
    )
    p.add_argument("--title", default="fst_jax report")
    a = p.parse_args(argv)
    try:
        data = build_report(a.workdirs, a.out, k=a.k, bootstrap=a.bootstrap, title=a.title)
    except (FileNotFoundError, ValueError) as e:
        print(f"fst-report: {e}", file=sys.stderr)
        return 2
    drawn = [s for s, v in data["sections"].items() if not v["missing"]]
    print(f"wrote {os.path.join(str(a.out), 'index.html')} ({len(data['figures'])} figures; "
          f"sections: {', '.join(drawn)})")  # fmt: skip
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
