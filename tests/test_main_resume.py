"""fst-train as a subprocess: SIGKILL mid-cycle, resume, and the metrics equal an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fst_subprocess import BOOT, REPO, tiny_flags

from fst_jax import metrics

TINY_FLAGS = tiny_flags(3, "--config.mesh.devices=1")


def launch(workdir, extra=()):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu"
    )
    return subprocess.Popen(
        [sys.executable, "-c", BOOT, f"--workdir={workdir}", *TINY_FLAGS, *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for_step(workdir, step, proc, timeout=400):
    """Polls the JSONL until a train record of `step` exists (the run is inside cycle 1)."""
    path = Path(workdir) / metrics.METRICS_FILE
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and any(
            r.get("step") == step and "train/loss" in r for r in _safe_read(path)
        ):
            return
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    raise TimeoutError(f"step {step} never appeared in {path}")


def _safe_read(path):
    try:
        return metrics.read_metrics(path)
    except ValueError:  # a line being written right now
        return []


@pytest.mark.slow  # fst-train subprocesses
def test_sigkill_mid_cycle_then_resume_matches_uninterrupted(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = launch(ref_dir)
    ref_out = finish(ref)
    assert "fst-train summary" in ref_out

    proc = launch(run_dir)
    wait_for_step(run_dir, 3, proc)  # cycle 1 (steps 3-4): after the step-2 checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = metrics.read_metrics(run_dir)
    assert any(r["step"] == 3 and "train/loss" in r for r in killed)

    out = finish(launch(run_dir))
    assert "resumed from" in out or "fst-train summary" in out
    a = metrics.comparable_records(metrics.read_metrics(ref_dir))
    b = metrics.comparable_records(metrics.read_metrics(run_dir))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert a == b
