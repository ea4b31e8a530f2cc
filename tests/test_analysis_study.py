"""The study's aggregation on synthetic run directories: numbers, verdicts, README, figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fst_jax.analysis import study

N = 64  # validation problems per evaluation


def write_run(path, mode, seed, val, kl=None, no_ctx=None, train=None, quadrants=None):
    """A workdir with the records fst-train writes: run/config, train steps, evaluations."""
    path.mkdir(parents=True)
    cfg = {"mode": mode, "seed": seed, "task": {"name": "math"}, "eval": {"k": 4},
           "rl": {"steps_per_cycle": 2, "batch_size": 2, "group_size": 4}}  # fmt: skip
    recs = [{"step": 0, "run/config": json.dumps(cfg)}]
    for step, (reward, dropped) in enumerate(train or [], 1):
        recs.append({"step": step, "train/loss": 0.1, "rollout/reward_mean": reward,
                     "rollout/dropped_groups": dropped, "rollout/num_groups": 2})  # fmt: skip
    for i, (step, v) in enumerate(val):
        r = {"step": step, "val/mean@4": v, "val/num_examples": N, "val/mean@4_se": 0.01,
             "val/mean@4_no_context": (no_ctx or [0.0] * len(val))[i],
             "val/mean@4_seed_context": v * 0.8, "val/mean@4_seed_context_se": 0.02}  # fmt: skip
        if kl is not None:
            r["val/kl_to_base"] = kl[i]
        if quadrants and i == len(val) - 1:
            r.update({f"val/quadrant/{q}": x for q, x in quadrants.items()})
        recs.append(r)
    recs.sort(key=lambda r: r["step"])
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (path / study.RESOURCES).write_text(json.dumps({"rc": 0, "wall_s": 12.5 + seed,
                                                    "peak_rss_mb": 900.0}))  # fmt: skip


def make_study(tmp_path, fst_vals, rl_vals, fst_kl=(0.0, 0.01, 0.02, 0.02),
               rl_kl=(0.0, 0.05, 0.09, 0.1), star_fst_dropped=(2, 2, 1, 0)):  # fmt: skip
    steps = [0, 2, 4, 6]
    arms = {}
    q = {"base_w/seed_p": 0.1, "base_w/trained_p": 0.2, "trained_w/seed_p": 0.3,
         "trained_w/trained_p": 0.4}  # fmt: skip
    for arm, mode, vals, kl in (
        ("rl", "rl", rl_vals, rl_kl),
        ("fst_rule", "fst", fst_vals, fst_kl),
    ):
        arms[arm] = {"kind": "main", "mode": mode, "reflection_lm": None, "workdirs": {}}
        for s, v in enumerate(vals):
            wd = f"runs/{arm}/seed{s}"
            write_run(tmp_path / wd, mode, s, list(zip(steps, v, strict=True)), kl=list(kl),
                      no_ctx=[x / 2 for x in v], quadrants={k: x + s / 10 for k, x in q.items()},
                      train=[(0.5, 1)] * 6)  # fmt: skip
            arms[arm]["workdirs"][str(s)] = wd
    for arm, mode, dropped in (
        ("star_rl", "rl", (2, 2, 2, 2)),
        ("star_fst_rule", "fst", star_fst_dropped),
    ):
        arms[arm] = {"kind": "star", "mode": mode, "reflection_lm": "rule", "workdirs": {}}
        for s in (0, 1):
            wd = f"runs/{arm}/seed{s}"
            train = [(0.0 if d == 2 else 0.25 * (4 - d), d) for d in dropped]
            write_run(tmp_path / wd, mode, s, [(0, 0.0), (4, 0.0)], train=train)
            arms[arm]["workdirs"][str(s)] = wd
    manifest = {"command": "python experiments/study.py --x", "commit": "abc", "seeds": [0, 1],
                "base_config": "experiments/configs/default.py", "k": 4, "arms": arms}  # fmt: skip
    (tmp_path / study.MANIFEST).write_text(json.dumps(manifest))
    return tmp_path


def test_combined_se_oracle():
    v, n = [0.2, 0.4], [64, 64]
    seeds = np.std(v, ddof=1) / math.sqrt(2)
    samp = (0.2 * 0.8 / 64 + 0.4 * 0.6 / 64) / 2 / 2
    assert study.combined_se(v, n) == pytest.approx(math.sqrt(seeds**2 + samp))
    assert study.combined_se([0.0, 0.0], n) == 0.0
    # A run's logged SE over problems replaces the bound; KL (not in [0, 1]) uses seeds only.
    assert study.combined_se(v, n, [0.05, None]) == pytest.approx(
        math.sqrt(seeds**2 + (0.05**2 + 0.4 * 0.6 / 64) / 2 / 2)
    )
    assert study.combined_se([3.0, 5.0], n, bounded=False) == pytest.approx(1.0)
    assert study.verdict(0.3, 0.1) == ("reproduced", True)
    assert study.verdict(-0.3, 0.1) == ("not reproduced", False)
    assert study.verdict(0.15, 0.1)[0] == "inconclusive (within 2 SE)"
    assert study.verdict(float("nan"), 0.1)[0].startswith("inconclusive")


def test_fst_faster_and_left_of_rl_is_reproduced(tmp_path):
    rl = [[0.1, 0.3, 0.5, 0.5], [0.1, 0.3, 0.5, 0.5]]
    fst = [[0.1, 0.5, 0.9, 0.9], [0.1, 0.5, 0.9, 0.9]]
    agg = study.write(make_study(tmp_path, fst, rl))
    c = agg["claims"]["steps_to_rl_peak/fst_rule"]
    assert (c["ref_peak"], c["ref_steps_to_peak"], c["steps_to_ref_peak"]) == (0.5, 4, 2)
    assert c["speedup"] == 2.0
    se = math.hypot(0.01 / math.sqrt(2), 0.01 / math.sqrt(2))  # logged SEs, seeds agree
    assert c["diff_at_rl_peak_step"] == pytest.approx(0.4) and c["se"] == pytest.approx(se)
    assert c["verdict"] == "reproduced"
    k = agg["claims"]["kl_left_of_rl/fst_rule"]
    assert k["kl_diff"] == pytest.approx(-0.08) and k["verdict"] == "reproduced"
    assert k["kl_se"] == 0.0  # seeds agree and KL has no sampling SE
    s = agg["claims"]["star_escape/star_fst_rule"]
    assert s["fst_steps"] == [3, 3] and s["rl_steps"] == [None, None]
    assert s["verdict"] == "reproduced"
    nf = agg["arms"]["star_fst_rule"]["non_flat"][0]
    assert nf["reward_after"] == pytest.approx(np.mean([0.75, 1.0]))
    # Quadrants: seed-mean of (x, x + 0.1) at the last evaluation.
    qd = agg["arms"]["fst_rule"]["quadrants"]["trained_w/trained_p"]
    assert qd["end"] == pytest.approx(0.45) and qd["end_n"] == 2
    # Quadrant SEs: the trained-weights cells use the SEs logged for the same rollouts.
    qs = agg["arms"]["fst_rule"]["quadrants"]["trained_w/seed_p"]
    assert qs["end_se"] == pytest.approx(study.combined_se([0.3, 0.4], [N, N], [0.02, 0.02]))
    qb = agg["arms"]["fst_rule"]["quadrants"]["base_w/seed_p"]
    assert qb["end_se"] == pytest.approx(study.combined_se([0.1, 0.2], [N, N]))
    sc = agg["arms"]["fst_rule"]["val_seed_context"]
    assert sc["end"] == pytest.approx(0.72) and sc["start"] == pytest.approx(0.08)
    nc = agg["arms"]["rl"]["val_no_context"]
    assert nc["end"] == pytest.approx(0.25) and nc["start"] == pytest.approx(0.05)
    text = (tmp_path / "README.md").read_text()
    for needle in (study.pm(0.45, qd["end_se"]), study.pm(0.25, nc["end_se"]),
                   study.pm(0.72, sc["end_se"]), "Total: 8 runs, 1.7 min of run wall time; largest peak RSS 900 MB.",
                   "`steps_to_rl_peak/fst_rule`: reproduced", "abc", "not the paper's",
                   "| star_fst_rule | 0 | 0.000 ± 0.007 | 3 | 4 | 0.875 |", "| rl | 1 | 6 | 14 | 900 |"):  # fmt: skip
        assert needle in text, needle
    for png in study.FIGURES.values():
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "results.json").read_text())["claims"] == json.loads(
        json.dumps(agg["claims"])
    )


def test_not_reproduced_and_inconclusive(tmp_path):
    rl = [[0.1, 0.5, 0.8, 0.8], [0.1, 0.5, 0.8, 0.8]]
    fst = [[0.1, 0.2, 0.3, 0.3], [0.1, 0.2, 0.3, 0.3]]
    agg = study.aggregate(make_study(tmp_path / "a", fst, rl, fst_kl=(0, 0.2, 0.3, 0.3),
                                     star_fst_dropped=(2, 2, 2, 2)))  # fmt: skip
    c = agg["claims"]
    assert c["steps_to_rl_peak/fst_rule"]["verdict"].startswith("not reproduced: at step 4")
    assert math.isnan(c["steps_to_rl_peak/fst_rule"]["steps_to_ref_peak"])
    assert c["kl_left_of_rl/fst_rule"]["verdict"].startswith("not reproduced: FST's KL exceeds")
    assert c["star_escape/star_fst_rule"]["verdict"].startswith("not reproduced: FST never")
    # Seeds that disagree: the difference is within 2 SE.
    rl = [[0.1, 0.3, 0.5, 0.5], [0.1, 0.3, 0.5, 0.5]]
    fst = [[0.1, 0.3, 0.9, 0.9], [0.1, 0.3, 0.2, 0.2]]
    agg = study.aggregate(make_study(tmp_path / "b", fst, rl))
    assert agg["claims"]["steps_to_rl_peak/fst_rule"]["verdict"] == "inconclusive (within 2 SE)"


def test_missing_runs_are_left_out(tmp_path):
    make_study(tmp_path, [[0.1] * 4] * 2, [[0.1] * 4] * 2)
    m = json.loads((tmp_path / study.MANIFEST).read_text())
    m["arms"]["gepa_rule"] = {"kind": "main", "mode": "gepa", "workdirs": {"0": "runs/none/seed0"}}
    (tmp_path / study.MANIFEST).write_text(json.dumps(m))
    agg = study.aggregate(tmp_path)
    assert "gepa_rule" not in agg["arms"] and set(agg["arms"]) >= {"rl", "fst_rule"}


def test_rl_without_progress_has_no_peak_to_reach(tmp_path):
    rl = [[0.5, 0.3, 0.2, 0.2], [0.5, 0.3, 0.2, 0.2]]
    fst = [[0.5, 0.9, 0.9, 0.9], [0.5, 0.9, 0.9, 0.9]]
    c = study.aggregate(make_study(tmp_path, fst, rl))["claims"]["steps_to_rl_peak/fst_rule"]
    assert c["ref_steps_to_peak"] == 0 and c["verdict"].startswith("inconclusive (RL never")
