"""Multi-controller JAX: process-group init, lockstep helpers and process-local batch sharding.

FST on a TPU pod is multi-controller SPMD: every host runs the same Python program (controller,
GEPA loop, verifiers) and drives its own chips, and jitted functions see one global mesh. This
module is the only place that talks to `jax.distributed`; the rest of the code asks it three
things: "am I the writer?" (`is_main_process`), "give everyone process 0's Python object"
(`broadcast_from_main`, e.g. the reflection LM's proposal) and "which rows of the global batch are
mine, and how do I turn them into / back from a global array" (`local_row_range`,
`global_batch_from_local`, `host_local_rows`).

Splitting each rollout batch's host work across processes (row blocks, the per-host sampler and
task wrappers) builds on these helpers in `fst_jax.rows`.

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
# Process-local batches <-> global arrays; gathers onto every host
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
