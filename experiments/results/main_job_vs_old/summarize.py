"""Table of one sitting (sitting.sh's output dir): wall time, peak RSS, the run's own phase timers
and compilation seconds per run. ``python summarize.py <sitting dir> [--json out.json]``.

Step times come with their standard error over the run's RL steps (between-step spread within
one run, not between runs); wall time and RSS are one number per run.
"""

import argparse
import json
import math
import re
from pathlib import Path

RUNS = ("old", "new_cold", "new_warm", "new_warm2", "new_nocache")
COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)
READ = "/jax/compilation_cache/cache_retrieval_time_sec"


def _time_file(path: Path) -> dict:
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return {"wall_s": round(secs, 1), "peak_rss_gib": round(rss / 2**20, 2)}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n) if n > 1 else float("nan")
    return m, se


def summarize(d: Path) -> dict:
    out = {}
    for name in RUNS:
        if "Elapsed" not in (
            (d / f"{name}_time.txt").read_text() if (d / f"{name}_time.txt").exists() else ""
        ):
            continue
        r = _time_file(d / f"{name}_time.txt")
        rows = [json.loads(x) for x in (d / f"{name}_metrics.jsonl").read_text().splitlines() if x]
        steps = [x["time/step_s"] for x in rows if "time/step_s" in x]
        r["rl_steps"] = len(steps)
        r["rl_step_s_sum"] = round(sum(steps), 1)
        r["rl_step_s_mean"], r["rl_step_s_se"] = (round(v, 2) for v in _mean_se(steps))
        r["sample_s_sum"] = round(sum(x["time/sample_s"] for x in rows if "time/sample_s" in x), 1)
        r["gepa_round_s_sum"] = round(
            sum(x["time/gepa_round_s"] for x in rows if "time/gepa_round_s" in x), 1
        )
        r["gepa_iterations"] = sum(x["gepa/iterations"] for x in rows if "gepa/iterations" in x)
        probe = d / f"{name}_compile.json"
        if probe.exists():
            p = json.loads(probe.read_text())
            sec, cnt = p["seconds"], p["counts"]
            r["xla_compile_s"] = round(sec.get(COMPILE, 0.0), 1)
            r["xla_compiles"] = cnt.get(COMPILE, 0)
            r["trace_lower_s"] = round(sum(sec.get(k, 0.0) for k in TRACE), 1)
            r["cache_read_s"] = round(sec.get(READ, 0.0), 1)
            r["cache_hits"] = cnt.get("/jax/compilation_cache/cache_hits", 0)
            r["cache_misses"] = cnt.get("/jax/compilation_cache/cache_misses", 0)
        out[name] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = summarize(Path(a.dir))
    keys = list(dict.fromkeys(k for r in res.values() for k in r))
    print("| | " + " | ".join(res) + " |")
    print("|---|" + "---|" * len(res))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r.get(k, "")) for r in res.values()) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
