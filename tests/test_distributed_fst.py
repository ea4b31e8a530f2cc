"""Multi-host FST on CPU: 2 local processes (gloo) run the tiny model through `fst-train` via
`launch/local.py`.

1. 2 processes × 1 device produce exactly the metrics of 1 process × 2 devices (same global
   mesh and batch), and process 0 alone writes them (no duplicated records).
2. SIGKILL one rank mid-run: the launcher names the dead rank and stops the other; rerunning the
   same command resumes from the last checkpoint and ends with the uninterrupted run's metrics.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fst_subprocess import BOOT, REPO, tiny_flags

from fst_jax import metrics

LAUNCHER = REPO / "launch" / "local.py"
TINY_FLAGS = tiny_flags(2, "--config.checkpoint.every_cycles=1", "--config.progress=False")
pytestmark = pytest.mark.slow


def launch(workdir, processes, devices_per_process):
    cmd = [
        sys.executable, str(LAUNCHER), f"--num_processes={processes}",
        f"--devices_per_process={devices_per_process}", "--timeout_s=600", "--grace_s=5", "--",
        sys.executable, "-c", BOOT, f"--workdir={workdir}", *TINY_FLAGS,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def comparable(workdir):
    """Metric records without wall-clock fields."""
    recs = metrics.read_metrics(workdir)
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in recs]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_proc")
    out = finish(launch(workdir, 2, 1))
    return workdir, out


def test_two_processes_match_one_process(two_process_run, tmp_path):
    workdir2, out2 = two_process_run
    assert "all 2 ranks finished OK" in out2
    assert "[rank 0] fst-train summary" in out2 and "[rank 1] fst-train summary" not in out2
    finish(launch(tmp_path, 1, 2))
    one, two = comparable(tmp_path), comparable(workdir2)
    steps = [r["step"] for r in two if "train/loss" in r]
    assert steps == [1, 2, 3, 4]  # 2 cycles × T=2, each record written once (process 0)
    assert any("gepa/calls_used" in r for r in two) and any("val/kl_to_base" in r or any(
        k.startswith("val/kl") for k in r) for r in two)  # fmt: skip
    assert two == one
    assert sorted(p.name for p in (workdir2 / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2",
        "4",
    ]


def _wait_for_train_step(workdir, step, proc, timeout=400):
    path = Path(workdir) / metrics.METRICS_FILE
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            recs = metrics.read_metrics(path) if path.exists() else []
        except ValueError:  # a line being written right now
            recs = []
        if any(r.get("step") == step and "train/loss" in r for r in recs):
            return
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.2)
    raise TimeoutError(f"train step {step} never appeared in {path}")


def test_kill_one_rank_then_resume(two_process_run, tmp_path):
    ref_dir, _ = two_process_run
    proc = launch(tmp_path, 2, 1)
    # Step 3 is in cycle 2, after cycle 1's checkpoint at step 2: kill rank 1 there.
    lines = []
    pid1 = None
    while pid1 is None:
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
        m = re.match(r"local launcher: rank 1 pid (\d+)", line)
        pid1 = int(m.group(1)) if m else None
    _wait_for_train_step(tmp_path, 3, proc)
    os.kill(pid1, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGKILL, out[-3000:]
    assert f"FAILURE: rank 1 (pid {pid1}) was killed by SIGKILL" in out
    assert "stopping ranks [0]" in out
    # Same command again: resumes at the last checkpoint (step 2) and finishes the run.
    out = finish(launch(tmp_path, 2, 1))
    assert "resumed from" in out and "at step 2" in out
    assert comparable(tmp_path) == comparable(ref_dir)
