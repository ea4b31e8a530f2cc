"""Per-host rows: each process samples, decodes and verifies only its share of every batch.

On a multi-host mesh the host work of a rollout batch (text decoding, verification: code
execution, math parsing) grows with the batch, so it must split across hosts like the device work.
This module lays a batch out as one block per batch shard (`row_blocks` → `RowBlocks`), reads a
process's rows off a global array (`rows_of`) and hands every process the whole batch again
(`gather_rows`, pickled objects over `distributed.allgather_objects`). `RowShardedSampler` and
`RowShardedTask` wrap a sampler and a task so the controller keeps calling them with the whole
batch: N hosts each do 1/N of the host work while still agreeing on every score.

Why its own module: it sits between `fst_jax.distributed` (process group, lockstep, generic
gathers; imported here) and its users (`fst_jax.sampling.Sampler` lays out its sharded batches
with `row_blocks` / `rows_of`; the controller wraps its sampler and tasks). It imports neither
sampling nor tasks, so the imports stay acyclic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fst_jax.distributed import allgather_objects, local_row_range


@dataclasses.dataclass(frozen=True)
class RowBlocks:
    """Layout of an n-row host batch over the `num_blocks` batch shards of a sharding.

    Block j takes the real rows [j*chunk, (j+1)*chunk) ∩ [0, n) (chunk = ceil(n / num_blocks))
    and is padded to `block_len` rows, so the global array has num_blocks × block_len rows. A
    process owns the blocks [first, last) its devices hold, i.e. the real rows [lo, hi).
    Padding per block (not at the end of the batch) means a device sees the same rows, in the
    same order, whether its block's neighbours live in this process or another — which is why a
    run on N processes reproduces the 1-process run on the same mesh bit for bit.
    """

    n: int
    num_blocks: int
    chunk: int
    block_len: int
    first: int
    last: int

    @property
    def lo(self) -> int:
        return min(self.first * self.chunk, self.n)

    @property
    def hi(self) -> int:
        return min(self.last * self.chunk, self.n)

    @property
    def global_rows(self) -> int:
        return self.num_blocks * self.block_len

    @property
    def local_padded_range(self) -> tuple[int, int]:
        """Rows [start, stop) of the padded global array that this process's blocks occupy."""
        return self.first * self.block_len, self.last * self.block_len

    def pad_local(self, rows: Any, fill: Any) -> np.ndarray:
        """This process's real rows (x[lo:hi]) → its padded blocks, filler rows = `fill`."""
        rows = np.asarray(rows)
        if rows.shape[0] != self.hi - self.lo:
            raise ValueError(
                f"pad_local got {rows.shape[0]} rows; this process owns rows [{self.lo}, {self.hi})."
            )
        out = np.full(
            ((self.last - self.first) * self.block_len, *rows.shape[1:]), fill, rows.dtype
        )
        for j in range(self.first, self.last):
            a, b = min(j * self.chunk, self.n), min((j + 1) * self.chunk, self.n)
            dst = (j - self.first) * self.block_len
            out[dst : dst + b - a] = rows[a - self.lo : b - self.lo]
        return out

    def unpad_local(self, padded: Any) -> np.ndarray:
        """Inverse of `pad_local`: this process's padded blocks → its real rows, in order."""
        padded = np.asarray(padded)
        pieces = []
        for j in range(self.first, self.last):
            a, b = min(j * self.chunk, self.n), min((j + 1) * self.chunk, self.n)
            src = (j - self.first) * self.block_len
            pieces.append(padded[src : src + b - a])
        return np.concatenate(pieces, axis=0)

    def to_global(self, padded: Any, sharding: jax.sharding.Sharding) -> jax.Array:
        """This process's padded blocks → the global [global_rows, ...] array under `sharding`."""
        padded = np.asarray(padded)
        return jax.make_array_from_process_local_data(
            sharding, padded, (self.global_rows, *padded.shape[1:])
        )


