"""fst-report on tiny end-to-end runs of every mode: each section's numbers against metrics.jsonl
(recomputed here from the raw JSON lines), the HTML's structure, and a headless-Chromium
screenshot that must show figures.

The runs use the tiny random model and the controller tests' `ctl_parity` task, plus
`ctl_star_graph` (reward always 0: every group is flat, as in the paper's zero-reward probe).
"""

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import controller, gepa
from fst_jax.analysis import report
from fst_jax.tasks import base as task_base

# Ten tiny runs: about 7 minutes on an idle 2-core box, longer on a shared one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


class ZeroTask(task_base.Task):
    name = "ctl_star_graph"
    seed_prompt = "Find the path."

    def __init__(self, **kwargs):
        super().__init__()

    def _load_split(self, split):
        return [
            task_base.Example(f"{split}-{i}", f"Path to node {i}?", None, {}) for i in range(24)
        ]

    def _verify(self, example, completion):
        return task_base.Verdict(0.0, "wrong", "no path given")


if "ctl_star_graph" not in task_base.list_tasks():
    task_base.register_task("ctl_star_graph")(ZeroTask)


def _run(workdir, mode, seed=0, cycles=5, **over):
    c = tiny_config(mode)
    c.seed, c.num_cycles = seed, cycles
    c.rl.steps_per_cycle = 1
    c.gepa.budget = 22  # 2 reflective iterations after re-scoring (worst case 2·3 + 4 each)
    c.eval.every_cycles, c.checkpoint.every_cycles = 1, cycles
    c.summary = False
    for key, value in over.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    lm = gepa.get_reflection_lm("local", generate=ScriptedLM())
    controller.Controller(c, workdir, reflection_lm=lm).run()
    return str(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    wd = {
        "rl0": _run(root / "rl0", "rl", 0),
        "rl1": _run(root / "rl1", "rl", 1),
        "gepa0": _run(root / "gepa0", "gepa", 0),
        "fst0": _run(root / "fst0", "fst", 0),
        "fst1": _run(root / "fst1", "fst", 1),
        "distill0": _run(root / "distill0", "fst_distill", 0),
        "fstK1": _run(root / "fstK1", "fst", 0, **{"gepa.k": 1}),
        "star": _run(root / "star", "rl", 0, cycles=2, **{"task.name": "ctl_star_graph"}),
        "stream": _run(root / "stream", "fst", 0, cycles=4,
                       **{"task.stream": "ctl_parity,ctl_star_graph", "task.switch_every": 2,
                          "task.seed_prompt": "Reply with one word."}),
    }  # fmt: skip
    wd["plastic"] = _run(root / "plastic", "rl", 0, cycles=2, init_from=wd["fst0"])
    return wd


def _records(workdir):
    with open(f"{workdir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _series(workdir, key):
    recs = [r for r in _records(workdir) if key in r]
    return [r["step"] for r in recs], [float(r[key]) for r in recs]


def _group(data, *parts):
    """The group label made of exactly these parts (labels name only what differs)."""
    hits = [g for g in data if set(g.split(" ")) == set(parts)]
    assert len(hits) == 1, (parts, list(data))
    return hits[0]


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    data = report.build_report(list(runs.values()), out, bootstrap=20)
    return data, out


def test_every_section_is_drawn(built):
    data, out = built
    for sid, sec in data["sections"].items():
        assert sec["missing"] is None, (sid, sec["missing"])
    assert sorted(data["figures"]) == sorted(p.name for p in out.glob("*.png"))
    for name in data["figures"]:
        import matplotlib.image

        img = matplotlib.image.imread(out / name)
        assert img.std() > 0.01, f"{name} is blank"


def test_data_efficiency_matches_jsonl(runs, built):
    d = built[0]["sections"]["data_efficiency"]["data"]
    rl = _group(d, "rl", "ctl_parity")
    s0, v0 = _series(runs["rl0"], "val/mean@4")
    s1, v1 = _series(runs["rl1"], "val/mean@4")
    assert s0 == s1 == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(d[rl]["step"]["x"], s0)
    np.testing.assert_allclose(d[rl]["step"]["mean"], (np.array(v0) + np.array(v1)) / 2)
    se = np.abs(np.array(v0) - np.array(v1)) / 2  # SE of two values = |a - b| / 2
    np.testing.assert_allclose(d[rl]["step"]["se"], se, atol=1e-12)
    # Samples: B·G = 8 rollouts per RL step, plus every GEPA rollout of rounds before the eval.
    for key, wds in (("fst", ["fst0", "fst1"]), ("gepa", ["gepa0"])):
        label = _group(d, key, "ctl_parity", "K=2")
        expect = []
        for w in wds:
            recs = _records(runs[w])
            gepa_rows = [
                (r["step"], r["gepa/total_calls"]) for r in recs if "gepa/total_calls" in r
            ]
            rl_rows = 8 if key == "fst" else 0
            expect.append([s * rl_rows + sum(c for st, c in gepa_rows if st < s) for s in s0])
        assert sorted(set(np.concatenate(expect))) == d[label]["samples"]["x"]
    peaks = d["steps_to_rl_peak"]
    fst = _group(d, "fst", "ctl_parity", "K=2")
    rl_mean = (np.array(v0) + np.array(v1)) / 2
    peak = rl_mean.max()
    assert peaks[fst]["ref_peak"] == pytest.approx(peak)
    assert peaks[fst]["ref_steps_to_peak"] == s0[int(np.argmax(rl_mean >= peak))]
    f_mean = np.array(d[fst]["step"]["mean"])
    hit = np.nonzero(np.maximum.accumulate(f_mean) >= peak)[0]
    want = float(d[fst]["step"]["x"][hit[0]]) if len(hit) else None
    got = peaks[fst]["steps_to_ref_peak"]
    assert (got is None and want is None) or got == want


def test_sigmoid_kl_entropy_quadrants_match_jsonl(runs, built):
    secs = built[0]["sections"]
    fits = secs["sigmoid"]["data"]
    rl = _group(fits, "rl", "ctl_parity")
    assert fits[rl]["n_points"] == 10  # 5 evaluations at step >= 1, two seeds
    lo, hi = fits[rl]["a_ci"]
    assert lo <= fits[rl]["a"] + 1e-9 and fits[rl]["a"] <= hi + 1e-9
    # The fitted curve passes near the pooled points: its SSE is at most the SSE of their mean.
    vals = np.array(
        _series(runs["rl0"], "val/mean@4")[1][1:] + _series(runs["rl1"], "val/mean@4")[1][1:]
    )
    steps = np.array(_series(runs["rl0"], "val/mean@4")[0][1:] * 2, dtype=float)
    f = fits[rl]
    pred = f["r0"] + (f["a"] - f["r0"]) / (1 + (f["c_mid"] / steps) ** f["b"])
    assert np.sum((pred - vals) ** 2) <= np.sum((vals - vals.mean()) ** 2) + 1e-9

    kl = secs["kl_vs_reward"]["data"]
    g = _group(kl, "gepa", "ctl_parity", "K=2")
    assert kl[g]["kl"] == [0.0] * 6  # frozen weights
    d = _group(kl, "fst_distill", "ctl_parity", "K=2")
    assert kl[d]["kl"] == pytest.approx(_series(runs["distill0"], "val/kl_to_base")[1])
    assert 2 <= len(kl[d]["annotated"]) <= 4 and kl[d]["annotated"][0] == 0

    ent = secs["entropy"]["data"]
    assert not any(lbl.startswith("gepa") for lbl in ent)  # frozen weights log no entropy
    f = _group(ent, "fst", "ctl_parity", "K=2")
    e0, e1 = _series(runs["fst0"], "train/entropy")[1], _series(runs["fst1"], "train/entropy")[1]
    np.testing.assert_allclose(ent[f]["mean"], (np.array(e0) + np.array(e1)) / 2, rtol=1e-12)

    q = secs["quadrants"]["data"]
    last = _records(runs["distill0"])[-1]
    for cell, v in q[_group(q, "fst_distill", "ctl_parity", "K=2")].items():
        assert v["mean"] == pytest.approx(last[f"val/quadrant/{cell}"]) and v["n"] == 1


def test_probe_sections_match_jsonl(runs, built):
    secs = built[0]["sections"]
    bars = secs["plasticity"]["data"]["bars"]
    probe = next(b for b in bars if "from fst" in b["label"])
    assert probe["final"] == pytest.approx(_series(runs["plastic"], "val/mean@4")[1][-1])
    base = next(b for b in bars if "from base" in b["label"])  # fresh rl on the same task
    assert base["n"] == 2

    cont = secs["continual"]["data"]
    label = _group(cont, "fst", "ctl_parity,ctl_star_graph", "K=2")
    assert cont[label]["boundaries"] == [[0, "ctl_parity"], [2, "ctl_star_graph"]]

    star = secs["star_graph"]["data"]
    s = star[_group(star, "rl", "ctl_star_graph")]
    recs = [r for r in _records(runs["star"]) if "rollout/num_groups" in r]
    assert s["rollout/flat_group_fraction"]["mean"] == [
        r["rollout/dropped_groups"] / r["rollout/num_groups"] for r in recs
    ]
    assert s["rollout/flat_group_fraction"]["mean"] == [1.0, 1.0]  # reward 0: every group flat
    assert s["rollout/reward_mean"]["mean"] == [0.0, 0.0]

    abl = secs["ablations"]["data"]
    k1, k2 = _group(abl, "fst", "ctl_parity", "K=1"), _group(abl, "fst", "ctl_parity", "K=2")
    assert abl[k1]["K"] == 1 and abl[k2]["K"] == 2 and abl[k2]["n"] == 2
    assert abl[k1]["final"] == pytest.approx(_series(runs["fstK1"], "val/mean@4")[1][-1])


def test_gepa_section_matches_metrics_and_log(runs, built):
    g = built[0]["sections"]["gepa"]["data"]
    assert "rl0" not in g and {"gepa0", "fst0", "distill0"} <= set(g)
    for name in ("gepa0", "fst0", "distill0"):
        recs = [r for r in _records(runs[name]) if "gepa/calls_used" in r]
        rounds = g[name]["rounds"]
        assert [r["step"] for r in rounds] == [r["step"] for r in recs]
        for rd, rec in zip(rounds, recs):
            for key in ("accepted", "rejected", "iterations", "calls_used"):
                assert rd[key] == rec[f"gepa/{key}"], (name, key)
        log = [json.loads(x) for x in Path(runs[name], "gepa_log.jsonl").read_text().splitlines()]
        its = [r for r in log if r["kind"] == "iteration"]
        rds = [r for r in log if r["kind"] == "round"]
        for rd, rec in zip(rds, recs):  # every rollout of a round is an iteration's or re-scoring
            spent = sum(r["calls"] for r in its if r["cycle"] == rd["cycle"])
            assert spent + rd["rescore_calls"] == rec["gepa/total_calls"]
        tree = g[name]["tree"]
        accepted = [r for r in its if r["decision"] == "accepted"]
        assert len(tree["nodes"]) == 1 + len(accepted)
        assert len(tree["rejected"]) == sum(r["decision"] == "rejected" for r in its)
        assert {n["id"] for n in tree["nodes"] if n["exported"]} == {
            e["id"] for e in rds[-1]["exported"]
        }
        # Every reflection request is in the usage (the scripted LM answers each iteration once).
        reflected = sum(r["decision"] in ("accepted", "rejected") for r in its)
        assert g[name]["usage"]["requests"] >= reflected


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.ids, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "script":
            self.scripts += 1
        if "id" in a:
            self.ids.append(a["id"])


def test_html_is_self_contained_and_renders_in_chromium(built, tmp_path):
    data, out = built
    p = _Tags()
    p.feed((out / "index.html").read_text())
    assert len(p.imgs) == len(data["figures"]) and all(
        s.startswith("data:image/png;base64,") for s in p.imgs
    )
    assert p.ids == list(data["sections"]) and p.scripts == 0
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "first_screen.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,1600",
                    (out / "index.html").as_uri()], check=True, timeout=120, capture_output=True)  # fmt: skip
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1280)
    non_white = (img < 0.95).any(axis=-1)
    colored = (img.max(axis=-1) - img.min(axis=-1)) > 0.25  # figure lines and fills, not text
    assert non_white.mean() > 0.03 and colored.mean() > 0.002, (non_white.mean(), colored.mean())


def test_sections_without_data_say_which_run_produces_them(runs, tmp_path):
    data = report.build_report([runs["rl0"]], tmp_path, bootstrap=0)
    secs = data["sections"]
    assert secs["data_efficiency"]["missing"] is None and secs["sigmoid"]["missing"] is None
    assert "paper_plasticity.py" in secs["plasticity"]["missing"]
    assert "paper_continual.py" in secs["continual"]["missing"]
    assert "paper_star_graph.py" in secs["star_graph"]["missing"]
    assert "ablations.py" in secs["ablations"]["missing"]
    assert "gepa_log.jsonl" in secs["gepa"]["missing"]
    html = (tmp_path / "index.html").read_text()
    assert html.count('class="missing"') >= 2 * 5  # nav link + notice per missing section
    assert math.isfinite(secs["sigmoid"]["data"][next(iter(secs["sigmoid"]["data"]))]["a"])


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope"), f"--out={tmp_path / 'o'}"]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
