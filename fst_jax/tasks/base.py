"""Task protocol: examples from named splits, verification into a reward + GEPA feedback.

Why this shape: the controller only ever needs (a) chat-ready question texts with ids, and
(b) a function completion -> (reward, status, feedback). Rewards drive the slow (RL) update;
feedback strings only feed GEPA's reflection. Verification must never raise inside the
training loop, so `Task.verify` wraps every task-specific verifier and turns bad completions
(empty, enormous, not UTF-8) and verifier bugs into a zero-reward verdict with a status.

Splits are assigned by hashing the question text into buckets, so they are deterministic and
disjoint by construction (an identical question always lands in the same split), and
`check_disjoint` re-verifies this on the produced examples.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import hashlib
import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fst_jax.registry import Registry

SPLITS = ("train", "validation", "test")
# Hash buckets (out of 1000) per split for tasks without an official split.
_SPLIT_BUCKETS = {"validation": (0, 50), "test": (50, 100), "train": (100, 1000)}
MAX_COMPLETION_CHARS = 200_000


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem: `question` is the user-turn text; `gold` is whatever the verifier needs."""

    id: str
    question: str
    gold: Any
    metadata: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "question": self.question,
            "gold": self.gold,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, row: dict, where: str = "row") -> Example:
        for field in ("id", "question", "gold"):
            if field not in row:
                raise ValueError(
                    f"{where}: missing field {field!r} (have {sorted(row)}); every example row "
                    "needs 'id', 'question', 'gold' and optionally 'metadata'."
                )
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise ValueError(f"{where}: field 'question' must be a non-empty string.")
        return cls(str(row["id"]), row["question"], row["gold"], dict(row.get("metadata") or {}))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """reward in [0, 1]; status is a short machine-readable word; feedback is for GEPA only."""

    reward: float
    status: str
    feedback: str

    def __post_init__(self):
        if not 0.0 <= float(self.reward) <= 1.0:
            raise ValueError(f"Verdict reward must be in [0, 1], got {self.reward}.")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def split_of(question: str) -> str:
    """Deterministic split of a question: sha256 bucket -> train / validation / test."""
    bucket = int(text_hash(question)[:8], 16) % 1000
    for split, (lo, hi) in _SPLIT_BUCKETS.items():
        if lo <= bucket < hi:
            return split
    raise AssertionError(bucket)


def example_id(task_name: str, question: str) -> str:
    return f"{task_name}-{text_hash(question)[:16]}"


