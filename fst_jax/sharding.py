"""Device mesh, logical-axis rules and placement helpers — the only module that names mesh axes.

Every parameter and activation carries *logical* axis names (`embed`, `heads`, `batch`, ... from
`fst_jax.models.decoder`). A rule set maps each logical name to zero or more mesh axes.

One layout for training and sampling: the sampler decodes with the trainer's FSDP × tensor
sharded weights (its bf16 copy keeps their shardings), so XLA gathers each layer's weights as
decode needs them. A separate sampling layout (weights replicated over data × fsdp) would save
those gathers but hold a second, un-FSDP'd copy of the weights on every chip (16 GiB / tensor
for an 8B model in bf16) and reshard after every update; it is not implemented, and the memory
plan (`fst_jax.aot`) counts the layout that runs.

A logical axis whose array dimension is not divisible by its mesh axes' size is replicated
instead (e.g. SmolLM2's 3 KV heads on a tensor axis of 4): correctness first, and the fallback
is reported by `describe_shardings` so a user can pick a mesh that fits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Mesh axis names (defined in the leaf `fst_jax.mesh_axes`; re-exported here).
from fst_jax.mesh_axes import BATCH_AXES, DATA, FSDP, MESH_AXES, TENSOR  # noqa: F401
from fst_jax.models.config import ModelConfig
from fst_jax.models.decoder import param_logical_axes

Rules = tuple[tuple[str, tuple[str, ...] | str | None], ...]

# Training: FSDP over the model dimension, tensor parallelism over heads / mlp / vocab.
TRAIN_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", TENSOR),
    ("embed", FSDP),
    ("mlp", TENSOR),
    ("heads", TENSOR),
    ("kv_heads", TENSOR),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("cache_length", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape over (data, fsdp, tensor); one entry may be -1 to take the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill the single -1 entry so the product equals `num_devices`; validate otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"Mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"Mesh shape {shape}: at most one entry may be -1 (fill)")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"Mesh shape {shape}: entries must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"Mesh shape {shape}: {num_devices} devices are not divisible by {known}; "
                "choose fixed axis sizes whose product divides the device count"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"Mesh shape {shape} uses {math.prod(shape)} devices but {num_devices} are available; "
            "make the product match or use -1 for one axis"
        )
    return shape


def make_mesh(
    shape: MeshConfig | Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (GSPMD propagation inside jit)."""
    if isinstance(shape, MeshConfig):
        shape = shape.shape
    devices = list(jax.devices() if devices is None else devices)
    resolved = resolve_mesh_shape(shape, len(devices))
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(resolved, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(resolved), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def mesh_from_config(c: Any) -> Mesh:
    """The run's mesh from its config's ``mesh`` node (data, fsdp, tensor; ``devices`` < 1 = all
    devices, else the first N): one place for fst-train's RL and SFT modes."""
    n = c.mesh.get("devices", -1)
    devices = jax.devices() if n < 1 else jax.devices()[:n]
    return make_mesh(MeshConfig(c.mesh.data, c.mesh.fsdp, c.mesh.tensor), devices)


def single_device_mesh() -> Mesh:
    """A 1×1×1 mesh on the first device (the reference the sharded step must equal)."""
    return make_mesh((1, 1, 1), jax.devices()[:1])


def _rule_dict(rules: Rules) -> dict[str, tuple[str, ...]]:
    out = {}
    for name, axes in rules:
        if axes is None:
            out[name] = ()
        elif isinstance(axes, str):
            out[name] = (axes,)
        else:
            out[name] = tuple(axes)
    return out


def logical_to_mesh_spec(
    logical: P, shape: Sequence[int] | None, mesh: Mesh, rules: Rules = TRAIN_RULES
) -> P:
    """Map one PartitionSpec of logical names to mesh axes.

    Mesh axes already used by an earlier dimension, of size 1, or not dividing the dimension are
    dropped (that dimension is then replicated over them).
    """
    table = _rule_dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(
                f"Logical axis {name!r} has no sharding rule; add it to the rule set "
                f"(known: {', '.join(sorted(table))})"
            )
        axes = []
        size = 1
        for ax in table[name]:
            n = mesh.shape[ax]
            if ax in used or n == 1:
                continue
            if shape is not None and shape[i] % (size * n):
                continue
            axes.append(ax)
            size *= n
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*out)


def param_shardings(config: ModelConfig, mesh: Mesh, rules: Rules = TRAIN_RULES) -> Any:
    """NamedSharding pytree for the params of `config` under `rules`."""
    from fst_jax.models.decoder import param_shapes

    logical = param_logical_axes(config)
    shapes = param_shapes(config)
    return jax.tree.map(
        lambda spec, s: NamedSharding(mesh, logical_to_mesh_spec(spec, s.shape, mesh, rules)),
        logical,
        shapes,
        is_leaf=lambda x: isinstance(x, P),
    )


def shard_params(
    params: Any, config: ModelConfig, mesh: Mesh, rules: Rules = TRAIN_RULES
) -> tuple[Any, Any]:
    """Place params on the mesh under `rules`; returns (sharded params, their shardings)."""
    shardings = param_shardings(config, mesh, rules)
    try:
        return jax.device_put(params, shardings), shardings
    except ValueError as e:
        raise ValueError(
            f"Params do not match config {config.name!r} (layout or shapes differ: {e}); "
            "pass params created for this config (scan_layers must match too)"
        ) from e


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (row) axis split over data×fsdp; everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_shard_count(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Place every leaf of a batch pytree (all with a leading row axis) on the mesh."""
    n = batch_shard_count(mesh)
    for leaf in jax.tree.leaves(batch):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % n:
            raise ValueError(
                f"Batch leaf of shape {np.shape(leaf)} cannot be split over {n} data×fsdp "
                f"shards; make the number of rows a multiple of {n}"
            )
    return jax.device_put(batch, batch_sharding(mesh))


def opt_state_shardings(optimizer: Any, opt_state_shapes: Any, param_shardings_: Any, mesh: Mesh):
    """Optimizer-state shardings: moments follow their params, counters are replicated."""
    import optax

    return optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        opt_state_shapes,
        param_shardings_,
        transform_non_params=lambda _: replicated(mesh),
    )


def with_batch_constraint(x: jax.Array, mesh: Mesh, row_axis: int = 0) -> jax.Array:
    """Inside jit: pin the row axis of an activation to data×fsdp (e.g. after a reshape)."""
    spec = [None] * x.ndim
    spec[row_axis] = BATCH_AXES
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


def describe_shardings(shardings: Any) -> dict[str, str]:
    """Flat {param path: mesh PartitionSpec} for logs and for spotting replicated fallbacks."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {jax.tree_util.keystr(path): str(s.spec) for path, s in flat}
