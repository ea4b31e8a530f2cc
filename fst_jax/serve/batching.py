"""Batching: concurrent requests → one sampler call per group of compatible rows.

Requests are planned on the event loop into rows (one per choice) and a `GroupKey` — what a
sampler call holds fixed (prompt path, greedy/temperature, top_p, max-new-tokens bucket). One
worker thread owns the device: it waits for work, lets a window collect concurrent requests
(`WindowPolicy`: adaptive under load), then runs the oldest request's group with every queued
job of the same key (up to `max_batch` rows) as ONE backend call. Results go back to each
request's asyncio future.

Streaming backends (`backend.streaming`, the JAX backend with a chunk size) decode the call
chunk by chunk (`backend.run_stream`): after each chunk every streaming job receives its rows'
new tokens (`Job.next_chunk`), and the call ends at the first chunk boundary where every row is
satisfied — it stopped, it passed its request's max_tokens, its request hit a stop string
(`Job.mark_done`), or its client went away. So a client that disconnects mid-stream frees the
device at the next chunk boundary when no other row of the call still needs tokens; otherwise
its rows keep decoding with the call and are discarded (`stats["rows_discarded"]`).
A job whose client disconnects while it waits is dropped before dispatch
(`stats["rows_cancelled"]`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
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
    max_tokens: int | None = None  # the request's cut (None: the key's max_new)


@dataclasses.dataclass
class RowOut:
    """Generated ids (the stop token excluded) and whether the row stopped on EOS; in a
    streaming call's chunk (`run_stream`'s `on_chunk`), the ids that chunk added."""

    token_ids: list[int]
    finished: bool


class Backend(Protocol):
    """`run` decodes rows in one call. A streaming backend also has `streaming` True and
    `run_stream(key, rows, on_chunk)`: the same result, calling `on_chunk(deltas)` after each
    decoded chunk and ending early (rows cut where they are) when it returns False."""

    def run(self, key: GroupKey, rows: list[Row]) -> list[RowOut]: ...


@dataclasses.dataclass(frozen=True)
class WindowPolicy:
    """How long the worker lets concurrent requests gather before a sampler call.

    A fixed window loses under load: clients answered by one call send their next request a
    little later, and a short window leaves them for the call after (at 32 clients only half
    the batches filled with 25 ms). So the window scales with the call it precedes: after a
    call that served several requests it is `fraction` of that call's wall time (the clients'
    next requests arrive while a 10x longer call would otherwise run half-empty), bounded to
    [base_s, max_s]; after a call that served one request (a lone client) it is `base_s`.
    The wait ends early when `max_batch` rows are queued, and, once `base_s` has passed, when
    the rows expected back are queued (the rows the last call answered plus those that queued
    meanwhile, at most max_batch): the extension costs nothing when the clients are back.
    Below `base_s` it never ends early on that count, so batching is never worse than with the
    fixed `base_s` window (a burst after an idle spell still gathers for `base_s`).
    """

    base_s: float = 0.025
    fraction: float = 0.1
    max_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.base_s <= self.max_s or not 0 <= self.fraction <= 1:
            raise ValueError(
                f"batch window: need 0 <= base {self.base_s} <= max {self.max_s} (seconds) "
                f"and fraction {self.fraction} in [0, 1]"
            )

    def window(self, last_call_s: float | None, last_jobs: int) -> float:
        """The next call's window, given the last call's wall time and how many jobs it ran."""
        if last_call_s is None or last_jobs <= 1:
            return self.base_s
        return min(self.max_s, max(self.base_s, self.fraction * last_call_s))

    def ready(
        self, waited_s: float, window_s: float, queued: int, expected: int, max_batch: int
    ) -> bool:
        """Dispatch now? `queued` rows after `waited_s` of a `window_s` window; `expected`:
        the rows expected back (see the class doc)."""
        if waited_s >= window_s or queued >= max_batch:
            return True
        return waited_s >= self.base_s and queued >= expected


class EngineClosed(RuntimeError):
    pass


class Job:
    """One request's rows waiting for (or inside) a sampler call.

    A streaming job (`stream=True`) also receives each decoded chunk's per-row deltas
    (`next_chunk`) before its future resolves with the whole rows.
    """

    def __init__(
        self,
        key: GroupKey,
        rows: list[Row],
        loop: asyncio.AbstractEventLoop,
        stream: bool = False,
    ) -> None:
        self.key, self.rows, self.loop = key, rows, loop
        self.future: asyncio.Future = loop.create_future()
        self.chunks: asyncio.Queue | None = asyncio.Queue() if stream else None
        self.cancelled = False
        self.rows_done: set[int] = set()  # rows the client needs no more tokens for
        self.queued_at = time.perf_counter()

    def cancel(self) -> None:
        """The client went away: drop the job if not dispatched yet, else free its rows."""
        self.cancelled = True

    def mark_done(self, i: int) -> None:
        """Row i needs no more tokens (its request hit a stop string)."""
        self.rows_done.add(i)

    async def next_chunk(self) -> list[RowOut] | None:
        """The next chunk's deltas of this job's rows; None once the future is resolved."""
        assert self.chunks is not None, "not a streaming job"
        return await self.chunks.get()

    def _call_soon(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody is waiting
            self.loop.call_soon_threadsafe(fn)

    def _push(self, deltas: list[RowOut]) -> None:
        if self.chunks is not None:
            self._call_soon(lambda: self.chunks.put_nowait(deltas))

    def _resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        def put() -> None:
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)
            if self.chunks is not None:
                self.chunks.put_nowait(None)

        self._call_soon(put)


class BatchEngine:
    """The worker thread that turns queued jobs into batched `backend.run` calls."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int = 32,
        window_s: float = 0.025,
        max_queued_rows: int = 1024,
        window_fraction: float = 0.1,
        window_max_s: float = 0.5,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_batch < 1 or max_queued_rows < max_batch:
            raise ValueError(
                f"max_batch={max_batch} must be >= 1 and max_queued_rows={max_queued_rows} >= "
                "max_batch"
            )
        self.policy = WindowPolicy(window_s, window_fraction, max(window_s, window_max_s))
        self.backend = backend
        self.max_batch, self.max_queued_rows = max_batch, max_queued_rows
        self.streaming = bool(getattr(backend, "streaming", False))
        self._clock, self._sleep = clock, sleep  # injectable for deterministic tests
        self._last_call: tuple[float, int] | None = None  # (wall s, jobs) of the last call
        self._expected_rows = max_batch
        self.last_window: tuple[float, float] | None = None  # (window s, waited s) of the last
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

    def submit(
        self,
        key: GroupKey,
        rows: list[Row],
        loop: asyncio.AbstractEventLoop,
        stream: bool = False,
    ) -> Job:
        """Queue a job; raises OverflowError when `max_queued_rows` would be exceeded."""
        job = Job(key, rows, loop, stream)
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
            self._gather()
            taken = self._take()
            if taken is None:
                continue
            key, jobs = taken
            rows = [r for j in jobs for r in j.rows]
            t0 = self._clock()
            try:
                outs = self._call(key, jobs, rows)
            except Exception as e:
                self.stats["failed_calls"] += 1
                for j in jobs:
                    j._resolve(error=e)
                continue
            call_s = self._clock() - t0
            self._last_call = (call_s, len(jobs))
            self._expected_rows = min(self.max_batch, len(rows) + self.queued_rows)
            self.stats["calls"] += 1
            self.stats["rows"] += len(rows)
            self.stats["busy_ms"] += int(1000 * call_s)
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

    def _gather(self) -> None:
        """Let concurrent requests (and clients just answered by the last call) join this
        call: until `WindowPolicy.ready`."""
        last_s, last_jobs = self._last_call or (None, 0)
        window = self.policy.window(last_s, last_jobs)
        t0 = self._clock()
        while not self.policy.ready(
            self._clock() - t0, window, self.queued_rows, self._expected_rows, self.max_batch
        ):
            self._sleep(0.001)
        self.last_window = (window, self._clock() - t0)

    def _call(self, key: GroupKey, jobs: list[Job], rows: list[Row]) -> list[RowOut]:
        """One backend call; streaming backends decode chunk by chunk (see the module doc)."""
        if not self.streaming:
            return self.backend.run(key, rows)
        owner = [(j, i) for j in jobs for i in range(len(j.rows))]
        limit = [key.max_new if r.max_tokens is None else r.max_tokens for r in rows]
        got, done = [0] * len(rows), [False] * len(rows)

        def on_chunk(deltas: list[RowOut]) -> bool:
            k = 0
            for j in jobs:
                if not j.cancelled:
                    j._push(deltas[k : k + len(j.rows)])
                k += len(j.rows)
            self.stats["chunks"] += 1
            need = False
            for r, d in enumerate(deltas):
                got[r] += len(d.token_ids)
                done[r] = done[r] or d.finished
                j, i = owner[r]
                # > limit, not >=: whether the token after the cut is EOS sets finish_reason.
                satisfied = done[r] or got[r] > limit[r] or j.cancelled or i in j.rows_done
                need = need or not satisfied
            if not need and not all(done):
                self.stats["calls_ended_early"] += 1
            return need

        return self.backend.run_stream(key, rows, on_chunk)

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._hold.set()
        self._thread.join(timeout)
