"""The FST study in one command: RL, FST and GEPA-only × reflection LMs × seeds, plus star graph.

Every arm runs the same base config (same task, problems, RL steps and evaluation) with only the
mode and the reflection LM changed; each (arm, seed) is one `fst-train` subprocess, run one at a
time (memory), in its own workdir ``<out>/runs/<arm>/seed<s>``. Then `fst_jax.analysis.study`
reads the runs' metrics and writes ``<out>/README.md`` (tables, verdicts), ``results.json`` and
the PNGs.

    PYTHONPATH=$PWD python experiments/study.py --out experiments/results/study \\
        --init_from runs/sft-cf --seeds 0,1 --override=--config.num_cycles=4

Arms (``--arms``, comma-separated; default all):
  rl                 mode=rl
  fst_local, fst_rule        mode=fst, reflection LM = the frozen policy / the rule stand-in
  gepa_local, gepa_rule      mode=gepa (fast weights only)
  fst_rule_reuse     mode=fst, rule, --config.rl.reuse_gepa_rollouts=cycle (skipped with a note
                     when the config has no such key)
  star_rl, star_fst_rule, star_fst_local, star_gepa_rule
                     the same on task star_graph (``--star_size``; sized so the base reward is 0;
                     ``--override`` flags on ``--config.task.*`` are not passed to these)

Resumable: an (arm, seed) whose ``resources.json`` records a clean exit is skipped; an
interrupted one is rerun in the same workdir, so `fst-train` resumes from its checkpoints. A
finished run's ``checkpoints/`` are deleted (results are committed, checkpoints are not) unless
``--keep_checkpoints``. ``--aggregate_only`` rebuilds the README from the runs on disk.
Wall time and peak RSS per run come from ``os.wait4`` on the child (its ru_maxrss).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# arm -> (kind, mode, reflection LM or None, extra flags)
ARMS = {
    "rl": ("main", "rl", None, []),
    "fst_local": ("main", "fst", "local", []),
    "fst_rule": ("main", "fst", "rule", []),
    "gepa_local": ("main", "gepa", "local", []),
    "gepa_rule": ("main", "gepa", "rule", []),
    "fst_rule_reuse": ("main", "fst", "rule", ["--config.rl.reuse_gepa_rollouts=cycle"]),
    "star_rl": ("star", "rl", None, []),
    "star_fst_rule": ("star", "fst", "rule", []),
    "star_fst_local": ("star", "fst", "local", []),
    "star_gepa_rule": ("star", "gepa", "rule", []),
}
STAR_CONFIG = '''"""Written by experiments/study.py: the study's base config on task star_graph."""
import importlib.util

import ml_collections


def get_config():
    spec = importlib.util.spec_from_file_location("study_base_config", {base!r})
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.task.name = "star_graph"
    c.task.kwargs = ml_collections.ConfigDict({{"size": {size!r}}})
    c.task.seed_prompt = ""
    return c
