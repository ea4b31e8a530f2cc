"""The whole study command at a tiny size: every output exists, the README's numbers are the runs'
numbers (recomputed here from the raw metrics.jsonl), and a rerun resumes without training."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from fst_subprocess import BOOT, REPO, tiny_flags
from test_controller_e2e import load_config

from fst_jax.analysis import study

ARMS = ["rl", "fst_rule", "gepa_rule", "fst_rule_reuse", "star_rl", "star_fst_rule"]


def run_study(out):
    cmd = [sys.executable, str(REPO / "experiments/study.py"), f"--out={out}", "--seeds=0,1",
           f"--arms={','.join(ARMS)}", "--star_size=tiny",
           f"--fst_train={shlex.join([sys.executable, '-c', BOOT])}",
           *(f"--override={f}" for f in tiny_flags(1)),  # start + end evaluation
           "--star_override=--config.sampling.max_new_tokens=8",
           # star-graph questions are ~600 tokens for the tiny model's byte-level tokenizer
           "--star_override=--config.model.spec=random:tiny_llama,max_position_embeddings=2048"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=3000)


def records(path):
    return [json.loads(x) for x in open(path, encoding="utf-8") if x.strip()]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 10 tiny fst-train runs: ~8 min alone on 2 cores, ~35 min when shared
def test_study_command_end_to_end(tmp_path):
    out = tmp_path / "study"
    p = run_study(out)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    manifest = json.loads((out / study.MANIFEST).read_text())
    arms = ARMS
    if "reuse_gepa_rollouts" not in load_config("default.py").rl:  # the arm is skipped, saying so
        assert "skipping arm fst_rule_reuse" in p.stdout
        arms = [a for a in ARMS if a != "fst_rule_reuse"]
    assert list(manifest["arms"]) == arms
    for name in ("README.md", "results.json", *study.FIGURES.values()):
        assert (out / name).stat().st_size > 0, name
    for png in study.FIGURES.values():
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (out / "README.md").read_text()
    agg = json.loads((out / "results.json").read_text())
    assert set(agg["arms"]) == set(arms)
    for arm in arms:
        for seed in (0, 1):
            wd = out / "runs" / arm / f"seed{seed}"
            res = json.loads((wd / study.RESOURCES).read_text())
            assert res["rc"] == 0 and res["peak_rss_mb"] > 100 and res["wall_s"] > 0
            assert not (wd / "checkpoints").exists()  # dropped after a clean finish
            assert f"| {arm} | {seed} | " in readme
        # Independent oracle: the seed-mean of each run's last val/mean@4 from the raw JSONL.
        last = [[r for r in records(out / "runs" / arm / f"seed{s}" / "metrics.jsonl")
                 if "val/mean@4" in r][-1] for s in (0, 1)]  # fmt: skip
        mean = float(np.mean([r["val/mean@4"] for r in last]))
        assert agg["arms"][arm]["val"]["end"] == pytest.approx(mean)
        if agg["arms"][arm]["kind"] == "main":
            row = next(ln for ln in readme.splitlines() if ln.startswith(f"| {arm} | 2 | "))
            assert study.pm(mean, agg["arms"][arm]["val"]["end_se"]) in row
        wall = json.loads((out / "runs" / arm / "seed1" / study.RESOURCES).read_text())["wall_s"]
        assert f"| {arm} | 1 | " in readme and f"| {wall:.0f} |" in readme
    for name, c in agg["claims"].items():
        assert f"- `{name}`: {c['verdict']}" in readme
    assert {"steps_to_rl_peak/fst_rule", "kl_left_of_rl/fst_rule", "star_escape/star_fst_rule"} <= set(agg["claims"])  # fmt: skip
    # Star graph: the tiny random model never solves it, so its first evaluation is 0.
    assert agg["arms"]["star_rl"]["val"]["start"] == 0.0
    # The rule reflection LM answered and its replies parsed into children GEPA scored (the
    # gepa_log keeps a child's text only when accepted, so count evaluated children).
    rows = [r for a in arms if "rule" in a and a.startswith(("fst", "gepa")) for s in (0, 1)
            for r in records(out / "runs" / a / f"seed{s}" / "gepa_log.jsonl")]  # fmt: skip
    assert sum(r["usage"]["requests"] for r in rows if r["kind"] == "round") > 0
    assert any(r.get("child_hash") and r["decision"] in ("accepted", "rejected") for r in rows)
    # Rerun: every run is skipped, the README is rebuilt from the same files, identically.
    before = readme
    p = run_study(out)
    assert p.returncode == 0 and p.stdout.count("finished earlier; skipped") == 2 * len(arms)
    assert (out / "README.md").read_text() == before
