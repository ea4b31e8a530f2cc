"""Rollout reuse on 2 local processes (gloo, `launch/local.py`): each process samples its block
of the fresh rows only, the store is the same on both (GEPA's outputs are gathered), and the
merged batch — reused and fresh rows — is split into the train step's per-host row blocks
exactly as on 1 process × 2 devices: the metrics of the two runs are equal."""

import subprocess
import sys

import pytest
from fst_subprocess import BOOT, REPO, tiny_flags

from fst_jax import metrics

pytestmark = pytest.mark.slow  # two multi-process fst-train runs


def launch(workdir, processes, devices_per_process):
    flags = tiny_flags(2, "--config.checkpoint.every_cycles=1", "--config.progress=False",
                       "--config.rl.reuse_gepa_rollouts=cycle")  # fmt: skip
    cmd = [
        sys.executable, str(REPO / "launch" / "local.py"), f"--num_processes={processes}",
        f"--devices_per_process={devices_per_process}", "--timeout_s=900", "--grace_s=5", "--",
        sys.executable, "-c", BOOT, f"--workdir={workdir}", *flags,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1000)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def comparable(workdir):
    recs = metrics.read_metrics(workdir)
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in recs]


def test_reuse_two_processes_match_one_process(tmp_path):
    launch(tmp_path / "two", 2, 1)
    launch(tmp_path / "one", 1, 2)
    two, one = comparable(tmp_path / "two"), comparable(tmp_path / "one")
    train = [r for r in two if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    # Mixed batches: some rows reused, some sampled (split over the two processes).
    assert all(0 < r["train/reused_frac"] < 1 for r in train)
    assert two == one
