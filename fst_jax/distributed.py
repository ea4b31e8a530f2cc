"""Multi-controller JAX: process-group init, lockstep helpers and process-local batch sharding.

FST on a TPU pod is multi-controller SPMD: every host runs the same Python program (controller,
GEPA loop, verifiers) and drives its own chips, and jitted functions see one global mesh. This
module is the only place that talks to `jax.distributed`; the rest of the code asks it three
things: "am I the writer?" (`is_main_process`), "give everyone process 0's Python object"
(`broadcast_from_main`, e.g. the reflection LM's proposal) and "which rows of the global batch are
mine, and how do I turn them into / back from a global array" (`local_row_range`,
`global_batch_from_local`, `host_local_rows`).

Per-host rows: every rollout batch is laid out as one block per batch shard (`row_blocks`);
`RowShardedSampler` has each process sample and decode only its blocks and `RowShardedTask`
has it verify only those rows, and `gather_rows` (pickled objects over `allgather_objects`)
hands every process the whole batch's texts, verdicts and arrays, so N hosts each do 1/N of the
host work while still agreeing on every score.

How to call it (from `fst_jax.main` before anything touches a device):

    from fst_jax import distributed
    info = distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)

Resolution order for the process group: explicit arguments, then the environment variables set
by `launch/local.py` (`FST_COORDINATOR_ADDRESS`, `FST_NUM_PROCESSES`, `FST_PROCESS_ID`), then JAX's
own cluster auto-detection when libtpu is installed (Cloud TPU VMs: every worker of a pod slice
finds the coordinator through the metadata server). Nothing set → a plain single-process run.
On CPU the cross-process collectives use gloo (XLA:CPU has none by default).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import os
import pickle
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

ENV_COORDINATOR = "FST_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FST_NUM_PROCESSES"
ENV_PROCESS_ID = "FST_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """What `maybe_initialize` did; logged once by the caller."""

    initialized: bool  # True when a multi-process group is (now) running
    process_id: int
    num_processes: int
    coordinator_address: str | None
    how: str  # 'single-process' | 'explicit' | 'env' | 'auto' | 'already'


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"Environment variable {name}={raw!r} is not an integer; unset it or fix it."
        ) from None


def _validate(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    missing = [k for k, v in given.items() if v is None]
    if missing and len(missing) < 3:
        raise ValueError(
            f"Multi-process launch needs all of coordinator_address, num_processes and process_id; "
            f"missing {missing}. Pass all three (--coordinator_address=host:port --num_processes=N "
            f"--process_id=i) or none of them (single process / TPU-pod auto-detection)."
        )
    if missing:
        return
    assert num_processes is not None and process_id is not None and coordinator_address is not None
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be >= 1.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"coordinator_address={coordinator_address!r} must look like 'host:port' "
            f"(e.g. '10.0.0.2:8476'), the address of process 0."
        )


def _use_gloo_on_cpu() -> None:
    # Harmless on TPU/GPU (it only configures the CPU client); required for CPU-only multi-process.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = 300,
    auto_detect: bool = True,
) -> DistributedInfo:
    """Start the JAX process group if this run spans several processes; otherwise do nothing.

    Must run before any JAX computation or `jax.devices()` call in the process (JAX's rule).
    Idempotent: a second call returns the running group's info.
    """
    if jax.distributed.is_initialized():
        return DistributedInfo(
            True, jax.process_index(), jax.process_count(), coordinator_address, "already"
        )

    how = "explicit"
    if coordinator_address is None and num_processes is None and process_id is None:
        coordinator_address = os.environ.get(ENV_COORDINATOR) or None
        num_processes = _env_int(ENV_NUM_PROCESSES)
        process_id = _env_int(ENV_PROCESS_ID)
        how = "env"
    _validate(coordinator_address, num_processes, process_id)

    if coordinator_address is None:
        # Nothing explicit: only a Cloud TPU VM (libtpu installed) can auto-detect a pod slice.
        platforms = os.environ.get("JAX_PLATFORMS", "")
        tpu_possible = importlib.util.find_spec("libtpu") is not None and platforms in ("", "tpu")
        if not (auto_detect and tpu_possible):
            return DistributedInfo(False, 0, 1, None, "single-process")
        try:
            jax.distributed.initialize(initialization_timeout=initialization_timeout)
        except ValueError as e:  # no cluster found: a single TPU host without pod metadata
            log.info("No TPU pod detected (%s); running single-process.", e)
            return DistributedInfo(False, 0, 1, None, "single-process")
        return DistributedInfo(True, jax.process_index(), jax.process_count(), None, "auto")

    assert num_processes is not None and process_id is not None
    if num_processes == 1:
        return DistributedInfo(False, 0, 1, coordinator_address, "single-process")
    _use_gloo_on_cpu()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
        )
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise RuntimeError(
                "jax.distributed could not start because JAX was already used in this process "
                "(a jax.devices()/jit call ran first). Call fst_jax.distributed.maybe_initialize() "
                "at the very start of main, before building meshes or loading weights."
            ) from e
        raise
    log.info(
        "jax.distributed: process %d/%d, coordinator %s, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        coordinator_address,
        jax.local_device_count(),
        jax.device_count(),
    )
    return DistributedInfo(True, process_id, num_processes, coordinator_address, how)


def shutdown() -> None:
    """Leave the process group cleanly (lets the coordinator notice an orderly exit)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on the one process that writes metrics, GEPA files and logs (process 0)."""
    return jax.process_index() == 0


def broadcast_from_main(obj: Any) -> Any:
    """Return process 0's `obj` on every process (any picklable Python object).

    Used for decisions that must be identical everywhere but are made on one host — the
    reflection LM's proposed prompt, a sampled seed. Every process must call it at the same
    point (it is a collective); non-zero processes' `obj` is ignored (pass None).
    """
    if jax.process_count() == 1:
        return obj
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if is_main_process() else b""
    # Two collectives: the length (so every host allocates the same buffer), then the bytes.
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(payload), np.int32)))
    buf = np.zeros(n, np.uint8)
    if is_main_process():
        buf[:] = np.frombuffer(payload, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return obj if is_main_process() else pickle.loads(out.tobytes())


def sync_barrier(name: str) -> None:
    """Block until every process reaches the barrier `name` (no-op for one process).

    Use around process-0-only file writes that other hosts then read (e.g. the GEPA state).
    """
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def assert_same_across_processes(obj: Any, what: str) -> None:
    """Fail loudly when hosts disagree on `obj` (lockstep check for the GEPA loop / data stream).

    Compares a hash of the pickled object so any picklable value works.
    """
    if jax.process_count() == 1:
        return
    import hashlib

    digest = hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()
    mine = np.frombuffer(digest, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # [P, 32]
    bad = [p for p in range(everyone.shape[0]) if not np.array_equal(everyone[p], everyone[0])]
    if bad:
        raise RuntimeError(
            f"Processes {bad} disagree with process 0 on {what}: the hosts left lockstep. Make "
            f"every host derive it from the same seed/inputs (or broadcast it from process 0)."
        )


# ---------------------------------------------------------------------------------------------
# Process-local batches <-> global arrays
# ---------------------------------------------------------------------------------------------


def local_row_range(
    sharding: jax.sharding.Sharding, global_shape: Sequence[int]
) -> tuple[int, int]:
    """Rows [start, stop) of dimension 0 that this process's devices hold under `sharding`.

    The controller uses this to pick which problems it samples, verifies and rewards. Errors when
    the local rows are not one contiguous block (a mesh whose batch axis interleaves hosts),
    since the feeding code assumes contiguous slices.
    """
    global_shape = tuple(int(d) for d in global_shape)
    if not global_shape:
        raise ValueError("local_row_range needs an array with a batch dimension (rank >= 1).")
    spans = set()
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        s = index[0] if index else slice(None)
        start, stop, _ = s.indices(global_shape[0])
        spans.add((start, stop))
    spans_sorted = sorted(spans)
    start, stop = spans_sorted[0][0], spans_sorted[0][1]
    for a, b in spans_sorted[1:]:
        if a > stop:
            raise ValueError(
                f"This process holds non-contiguous batch rows {spans_sorted} under {sharding}; "
                f"order the mesh so each host's devices are adjacent along the batch axes "
                f"(fst_jax.sharding builds meshes that way)."
            )
        stop = max(stop, b)
    return start, stop


def global_batch_from_local(
    local: Any, sharding: jax.sharding.Sharding | Any, global_batch: int
) -> Any:
    """Assemble global jax.Arrays from each process's rows (a pytree of numpy arrays).

    `local` leaves are [rows_this_process, ...] — exactly `local_row_range(...)` of the global
    batch — and `sharding` is one sharding or a matching pytree. Every process calls this with
    its own rows; no host ever materialises the global batch.
    """
    leaves, treedef = jax.tree.flatten(local)
    shardings = (
        [sharding] * len(leaves)
        if isinstance(sharding, jax.sharding.Sharding)
        else treedef.flatten_up_to(sharding)
    )
    out = []
    for x, s in zip(leaves, shardings, strict=True):
        x = np.asarray(x)
        global_shape = (global_batch, *x.shape[1:])
        start, stop = local_row_range(s, global_shape)
        if x.shape[0] != stop - start:
            raise ValueError(
                f"Process {jax.process_index()} passed {x.shape[0]} rows but owns rows "
                f"[{start}, {stop}) of the global batch {global_batch} under {s}; slice the host "
                f"batch with local_row_range(sharding, global_shape) before calling."
            )
        out.append(jax.make_array_from_process_local_data(s, x, global_shape))
    return treedef.unflatten(out)


def host_to_global(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Host values that are IDENTICAL on every process (numpy leaves) → global jax.Arrays.

    For jitted functions with explicit `in_shardings`, which refuse numpy inputs in a
    multi-process run; each process materialises only its own shards (no communication).
    jax.Array leaves pass through; a no-op with one process. `sharding` applies to every leaf.
    """
    if jax.process_count() == 1:
        return tree

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return x
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def with_global_inputs(
    fn: Any, sharding: jax.sharding.Sharding, *, gather_outputs: bool = False
) -> Any:
    """Wrap a jitted `fn` so host (numpy) arguments become global arrays under `sharding`, and,
    with `gather_outputs`, its batch-sharded outputs come back to every host as numpy.

    How the controller keeps calling the trainer's jitted functions with host batches on a
    multi-process mesh (single process: returns `fn` unchanged).
    """
    if jax.process_count() == 1:
        return fn

    def wrapped(*args: Any) -> Any:
        out = fn(*host_to_global(args, sharding))
        return gather_to_all(out) if gather_outputs else out

    return wrapped


def host_local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, as numpy, in global row order.

    For host work on sampler output (decode text, verify, reward) without an all-gather. Rows
    replicated on several local devices appear once.
    """
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    pieces: dict[tuple[int, int], np.ndarray] = {}
    for shard in x.addressable_shards:
        s = shard.index[0] if shard.index else slice(None)
        start, stop, _ = s.indices(x.shape[0])
        if (start, stop) not in pieces:
            pieces[(start, stop)] = np.asarray(shard.data)
    keys = sorted(pieces)
    for (_, stop), (nxt, _) in itertools.pairwise(keys):
        if nxt != stop:
            raise ValueError(f"Local rows of the array are not contiguous: {keys}.")
    return np.concatenate([pieces[k] for k in keys], axis=0)


def gather_to_all(tree: Any) -> Any:
    """All-gather a pytree of (global or per-process) arrays onto every host as numpy.

    Global jax.Arrays come back whole; per-process numpy leaves are stacked along a new axis 0
    ordered by process. Use for metrics and GEPA scores that every host must agree on.
    """
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=False))

    return jax.tree.map(one, tree)


# ---------------------------------------------------------------------------------------------
# Per-host rows: each process samples and verifies only its share; results gathered as objects
# ---------------------------------------------------------------------------------------------


def allgather_objects(obj: Any) -> list[Any]:
    """Every process's `obj` (any picklable Python value), ordered by process index, on every
    process. For host results that are not arrays: completion texts, verdicts, feedback.

    A collective: every process must call it at the same point.
    """
    if jax.process_count() == 1:
        return [obj]
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    # Two collectives: the lengths (so every host pads to the same buffer), then the bytes.
    lengths = np.asarray(
        multihost_utils.process_allgather(np.asarray([payload.size], np.int32))
    ).reshape(-1)
    buf = np.zeros(int(lengths.max()), np.uint8)
    buf[: payload.size] = payload
    everyone = np.asarray(multihost_utils.process_allgather(buf))  # [P, max_len]
    return [pickle.loads(everyone[p, : lengths[p]].tobytes()) for p in range(len(lengths))]


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


class RowShardedSampler:
    """A `fst_jax.sampling.Sampler` whose batches are split across processes by `row_blocks`.

    Every process calls `sample` with the same whole batch (the controller is lockstep); each
    samples and decodes only its rows on its devices, and the results are gathered so every
    process returns the whole batch as host arrays — the RL batch, GEPA scores and validation
    metrics are then identical everywhere. On one process this is the sampler on the mesh's
    batch shards. `arrays=False` gathers only texts and per-row scalars (GEPA evaluations and
    reflection replies need no token arrays); the [B, S] arrays are trimmed to the widest row
    rounded up to `trim_to` columns (their tail is all padding; few distinct shapes).
    """

    def __init__(self, sampler: Any, rows: jax.sharding.Sharding, trim_to: int = 128) -> None:
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
        from fst_jax.sampling import Rollouts

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
        return Rollouts(
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
