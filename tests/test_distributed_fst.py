"""Multi-host FST on CPU: 2 local processes (gloo) run the tiny model through `fst-train` via
`launch/local.py`.

1. 2 processes × 1 device produce exactly the metrics of 1 process × 2 devices (same global
   mesh and batch), and process 0 alone writes them (no duplicated records). Each process
   sampled and verified only its half of every batch (a per-rank log of sampler rows and
   verified problem ids), and the halves are the 1-process run's batches. The reflection LM is
   the local policy (a context window that fits the reflection prompt), generated collectively
   by both processes; the final GEPA state equals the 1-process run's, and the controller's
   per-round lockstep check keeps process 1's identical to process 0's.
2. SIGKILL one rank mid-run: the launcher names the dead rank and stops the other; rerunning the
   same command resumes from the last checkpoint and ends with the uninterrupted run's metrics.
"""

import json
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
# tiny_llama's 512 positions cannot hold the local reflection prompt (~1.6K byte-level tokens +
# the reply), so the run would skip every reflection as `lm_context_overflow`; 4096 positions
# let the local policy reflect. Seed 10: when written, its proposals got accepted (the pool grew
# to 3 and the RL bank used a proposed context); not asserted, as model numerics may move it.
REFLECTING_SPEC = "--config.model.spec=random:tiny_llama,max_position_embeddings=4096"
TINY_FLAGS = [
    REFLECTING_SPEC if f.startswith("--config.model.spec=") else f
    for f in tiny_flags(2, "--config.checkpoint.every_cycles=1", "--config.progress=False",
                        "--config.seed=10")
]  # fmt: skip
ROW_LOG_ENV = "FST_TEST_ROW_LOG"
# The real app, plus (when ROW_LOG_ENV is set) a per-rank log of sampled rows / verified ids.
BOOT_LOGGED = BOOT.replace(
    "import test_controller_e2e; ",
    "import test_controller_e2e, test_distributed_fst; test_distributed_fst.log_rows(); ",
)
assert BOOT_LOGGED != BOOT
pytestmark = pytest.mark.slow


def log_rows():
    """In an fst-train child: append each sampler call's rows and each verify call's problem ids
    to <$FST_TEST_ROW_LOG>/rank<i>.jsonl (no-op when the variable is unset)."""
    out_dir = os.environ.get(ROW_LOG_ENV)
    if not out_dir:
        return
    import jax
    import test_controller_e2e

    from fst_jax.sampling import sampler as sampler_lib

    def write(rec):
        with open(Path(out_dir) / f"rank{jax.process_index()}.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    sample, verify = sampler_lib.Sampler.sample, test_controller_e2e.ParityTask.verify_batch

    def logged_sample(self, params, bank, prompt_idx, *args, **kwargs):
        out = sample(self, params, bank, prompt_idx, *args, **kwargs)
        write({"sample": len(prompt_idx), "rows": out.row_range, "texts": len(out.texts)})
        return out

    def logged_verify(self, examples, completions, *args, **kwargs):
        write({"verify": [ex.id for ex in examples]})
        return verify(self, examples, completions, *args, **kwargs)

    sampler_lib.Sampler.sample = logged_sample
    test_controller_e2e.ParityTask.verify_batch = logged_verify


def launch(workdir, processes, devices_per_process, row_log=None):
    cmd = [
        sys.executable, str(LAUNCHER), f"--num_processes={processes}",
        f"--devices_per_process={devices_per_process}", "--timeout_s=600", "--grace_s=5", "--",
        sys.executable, "-c", BOOT_LOGGED, f"--workdir={workdir}", *TINY_FLAGS,
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop(ROW_LOG_ENV, None)
    if row_log is not None:
        Path(row_log).mkdir(parents=True, exist_ok=True)
        env[ROW_LOG_ENV] = str(row_log)
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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
    out = finish(launch(workdir, 2, 1, row_log=workdir / "rows"))
    return workdir, out


def read_log(path):
    recs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [r for r in recs if "sample" in r], [r["verify"] for r in recs if "verify" in r]


def final_host_state(workdir):
    """The JSON host item of the last checkpoint (population, GEPA RNG / reply cache, counters)."""
    return json.loads((Path(workdir) / "checkpoints" / "4" / "meta" / "metadata").read_text())


def test_two_processes_match_one_process(two_process_run, tmp_path):
    workdir2, out2 = two_process_run
    assert "all 2 ranks finished OK" in out2
    assert "[rank 0] fst-train summary" in out2 and "[rank 1] fst-train summary" not in out2
    finish(launch(tmp_path, 1, 2, row_log=tmp_path / "rows"))
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

    # Each process sampled only its half of every batch (rows [0, c) / [c, n), c = ceil(n/2));
    # the 1-process run sampled the same batches whole.
    s_one, v_one = read_log(tmp_path / "rows" / "rank0.jsonl")
    (s0, v0), (s1, v1) = (read_log(workdir2 / "rows" / f"rank{r}.jsonl") for r in (0, 1))
    assert len(s0) == len(s1) == len(s_one) > 0
    for a, b, ref in zip(s0, s1, s_one, strict=True):
        n, c = ref["sample"], -(-ref["sample"] // 2)
        assert a["sample"] == b["sample"] == n and ref["rows"] == [0, n]
        assert (a["rows"], b["rows"]) == ([0, c], [c, n]) and a["texts"] + b["texts"] == n
    # ... and verified exactly the problems of its half; together, the 1-process run's batches.
    assert len(v0) == len(v1) == len(v_one) > 0
    for a, b, ref in zip(v0, v1, v_one, strict=True):
        assert a == ref[: -(-len(ref) // 2)] and b == ref[len(a) :] and b
    # The local policy reflected (collectively, on both processes) and the GEPA state — pool,
    # scores, RNG, reflection replies — ends exactly as in the 1-process run.
    state_one, state_two = final_host_state(tmp_path), final_host_state(workdir2)
    pop = state_two["host"]["population"]
    assert pop["counters"].get("lm_requests", 0) > 0 and pop["lm_cache"]
    assert not any(k.startswith("gepa/skip/lm_") for r in two for k in r), (
        "the local reflection LM was skipped"
    )
    drop = lambda h: {k: v for k, v in h.items() if k != "metrics_offset"}  # noqa: E731
    assert drop(state_two["host"]) == drop(state_one["host"])


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