def check_split_name(split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        near = difflib.get_close_matches(split, allowed, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"Unknown split {split!r}; use one of {list(allowed)}.{hint}")


def check_disjoint(splits: dict[str, Sequence[Example]]) -> None:
    """Raise if any question text (by sha256) appears in two splits."""
    seen: dict[str, str] = {}
    for name, exs in splits.items():
        for ex in exs:
            h = text_hash(ex.question)
            if h in seen and seen[h] != name:
                raise ValueError(
                    f"Example {ex.id} appears in splits {seen[h]!r} and {name!r}; splits must be "
                    "disjoint (deduplicate the source or let split_of() assign splits)."
                )
            seen[h] = name


def sanitize_completion(completion: Any) -> tuple[str | None, Verdict | None]:
    """Turn a raw completion into text, or into a zero-reward verdict explaining the problem."""
    if completion is None:
        return None, Verdict(0.0, "empty", "The response was empty (None).")
    if isinstance(completion, bytes | bytearray):
        try:
            completion = bytes(completion).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, Verdict(0.0, "invalid_encoding", f"The response is not valid UTF-8 ({e}).")
    if not isinstance(completion, str):
        return None, Verdict(
            0.0, "invalid_type", f"The response must be a string, got {type(completion).__name__}."
        )
    try:
        completion.encode("utf-8")
    except UnicodeEncodeError as e:
        return None, Verdict(0.0, "invalid_encoding", f"The response is not valid UTF-8 ({e}).")
    if not completion.strip():
        return None, Verdict(0.0, "empty", "The response was empty; write an answer.")
    if len(completion) > MAX_COMPLETION_CHARS:
        return None, Verdict(
            0.0,
            "too_long",
            f"The response has {len(completion)} characters (limit {MAX_COMPLETION_CHARS}); "
            "answer concisely.",
        )
    return completion, None


class Task:
    """Base class. Subclasses set `name`, `seed_prompt`, implement `_load_split` and `_verify`."""

    name: str = "task"
    seed_prompt: str = ""
    splits: tuple[str, ...] = SPLITS
    # verify_batch runs in a process pool for CPU-heavy verifiers; sandboxed tasks use threads
    # (each verification already runs in its own sandbox process).
    parallel: str = "none"  # "none" | "process" | "thread"
    # Attributes not sent to verification workers (loaded rows; rebuilt lazily if needed).
    _transient: tuple[str, ...] = ()

    def __init__(self):
        self._cache: dict[str, list[Example]] = {}
        self._pool: concurrent.futures.Executor | None = None

    # --- examples -------------------------------------------------------------------------
    def examples(self, split: str = "train") -> list[Example]:
        """Examples of a split; cached, deterministic, and disjoint from the other splits."""
        check_split_name(split, self.splits)
        if split not in self._cache:
            exs = list(self._load_split(split))
            ids = [e.id for e in exs]
            if len(set(ids)) != len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise ValueError(f"{self.name}/{split}: duplicate example id {dup!r}.")
            self._cache[split] = exs
        return list(self._cache[split])

    def _load_split(self, split: str) -> Sequence[Example]:
        raise NotImplementedError

    # --- verification ---------------------------------------------------------------------
    def verify(self, example: Example, completion: Any) -> Verdict:
        """Score one completion. Never raises: failures become zero-reward verdicts."""
        text, bad = sanitize_completion(completion)
        if bad is not None:
            return bad
        try:
            verdict = self._verify(example, text)
        except RecursionError:
            return Verdict(0.0, "error", "The answer is nested too deeply to check.")
        except Exception as e:  # a verifier bug must not kill the training loop
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            return Verdict(0.0, "verifier_error", f"Internal verifier error: {tb}")
        if not isinstance(verdict, Verdict):
            return Verdict(0.0, "verifier_error", f"Verifier returned {type(verdict).__name__}.")
        return verdict

    def _verify(self, example: Example, completion: str) -> Verdict:
        raise NotImplementedError

    def verify_batch(
        self, examples: Sequence[Example], completions: Sequence[Any], workers: int | None = None
    ) -> list[Verdict]:
        """Verify many completions; parallel worker processes/threads where it pays off."""
        if len(examples) != len(completions):
            raise ValueError(
                f"verify_batch got {len(examples)} examples but {len(completions)} completions; "
                "pass one example per completion (repeat examples for multiple samples)."
            )
        workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        if self.parallel == "none" or workers <= 1 or len(examples) < 4:
            return [self.verify(e, c) for e, c in zip(examples, completions)]
        # Screen completions here, so only plain strings cross the process boundary.
        out: list[Verdict | None] = []
        todo: list[int] = []
        for i, c in enumerate(completions):
            _, bad = sanitize_completion(c)
            out.append(bad)
            if bad is None:
                todo.append(i)
        pool = self._get_pool(workers)
        fn = self.verify if self.parallel == "thread" else _worker_verify
        exs, texts = [examples[i] for i in todo], [completions[i] for i in todo]
        texts = [t.decode("utf-8") if isinstance(t, bytes | bytearray) else t for t in texts]
        try:
            done = list(pool.map(fn, exs, texts, chunksize=1))
        except BrokenProcessPool:  # a worker died (e.g. killed for memory): finish serially
            self.close()
            done = [self.verify(e, c) for e, c in zip(exs, texts)]
        for i, v in zip(todo, done):
            out[i] = v
        assert all(v is not None for v in out)
        return out  # type: ignore[return-value]

    def _get_pool(self, workers: int) -> concurrent.futures.Executor:
        if self._pool is None:
            if self.parallel == "thread":
                self._pool = concurrent.futures.ThreadPoolExecutor(workers)
            else:
                # spawn: the caller may hold JAX threads, which fork would corrupt.
                ctx = multiprocessing.get_context("spawn")
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    workers, mp_context=ctx, initializer=_init_worker, initargs=(self,)
                )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None
        state["_cache"] = {}  # workers only verify; examples are regenerated on demand
        for name in self._transient:
            state[name] = None
        return state

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


_WORKER_TASK: Task | None = None


def _init_worker(task: Task) -> None:
    global _WORKER_TASK
    _WORKER_TASK = task


def _worker_verify(example: Example, completion: Any) -> Verdict:
    assert _WORKER_TASK is not None, "worker used before initialisation"
    return _WORKER_TASK.verify(example, completion)


# --- registry -------------------------------------------------------------------------------
_REGISTRY: Registry[Callable[..., Task]] = Registry("task")


def register_task(name: str) -> Callable:
    return _REGISTRY.register(name)


def list_tasks() -> list[str]:
    return _REGISTRY.names()


def build_registered_task(name: str, **kwargs) -> Task:
    """Build a task by registry name (`fst_jax.tasks.get_task` also takes subset files)."""
    factory = _REGISTRY.get(name)
    try:
        task = factory(**kwargs)
    except TypeError as e:
        raise TypeError(f"get_task({name!r}, ...): {e}") from e
    task.spec = (name, dict(kwargs))  # lets subset files rebuild the same task
    return task
