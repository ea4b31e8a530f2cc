"""Checkpoints: slow weights, optimiser, RNG and the fast weights in one atomic orbax step.

One checkpoint step holds two orbax items:
  * ``state`` (``StandardSave``): the array pytree — params, optimiser state, RNG key data and
    anything else on device. Restored straight into the target shardings.
  * ``meta`` (``JsonSave``): everything host-side — step, data-iterator position, the GEPA
    population / score tables / reflection cache (JSON from ``fst_jax.gepa``), the metrics-file
    offset, and the config with its fingerprint.

Orbax writes a step into a temporary directory and renames it when complete, so a crash or a
full disk mid-save never leaves a half-written step that ``latest_step`` would pick; we also
remove the temporary directory so the next save starts clean. ``max_to_keep`` prunes old steps.

A workdir that already holds checkpoints of a *different* run (other config fingerprint) is
refused unless ``allow_foreign=True`` — resuming someone else's run by accident is silent
corruption of both.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fst_jax import errors as _errors
from fst_jax import paths

CHECKPOINT_DIR = "checkpoints"
# Config keys that may change between a run and its resumption (length, logging, paths).
RESUMABLE_KEYS = (
    "num_cycles",
    "workdir",
    "resume",
    "checkpoint.keep",
    "checkpoint.every_cycles",
    "log_every",
    "progress",
    "eval.every_cycles",
    "summary",
    "sft.steps",
    "sft.eval_every",
    "sft.checkpoint_every",
    "sft.export",
    "metrics",  # where metrics are mirrored (W&B) never changes what a run computes
    # the sampler's cross-call context KV cache: memory/speed only, same samples (its tests)
    "sampling.context_cache_slots",
    "compile_cache_dir",  # where compiled programs are kept: time only, same programs
)


# A checkpoint could not be written, read, or belongs to another run (shared with the model
# loaders, so fst-train reports both as one line).
CheckpointError = _errors.CheckpointError


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings into ``{"a.b": value}`` with JSON-builtin values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, tuple | list):
            flat[name] = [v if isinstance(v, int | float | str | bool) else str(v) for v in value]
        elif isinstance(value, int | float | str | bool) or value is None:
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def config_fingerprint(flat_config: Mapping[str, Any]) -> str:
    """Hash of the keys that define a run (``RESUMABLE_KEYS`` excluded)."""
    kept = {k: v for k, v in flat_config.items() if not _resumable(k)}
    blob = json.dumps(kept, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = sorted(k for k in set(a) | set(b) if not _resumable(k) and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} (checkpoint) vs {b.get(k)!r} (now)" for k in keys]


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a live pytree: the restore target."""

    def one(x):
        x = x if hasattr(x, "sharding") else jax.numpy.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

    return jax.tree.map(one, tree)


