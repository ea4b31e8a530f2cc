#!/usr/bin/env python3
"""Local multi-process launcher: N copies of a command as one JAX process group on this machine.

Why: a TPU pod runs one controller process per host; this reproduces that on a laptop or CI box
(CPU, gloo collectives) so multi-host code paths — per-host batch shards, process-0-only writes,
lockstep GEPA, multi-host checkpoints — are exercised without a pod.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \
        fst-train --config=experiments/configs/default.py --workdir=/tmp/fst_run

Each process gets FST_COORDINATOR_ADDRESS / FST_NUM_PROCESSES / FST_PROCESS_ID (read by
`fst_jax.distributed.maybe_initialize`). Output lines are streamed prefixed with `[rank i]`.
When one process exits non-zero or is killed, the launcher says which rank, its pid, exit code or
signal, kills the remaining ranks (which would otherwise hang in a collective) and exits non-zero.
Exit codes: 0 all ranks succeeded; the failing rank's code (128+signal for a signal); 124 on
--timeout_s; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO


def free_port() -> int:
    """A TCP port that was free a moment ago (the coordinator binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit {code})"
    return f"exited with code {code}"


def rank_env(
    base: dict[str, str],
    rank: int,
    num: int,
    address: str,
    devices_per_process: int | None,
    cpu: bool,
) -> dict[str, str]:
    env = dict(base)
    env["FST_COORDINATOR_ADDRESS"] = address
    env["FST_NUM_PROCESSES"] = str(num)
    env["FST_PROCESS_ID"] = str(rank)
    env["PYTHONUNBUFFERED"] = "1"
    if cpu:
        env["JAX_PLATFORMS"] = "cpu"
    if devices_per_process is not None:
        flags = [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def _pump(rank: int, stream: TextIO, out: TextIO, lock: threading.Lock, log: TextIO | None) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"[rank {rank}] {line}" if line.endswith("\n") else f"[rank {rank}] {line}\n")
            out.flush()
        if log is not None:
            log.write(line)
            log.flush()
    stream.close()


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    devices_per_process: int | None = None,
    port: int | None = None,
    cpu: bool = True,
    log_dir: str | None = None,
    timeout_s: float | None = None,
    grace_s: float = 10.0,
    out: TextIO = sys.stdout,
) -> int:
    """Run `command` as `num_processes` ranks; return the launcher's exit code (see module doc)."""
    if not command:
        raise SystemExit(
            "local.py: no command given; put it after '--', e.g. -- fst-train --config=..."
        )
    if num_processes < 1:
        raise SystemExit(f"local.py: --num_processes={num_processes} must be >= 1.")
    address = f"127.0.0.1:{port or free_port()}"
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    logs: list[TextIO] = []
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    with lock:
        out.write(
            f"local launcher: {num_processes} ranks, coordinator {address}: {' '.join(command)}\n"
        )
        out.flush()
    start = time.monotonic()
    failed: tuple[int, int] | None = None
    try:
        for rank in range(num_processes):
            env = rank_env(dict(os.environ), rank, num_processes, address, devices_per_process, cpu)
            p = subprocess.Popen(
                list(command),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,  # our signals reach only this rank, not the launcher
            )
            procs.append(p)
            with lock:
                out.write(f"local launcher: rank {rank} pid {p.pid}\n")
                out.flush()
            log = open(os.path.join(log_dir, f"rank{rank}.log"), "w") if log_dir else None  # noqa: SIM115
            if log is not None:
                logs.append(log)
            t = threading.Thread(target=_pump, args=(rank, p.stdout, out, lock, log), daemon=True)
            t.start()
            pumps.append(t)
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                with lock:
                    out.write(
                        f"local launcher: timeout after {timeout_s:.0f}s; stopping all ranks.\n"
                    )
                    out.flush()
                _stop(procs, grace_s)
                return 124
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs, grace_s)
        return 130
    finally:
        if failed is not None:
            rank, code = failed
            others = [r for r, p in enumerate(procs) if p.poll() is None]
            with lock:
                out.write(
                    f"local launcher: FAILURE: rank {rank} (pid {procs[rank].pid}) {describe_exit(code)} "
                    f"after {time.monotonic() - start:.1f}s; stopping ranks {others}. "
                    f"See the [rank {rank}] lines above"
                    + (f" or {log_dir}/rank{rank}.log" if log_dir else "")
                    + ". Rerun the same command to resume from the last checkpoint.\n"
                )
                out.flush()
            _stop(procs, grace_s)
        for t in pumps:
            t.join(timeout=5)
        for f in logs:
            f.close()
    if failed is not None:
        code = failed[1]
        return 128 - code if code < 0 else code
    with lock:
        out.write(
            f"local launcher: all {num_processes} ranks finished OK in {time.monotonic() - start:.1f}s.\n"
        )
        out.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        own, command = argv[:i], argv[i + 1 :]
    else:
        own, command = argv, []
    ap = argparse.ArgumentParser(
        prog="launch/local.py",
        description="Run a command as N local JAX processes (one process group).",
        epilog="Example: python launch/local.py --num_processes=2 -- fst-train --workdir=/tmp/run",
    )
    ap.add_argument("--num_processes", type=int, default=2)
    ap.add_argument(
        "--devices_per_process",
        type=int,
        default=None,
        help="fake CPU devices per process (sets --xla_force_host_platform_device_count)",
    )
    ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    ap.add_argument(
        "--no_cpu", action="store_true", help="do not force JAX_PLATFORMS=cpu (local GPUs/TPUs)"
    )
    ap.add_argument(
        "--log_dir", default=None, help="also write each rank's output to LOG_DIR/rankN.log"
    )
    ap.add_argument("--timeout_s", type=float, default=None)
    ap.add_argument(
        "--grace_s", type=float, default=10.0, help="SIGTERM → SIGKILL grace when stopping"
    )
    args = ap.parse_args(own)
    return launch(
        command,
        args.num_processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        cpu=not args.no_cpu,
        log_dir=args.log_dir,
        timeout_s=args.timeout_s,
        grace_s=args.grace_s,
    )


if __name__ == "__main__":
    sys.exit(main())
