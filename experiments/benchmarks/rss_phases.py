"""Peak resident memory of an ``fst-train`` run, per controller phase.

    python experiments/benchmarks/rss_phases.py --out rss.json -- --workdir=/tmp/x \
        --config.num_cycles=1 --config.rl.steps_per_cycle=1

Runs ``fst_jax.main.run`` in this process (arguments after ``--`` are fst-train's) with a thread
sampling VmRSS every 10 ms, and labels each sample with the controller phase it fell in (model
load, eval at start, GEPA round, RL step sampling / update, final eval, checkpoint). Prints one
JSON line: overall peak (also the kernel's VmHWM) and the peak and the RSS at exit of each phase.
WHY: /usr/bin/time gives one number; fixing a peak needs to know which phase sets it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
_phase = ["startup"]
_peaks: dict[str, float] = {}
_ends: dict[str, float] = {}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _sample() -> None:
    while True:
        r = _rss() / 2**30
        p = _phase[0]
        _peaks[p] = max(_peaks.get(p, 0.0), r)
        time.sleep(0.01)


def _end(phase: str) -> None:
    """Records (and prints, so a cut-short run still tells) a phase's peak and RSS at its end."""
    _ends[phase] = round(_rss() / 2**30, 3)
    peak = round(_peaks.get(phase, 0.0), 3)
    print(f"rss_phases: {phase}: peak {peak} GiB, end {_ends[phase]} GiB", file=sys.stderr)


def _hwm() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _wrap(obj, name: str, label) -> None:
    fn = getattr(obj, name)

    def wrapped(self, *a, **k):
        prev = _phase[0]
        _phase[0] = label(self, *a, **k) if callable(label) else label
        try:
            return fn(self, *a, **k)
        finally:
            _end(_phase[0])
            _phase[0] = prev

    setattr(obj, name, wrapped)


def _wrap_fn(module, name: str, label) -> None:
    """Labels calls of module.name as a sub-phase of the phase they run in."""
    fn = getattr(module, name)

    def wrapped(*a, **k):
        prev = _phase[0]
        _phase[0] = f"{prev} / {label(*a, **k)}"
        try:
            return fn(*a, **k)
        finally:
            _end(_phase[0])
            _phase[0] = prev

    setattr(module, name, wrapped)


def main() -> None:
    i = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv[:i] else None
    sys.argv = ["fst-train", *sys.argv[i + 1 :]]
    threading.Thread(target=_sample, daemon=True).start()
    from fst_jax import controller, rl
    from fst_jax import main as fst_main

    C = controller.Controller
    _wrap(C, "__init__", "init (model load, compile-free setup)")
    _wrap(C, "_gepa_round", lambda s, *a, **k: f"gepa round {s.rs.cycle}")
    _wrap(C, "_rl_step", lambda s, *a, **k: f"rl step {s.rs.step + 1}")
    _wrap(C, "_evaluate", lambda s, final: "eval final" if final else f"eval step {s.rs.step}")
    _wrap(C, "_save", "checkpoint")
    # inside an RL step: the update (train step) apart from the sampling
    orig = rl.update_on_rollouts

    def update(*a, **k):
        prev = _phase[0]
        _phase[0] = prev + " / update"
        try:
            return orig(*a, **k)
        finally:
            _end(_phase[0])
            _phase[0] = prev

    rl.update_on_rollouts = update
    # inside an evaluation: each k-sample call (by bank slot) and the KL measurement
    from fst_jax import evaluation

    for name, label in (("mean_at_k", lambda *a, **k: f"mean_at_k slot {a[3]}"),
                        ("kl_to_base", lambda *a, **k: "kl_to_base")):  # fmt: skip
        _wrap_fn(evaluation, name, label)
    controller.rl.update_on_rollouts = update
    t0 = time.time()
    code = 0
    try:
        fst_main.run()
    except SystemExit as e:
        code = e.code or 0
    res = {
        "peak_gib": round(_hwm(), 3),
        "wall_s": round(time.time() - t0, 1),
        "exit": code,
        "env": {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_")},
        "phases": {
            p: {"peak_gib": round(v, 3), "end_gib": _ends.get(p)} for p, v in _peaks.items()
        },
    }
    line = json.dumps(res)
    print(line)
    if out:
        with open(out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