class Checkpointer:
    """orbax ``CheckpointManager`` for one run's workdir.

    Args:
      workdir: the run directory or URI (gs://...); checkpoints live in
        ``<workdir>/checkpoints``.
      flat_config: the run's flattened config (see :func:`flatten_config`).
      max_to_keep: keep-N policy.
      allow_foreign: accept checkpoints whose config fingerprint differs (explicit resume of
        another run's checkpoints, e.g. after editing a hyper-parameter on purpose).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        flat_config: Mapping[str, Any],
        *,
        max_to_keep: int = 3,
        allow_foreign: bool = False,
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {max_to_keep}")
        self.directory = paths.workdir_path(workdir) / CHECKPOINT_DIR
        try:
            paths.require_checkpoint_support(self.directory)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        self.flat_config = dict(flat_config)
        self.fingerprint = config_fingerprint(self.flat_config)
        self._cleanup_tmp()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "meta"),
        )
        latest = self.latest_step()
        if latest is not None:
            meta = self.restore_meta(latest)
            theirs = meta.get("fingerprint")
            if theirs != self.fingerprint and not allow_foreign:
                diff = _diff(meta.get("config", {}), self.flat_config)
                raise CheckpointError(
                    f"{self.directory} holds checkpoints of another run (config fingerprint "
                    f"{theirs} vs {self.fingerprint}; differing keys: {'; '.join(diff) or 'n/a'}). "
                    "Use a fresh --workdir, or pass --config.resume=force to continue those "
                    "checkpoints with the new config"
                )

    def _cleanup_tmp(self) -> None:
        """Removes half-written steps left by a crash (orbax never exposes them as steps)."""
        if jax.process_index() != 0 or not self.directory.exists():
            return
        for p in self.directory.iterdir():
            if ".orbax-checkpoint-tmp" in p.name:
                with contextlib.suppress(OSError):  # a concurrent cleanup got there first
                    p.rmtree()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Saves ``state`` (array pytree) and ``meta`` (JSON) as one step, atomically.

        On failure (e.g. ENOSPC) the partial step is removed, earlier steps stay valid, and a
        :class:`CheckpointError` says what happened.
        """
        meta = dict(meta)
        meta.update(step=int(step), fingerprint=self.fingerprint, config=self.flat_config)
        try:
            json.dumps(meta)
        except TypeError as e:
            raise CheckpointError(f"checkpoint meta is not JSON-serialisable: {e}") from e
        threads_before = set(threading.enumerate())
        self._cleanup_tmp()  # leftovers of an earlier failed save in this process
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self._manager.wait_until_finished()
        except Exception as e:
            # orbax's writer threads may still be running for the failed step; let them finish
            # before removing their directory.
            for t in set(threading.enumerate()) - threads_before:
                t.join(timeout=30)
            self._cleanup_tmp()
            self._manager.reload()
            hint = (
                "the disk is full; free space or point --workdir elsewhere"
                if isinstance(e, OSError) and e.errno == errno.ENOSPC
                else "check the workdir's file system"
            )
            raise CheckpointError(
                f"saving checkpoint step {step} to {self.directory} failed ({e!r}); "
                f"the previous checkpoint (step {self.latest_step()}) is intact. Fix: {hint}"
            ) from e

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._resolve(step)
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out.meta)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores (state, meta) of ``step`` (default: latest) into ``abstract_state``'s layout."""
        step = self._resolve(step)
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise CheckpointError(
                f"restoring step {step} from {self.directory} failed ({e!r}); the checkpoint "
                "does not match this run's model/optimiser shapes — use the same config or a "
                "fresh --workdir"
            ) from e
        # Rebuild the target's tree structure (orbax may hand back plain tuples for optax states).
        leaves = jax.tree.leaves(out.state)
        state = jax.tree.unflatten(jax.tree.structure(abstract_state), leaves)
        return state, dict(out.meta)

    def _resolve(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise CheckpointError(
                f"no checkpoint step {step} in {self.directory}; available: {self.all_steps()}"
            )
        return int(step)

    def close(self) -> None:
        self._manager.close()


def _run_manager(checkpoint_dir: str | os.PathLike, step: int | None) -> tuple[Any, Any, int]:
    """(orbax manager, checkpoints folder, step) of a run's checkpoint `step` (None: latest);
    the caller closes the manager. Every failure is a CheckpointError saying what to pass."""
    path = paths.workdir_path(checkpoint_dir)
    if (path / CHECKPOINT_DIR).is_dir():
        path = path / CHECKPOINT_DIR
    if not path.is_dir():
        why = "does not exist" if not path.exists() else "is not a directory"
        raise CheckpointError(
            f"{checkpoint_dir} {why}: it is not a workdir or checkpoints folder; pass the "
            f"--workdir an fst-train run wrote (it holds a {CHECKPOINT_DIR}/ folder)"
        )
    mgr = ocp.CheckpointManager(path, item_names=("state", "meta"))
    steps = sorted(mgr.all_steps())
    if not steps:
        mgr.close()
        raise CheckpointError(f"{path} holds no checkpoint steps; was the run saved (fst-train)?")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        mgr.close()
        raise CheckpointError(f"no checkpoint step {step} in {path}; available steps: {steps}")
    return mgr, path, step


def read_meta(checkpoint_dir: str | os.PathLike, step: int | None = None) -> tuple[int, dict]:
    """(step, host metadata: config, population, offsets, ...) of checkpoint `step` (None:
    latest) of a run, without reading any array — e.g. to rebuild the run's model config before
    `restore_params`. ``checkpoint_dir`` is a workdir or its ``checkpoints`` folder."""
    mgr, _, step = _run_manager(checkpoint_dir, step)
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    finally:
        mgr.close()
    return step, dict(meta)


def restore_params(
    checkpoint_dir: str | os.PathLike,
    abstract_params: Any,
    step: int | None = None,
    keys: tuple[str, ...] = ("params",),
) -> tuple[Any, dict[str, Any]]:
    """Loads only the params of a run's checkpoint (plasticity probe: fresh RL from any step;
    fst-serve / fst-export).

    ``checkpoint_dir`` is a workdir or its ``checkpoints`` folder. The optimiser state is not
    read, and the fingerprint is not checked (a probe is a new run by design). ``keys`` is the
    params' path inside the saved state (the controller saves them under ``train/params``).
    """
    mgr, path, step = _run_manager(checkpoint_dir, step)
    item: Any = abstract_params
    for k in reversed(keys):
        item = {k: item}
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        restored = mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=jax.tree.map(
                        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype), item
                    ),
                    partial_restore=True,
                )
            ),
        )
    finally:
        mgr.close()
    tree = restored.state
    for k in keys:
        tree = tree[k]
    leaves = jax.tree.leaves(tree)
    if not leaves or any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        raise CheckpointError(
            f"checkpoint step {step} in {path} holds no params under {'/'.join(keys)}; point "
            "init_from at a workdir written by fst-train"
        )
    params = jax.tree.unflatten(jax.tree.structure(abstract_params), leaves)
    return params, dict(meta)


def key_to_data(key: jax.Array) -> np.ndarray:
    """Typed PRNG key -> uint32 array for the checkpoint."""
    return np.asarray(jax.random.key_data(key))


def key_from_data(data: Any) -> jax.Array:
    return jax.random.wrap_key_data(jax.numpy.asarray(data, dtype=jax.numpy.uint32))