def num_batch_blocks(sharding: jax.sharding.Sharding) -> int:
    """How many distinct row blocks `sharding` splits a leading axis into."""
    probe = len(sharding.device_set)
    return probe // int(sharding.shard_shape((probe,))[0])


def row_blocks(n: int, sharding: jax.sharding.Sharding, bucket: Any = None) -> RowBlocks:
    """The `RowBlocks` of an n-row batch under `sharding` for this process.

    `bucket(rows) -> padded rows` rounds the block length up (the sampler's static batch
    buckets); default: no rounding. Every process computes the same layout from (n, sharding).
    """
    if n < 1:
        raise ValueError(f"row_blocks needs at least one row, got n={n}.")
    nb = num_batch_blocks(sharding)
    chunk = -(-n // nb)
    block_len = int(bucket(chunk)) if bucket is not None else chunk
    if block_len < chunk:
        raise ValueError(f"bucket({chunk}) returned {block_len} < {chunk} rows.")
    first, last = local_row_range(sharding, (nb,))
    return RowBlocks(n, nb, chunk, block_len, first, last)


def rows_of(x: jax.Array, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a (possibly multi-process) array, read from this process's shards.

    Works for batch-sharded and replicated layouts alike; errors when some of those rows live
    only on other processes.
    """
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))[start:stop]
    out: np.ndarray | None = None
    have = np.zeros(stop - start, bool)
    for shard in x.addressable_shards:
        idx = shard.index or (slice(None),)
        if any(sl.indices(d)[:2] != (0, d) for sl, d in zip(idx[1:], x.shape[1:])):
            continue  # split along a trailing axis: not a whole-row shard
        a, b, _ = idx[0].indices(x.shape[0])
        a2, b2 = max(a, start), min(b, stop)
        if a2 >= b2 or have[a2 - start : b2 - start].all():
            continue
        data = np.asarray(shard.data)
        if out is None:
            out = np.empty((stop - start, *data.shape[1:]), data.dtype)
        out[a2 - start : b2 - start] = data[a2 - a : b2 - a]
        have[a2 - start : b2 - start] = True
    if out is None or not have.all():
        raise ValueError(
            f"Rows [{start}, {stop}) of an array sharded as {x.sharding} are not all held by "
            f"process {jax.process_index()}; reshard it with a batch sharding first."
        )
    return out


def gather_rows(fields: dict[str, Any], lo: int, hi: int, n: int) -> dict[str, Any]:
    """Each process holds rows [lo, hi) of an n-row batch → every process gets all n rows.

    `fields` maps names to lists (texts, verdicts) or numpy arrays with a leading row axis;
    lists come back as lists, arrays as arrays (trailing dims must agree across processes).
    Processes that hold the same rows (replicas along a non-batch mesh axis) may both send them.
    One collective for all fields.
    """
    for name, v in fields.items():
        if len(v) != hi - lo:
            raise ValueError(
                f"gather_rows: field {name!r} has {len(v)} rows but this process holds rows "
                f"[{lo}, {hi}) ({hi - lo} rows); pass exactly this process's rows."
            )
    parts = allgather_objects((lo, hi, fields)) if jax.process_count() > 1 else [(lo, hi, fields)]
    covered = np.zeros(n, bool)
    for plo, phi, _ in parts:
        covered[plo:phi] = True
    if not covered.all():
        missing = np.flatnonzero(~covered)
        raise RuntimeError(
            f"gather_rows: rows {missing[:8].tolist()}{'...' if missing.size > 8 else ''} of the "
            f"{n}-row batch came from no process; the processes disagree on the batch layout "
            f"(compute it with row_blocks(n, sharding) on every process)."
        )
    out: dict[str, Any] = {}
    for name, v in fields.items():
        if isinstance(v, np.ndarray):
            full = np.empty((n, *v.shape[1:]), v.dtype)
            for plo, phi, f in parts:
                full[plo:phi] = f[name]
            out[name] = full
        else:
            rows: list[Any] = [None] * n
            for plo, phi, f in parts:
                rows[plo:phi] = list(f[name])
            out[name] = rows
    return out


class RowShardedSampler:
    """A `fst_jax.sampling.Sampler` whose batches are split across processes by `row_blocks`.

    Every process calls `sample` with the same whole batch (the controller is lockstep); each
    samples and decodes only its rows on its devices, and the results are gathered so every
    process returns the whole batch as host arrays — the RL batch, GEPA scores and validation
    metrics are then identical everywhere. On one process this is the sampler on the mesh's
    batch shards. `arrays=False` gathers only texts and per-row scalars (GEPA evaluations and
    reflection replies need no token arrays); the [B, S] arrays are trimmed to the widest row
    rounded up to `trim_to` columns (their tail is all padding; every distinct width compiles the
    train step once, so the rounding trades padded train compute against compilations).
    """

    def __init__(self, sampler: Any, rows: jax.sharding.Sharding, trim_to: int = 64) -> None:
        self.sampler, self.rows, self.trim_to = sampler, rows, trim_to

    def sample(
        self,
        params: Any,
        bank: Any,
        prompt_idx: Any,
        tasks: Any,
        key: jax.Array,
        sampling: Any,
        *,
        row_ids: Any = None,
        arrays: bool = True,
    ) -> Any:
        n = len(prompt_idx)
        out = self.sampler.sample(
            params, bank, prompt_idx, tasks, key, sampling, row_ids=row_ids, sharding=self.rows
        )
        lo, hi = out.row_range
        scalars = {
            "texts": out.texts,
            "prompt_lengths": np.asarray(out.prompt_lengths),
            "completion_lengths": np.asarray(out.completion_lengths),
            "finished": np.asarray(out.finished),
        }
        g = gather_rows(scalars, lo, hi, n)
        wide: dict[str, Any] = dict.fromkeys(
            ("tokens", "positions", "completion_mask", "logps", "raw_logps", "completion_tokens")
        )
        if arrays:
            width = np.asarray(out.tokens).shape[1]
            used = int((g["prompt_lengths"] + g["completion_lengths"]).max())
            keep = (
                width if not self.trim_to else min(width, -(-used // self.trim_to) * self.trim_to)
            )
            local = {k: np.asarray(getattr(out, k)) for k in wide}
            local = {k: v if k == "completion_tokens" else v[:, :keep] for k, v in local.items()}
            wide = gather_rows(local, lo, hi, n)
        # The sampler's own result type, now holding the whole batch (row_range None = all rows).
        return dataclasses.replace(
            out,
            row_range=None,
            texts=g["texts"],
            prompt_lengths=g["prompt_lengths"],
            completion_lengths=g["completion_lengths"],
            finished=g["finished"],
            **wide,
        )

    def __getattr__(self, name: str) -> Any:  # tokenizer, buckets, pad_tasks, encode_tasks ...
        return getattr(self.sampler, name)


class RowShardedTask:
    """A task whose `verify_batch` verifies only this process's rows (`row_blocks` of the batch,
    the rows this process sampled) and gathers the verdicts, so every process gets them all.

    Verification (code execution, math parsing) is host CPU work that grows with the batch; split
    this way, N hosts each do 1/N of it. Everything else is the wrapped task's.
    """

    def __init__(self, task: Any, rows: jax.sharding.Sharding) -> None:
        self.task, self.rows = task, rows

    def verify_batch(self, examples: Sequence[Any], completions: Sequence[Any], **kw: Any) -> list:
        n = len(examples)
        if n != len(completions):
            raise ValueError(
                f"verify_batch got {n} examples but {len(completions)} completions; pass one "
                "example per completion."
            )
        if n == 0:
            return []
        plan = row_blocks(n, self.rows)
        lo, hi = plan.lo, plan.hi
        mine = (
            list(self.task.verify_batch(list(examples[lo:hi]), list(completions[lo:hi]), **kw))
            if hi > lo
            else []
        )
        return gather_rows({"v": mine}, lo, hi, n)["v"]

    def __getattr__(self, name: str) -> Any:  # examples, verify, seed_prompt, close, name ...
        return getattr(self.task, name)
