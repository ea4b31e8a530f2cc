"""Batching: concurrent requests → one sampler call per group of compatible rows.

Requests are planned on the event loop into rows (one per choice) and a `GroupKey` — what a
sampler call holds fixed (prompt path, greedy/temperature, top_p, max-new-tokens bucket). One
worker thread owns the device: it waits for work, lets a short window collect concurrent
requests, then runs the oldest request's group with every queued job of the same key (up to
`max_batch` rows) as ONE `backend.run` call. Results go back to each request's asyncio future.

A client that disconnects while its job waits is dropped before dispatch, so its rows never
occupy a sampler call (counted in `stats["rows_cancelled"]`); a job already inside a call
finishes with it (the call is one jitted decode loop) and its rows are discarded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class GroupKey:
    """What one sampler call holds fixed; jobs with equal keys share a call."""

    path: str  # "bank" (context by bank slot) | "raw" (whole rendered prompt as tokens)
    greedy: bool
    temperature: float
    top_p: float
    max_new: int  # generation buffer (a bucket >= every row's max_tokens)


@dataclasses.dataclass
class Row:
    """One choice of one request: its task tokens, its bank slot, its sampling row id."""

    task_ids: list[int]
    slot: int
    row_id: int


@dataclasses.dataclass
class RowOut:
    """Generated ids (the stop token excluded) and whether the row stopped on EOS."""

    token_ids: list[int]
    finished: bool


class Backend(Protocol):
    def run(self, key: GroupKey, rows: list[Row]) -> list[RowOut]: ...


class EngineClosed(RuntimeError):
    pass


class Job:
    """One request's rows waiting for (or inside) a sampler call."""

    def __init__(self, key: GroupKey, rows: list[Row], loop: asyncio.AbstractEventLoop) -> None:
        self.key, self.rows, self.loop = key, rows, loop
        self.future: asyncio.Future = loop.create_future()
        self.cancelled = False
        self.queued_at = time.perf_counter()

    def cancel(self) -> None:
        """The client went away: drop the job if it has not been dispatched yet."""
        self.cancelled = True

    def _resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        def put() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody is waiting
            self.loop.call_soon_threadsafe(put)


class BatchEngine:
    """The worker thread that turns queued jobs into batched `backend.run` calls."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int = 32,
        window_s: float = 0.025,
        max_queued_rows: int = 1024,
    ) -> None:
        if max_batch < 1 or max_queued_rows < max_batch or window_s < 0:
            raise ValueError(
                f"max_batch={max_batch} must be >= 1, max_queued_rows={max_queued_rows} >= "
                f"max_batch and window_s={window_s} >= 0"
            )
        self.backend = backend
        self.max_batch, self.window_s, self.max_queued_rows = max_batch, window_s, max_queued_rows
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._hold = threading.Event()
        self._hold.set()
        self._closed = False
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._work, name="fst-serve-sampler", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        with self._cv:
            return sum(len(j.rows) for j in self._queue if not j.cancelled)

    def submit(self, key: GroupKey, rows: list[Row], loop: asyncio.AbstractEventLoop) -> Job:
        """Queue a job; raises OverflowError when `max_queued_rows` would be exceeded."""
        job = Job(key, rows, loop)
        with self._cv:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            queued = sum(len(j.rows) for j in self._queue if not j.cancelled)
            if queued + len(rows) > self.max_queued_rows:
                raise OverflowError(
                    f"{queued} rows already queued (limit {self.max_queued_rows}); retry later"
                )
            self._queue.append(job)
            self._cv.notify()
        return job

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Dispatch nothing while inside (maintenance, tests); queued jobs wait."""
        self._hold.clear()
        try:
            yield
        finally:
            self._hold.set()
            with self._cv:
                self._cv.notify()

    def _take(self) -> tuple[GroupKey, list[Job]] | None:
        """The oldest live job's key and every queued job with that key that fits one call."""
        with self._cv:
            live = [j for j in self._queue if not j.cancelled]
            for j in self._queue:
                if j.cancelled:
                    self.stats["rows_cancelled"] += len(j.rows)
                    self.stats["jobs_cancelled"] += 1
            self._queue = collections.deque(live)
            if not live:
                return None
            key, batch, n = live[0].key, [], 0
            for j in live:
                if j.key == key and n + len(j.rows) <= max(self.max_batch, len(live[0].rows)):
                    batch.append(j)
                    n += len(j.rows)
            taken = set(map(id, batch))
            self._queue = collections.deque(j for j in live if id(j) not in taken)
            return key, batch

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._queue:
                    self._cv.wait(timeout=0.5)
                if self._closed:
                    break
            while not self._hold.wait(0.5) and not self._closed:
                pass
            # Let concurrent requests (and clients just answered by the last call) join this
            # call: up to `window_s`, or until a full batch is queued.
            deadline = time.perf_counter() + self.window_s
            while time.perf_counter() < deadline and self.queued_rows < self.max_batch:
                time.sleep(0.001)
            taken = self._take()
            if taken is None:
                continue
            key, jobs = taken
            rows = [r for j in jobs for r in j.rows]
            t0 = time.perf_counter()
            try:
                outs = self.backend.run(key, rows)
            except Exception as e:
                self.stats["failed_calls"] += 1
                for j in jobs:
                    j._resolve(error=e)
                continue
            self.stats["calls"] += 1
            self.stats["rows"] += len(rows)
            self.stats["busy_ms"] += int(1000 * (time.perf_counter() - t0))
            i = 0
            for j in jobs:
                part, i = outs[i : i + len(j.rows)], i + len(j.rows)
                if j.cancelled:
                    self.stats["rows_discarded"] += len(j.rows)
                j._resolve(part)
        with self._cv:
            for j in self._queue:
                j._resolve(error=EngineClosed("the server is shutting down"))
            self._queue.clear()

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._hold.set()
        self._thread.join(timeout)