'''


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("study_probe_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="experiments/results/study", help="study directory")
    p.add_argument("--base_config", default=str(REPO / "experiments/configs/default.py"))
    p.add_argument("--init_from", default="", help="workdir whose latest params start every run")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (>= 2 for SEs)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    p.add_argument("--override", action="append", default=[],
                   help="a flag passed to every run, e.g. --override=--config.num_cycles=4")  # fmt: skip
    p.add_argument("--star_override", action="append", default=[],
                   help="a flag passed to the star-graph runs only (after --override)")  # fmt: skip
    p.add_argument("--star_size", default="medium", help="tasks/star_graph.py SIZES name")
    p.add_argument("--fst_train", default="fst-train", help="command that runs fst-train")
    p.add_argument("--keep_checkpoints", action="store_true")
    p.add_argument("--aggregate_only", action="store_true")
    a = p.parse_args(argv)
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.arm_list = [s.strip() for s in a.arms.split(",") if s.strip()]
    bad = [x for x in a.arm_list if x not in ARMS]
    if bad:
        p.error(f"unknown arm(s) {bad}; choose from {','.join(ARMS)}")
    if not a.seed_list:
        p.error("--seeds is empty; give e.g. --seeds 0,1")
    for flag in a.override + a.star_override:
        if not flag.startswith("--"):
            p.error(f"--override {flag!r} must be an fst-train flag such as --config.rl.lr=1e-5")
    return a


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return out + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def merge_manifest(prev: dict, new: dict) -> dict:
    """The study after this invocation: `new`'s settings, every arm of either, and per arm the
    union of seeds' workdirs — rerunning an arm with other `--seeds` adds them, never drops
    the seeds an earlier invocation ran."""
    arms = {name: dict(arm) for name, arm in prev["arms"].items()}
    for name, arm in new["arms"].items():
        workdirs = {**arms.get(name, {}).get("workdirs", {}), **arm["workdirs"]}
        arms[name] = {**arm, "workdirs": dict(sorted(workdirs.items(), key=lambda kv: int(kv[0])))}
    seeds = sorted({int(s) for arm in arms.values() for s in arm["workdirs"]})
    merged = {**new, "arms": arms, "seeds": seeds}
    if not any(arm["kind"] == "star" for arm in new["arms"].values()):
        for key in (
            "star_size",
            "star_overrides",
        ):  # the star arms' settings are the last star run's
            if key in prev:
                merged[key] = prev[key]
    return merged


def run_one(cmd: list[str], workdir: Path, log: Path) -> dict:
    """Runs one fst-train child; wall time and the child's peak RSS (wait4's ru_maxrss, KiB)."""
    t0 = time.monotonic()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        # Every run uses fst-train's persistent XLA compile cache (config.compile_cache_dir,
        # fst_jax/compile_cache.py): the arms share shapes, so only the first run of each shape
        # pays its compilation.
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(time.monotonic() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "command": shlex.join(cmd)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from fst_jax.analysis import study

    a = parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = str(Path(a.base_config).resolve())
    arms = list(a.arm_list)
    if "fst_rule_reuse" in arms and "reuse_gepa_rollouts" not in load_config(base).rl:
        print("study: skipping arm fst_rule_reuse (this config has no rl.reuse_gepa_rollouts)")
        arms.remove("fst_rule_reuse")
    star_cfg = out / "star_graph_config.py"
    if any(ARMS[arm][0] == "star" for arm in arms):  # else keep the file the star runs used
        star_cfg.write_text(STAR_CONFIG.format(base=base, size=a.star_size), encoding="utf-8")
    manifest = {
        "command": shlex.join(["python", "experiments/study.py", *(argv or sys.argv[1:])]),
        "commit": _commit(), "seeds": a.seed_list, "base_config": os.path.relpath(base, REPO),
        "init_from": a.init_from, "overrides": a.override, "star_overrides": a.star_override,
        "star_size": a.star_size, "k": int(load_config(base).eval.k), "arms": {},
    }  # fmt: skip
    for arm in arms:
        kind, mode, lm, extra = ARMS[arm]
        manifest["arms"][arm] = {"kind": kind, "mode": mode, "reflection_lm": lm,
                                 "workdirs": {str(s): f"runs/{arm}/seed{s}" for s in a.seed_list}}  # fmt: skip
    old = out / study.MANIFEST
    if old.exists():  # arms and seeds of earlier invocations stay in the study
        prev = json.loads(old.read_text(encoding="utf-8"))
        manifest = prev if a.aggregate_only else merge_manifest(prev, manifest)
    old.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    failed = []
    for arm in [] if a.aggregate_only else arms:
        kind, mode, lm, extra = ARMS[arm]
        for seed in a.seed_list:
            wd = out / "runs" / arm / f"seed{seed}"
            res_path = wd / study.RESOURCES
            if res_path.exists() and json.loads(res_path.read_text())["rc"] == 0:
                print(f"study: {arm} seed {seed} finished earlier; skipped")
                continue
            wd.mkdir(parents=True, exist_ok=True)
            cmd = [*shlex.split(a.fst_train), f"--config={star_cfg if kind == 'star' else base}",
                   f"--workdir={wd}", f"--config.mode={mode}", f"--config.seed={seed}"]  # fmt: skip
            if lm:
                cmd.append(f"--config.gepa.reflection_lm={lm}")
            if a.init_from:
                cmd.append(f"--config.init_from={Path(a.init_from).resolve()}")
            common = a.override
            if kind == "star":  # the star arms' task is star_graph whatever --override says
                common = [f for f in a.override if not f.startswith("--config.task.")]
            cmd += [*extra, *common, *(a.star_override if kind == "star" else [])]
            print(f"study: {arm} seed {seed} ...", flush=True)
            res = run_one(cmd, wd, wd.parent / f"seed{seed}.log")
            print(f"study: {arm} seed {seed} rc={res['rc']} {res['wall_s']} s "
                  f"{res['peak_rss_mb']} MB", flush=True)  # fmt: skip
            if res["rc"] != 0:
                failed.append(f"{arm}/seed{seed} (rc {res['rc']}, log {wd.parent}/seed{seed}.log)")
                continue
            res_path.write_text(json.dumps(res, indent=1), encoding="utf-8")
            if not a.keep_checkpoints and (wd / "checkpoints").exists():
                shutil.rmtree(wd / "checkpoints")
    agg = study.write(out)
    for name, c in agg["claims"].items():
        print(f"study: {name}: {c['verdict']}")
    print(f"study: wrote {out}/README.md")
    if failed:
        print("study: FAILED runs (rerun the same command to resume them): " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
