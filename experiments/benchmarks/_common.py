"""Helpers the benchmark scripts share: timing, standard errors, RSS sampling, run facts.

Imported as ``import _common`` (the scripts run as ``python experiments/benchmarks/X.py``, so
this directory is on ``sys.path``, as for ``peaks.py``).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one `fn()` call."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def se(xs: Sequence[float]) -> float:
    """Standard error of the mean (NaN for fewer than two values)."""
    return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")


def rss_bytes(page: int = os.sysconf("SC_PAGE_SIZE")) -> int:
    """This process's resident set now (/proc/self/statm; Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page


class RssMonitor:
    """Samples this process's resident set every 5 ms; `peak(t0, t1)` = max RSS in a window."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            self.samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(0.005)

    def peak(self, t0: float, t1: float) -> float:
        """Max RSS (GB) sampled in [t0, t1] (the sample just before t0 included)."""
        xs = [r for t, r in self.samples if t0 <= t <= t1]
        before = [r for t, r in self.samples if t < t0][-1:]
        return round(max(xs + before, default=0) / 1e9, 3)

    def now(self) -> float:
        return round(rss_bytes() / 1e9, 3)


def git_commit() -> str:
    """HEAD of the checkout these scripts live in (read at start: the code the run imports)."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpus; load avg {os.getloadavg()}"
