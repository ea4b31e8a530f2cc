"""TPU slices as the real TPU compiler sees them, on a machine without a TPU.

With `libtpu` installed (`pip install 'fst_jax[tpu]'`, i.e. `jax[tpu]` matching the installed
jax), `jax.experimental.topologies.get_topology_desc` describes the devices of any TPU slice by
topology name; a jit lowered with shardings over a mesh of those devices compiles with XLA:TPU,
and the executable answers `memory_analysis()` (HBM per chip) and `cost_analysis()` (flops, bytes
accessed, the compiler's own `optimal_seconds`). Nothing runs: compile only.

Chip figures are Google Cloud's published per-chip numbers (bf16 dense peak, HBM size and
bandwidth); they turn compiler counts into time estimates.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: JAX device kind, bf16 peak FLOP/s, HBM bytes/s, HBM GiB per chip."""

    name: str
    device_kind: str
    peak_flops: float
    hbm_bw: float
    hbm_gib: float
    chip_config: str  # "megacore" on v4 (two TensorCores as one device); "default" elsewhere
    dims: int  # torus dimensions of the topology name (3: v4/v5p, 2: v5e/v6e)


CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        Chip("v4", "TPU v4", 275e12, 1228e9, 32.0, "megacore", 3),
        Chip("v5e", "TPU v5 lite", 197e12, 819e9, 16.0, "default", 2),
        Chip("v5p", "TPU v5", 459e12, 2765e9, 95.0, "default", 3),
        Chip("v6e", "TPU v6 lite", 918e12, 1640e9, 32.0, "default", 2),
    )
}


def libtpu_available() -> bool:
    """True when the TPU compiler (libtpu) is importable in this environment."""
    return importlib.util.find_spec("libtpu") is not None


def require_libtpu() -> None:
    if not libtpu_available():
        raise RuntimeError(
            "The TPU compiler (libtpu) is not installed: `pip install 'fst_jax[tpu]'` (the jax[tpu] "
            "extra matching your jax), or pass --compiler=cpu_proxy for the XLA:CPU stand-in "
            "(labelled as such; its temporaries differ from TPU's)."
        )


def compile_only_env(chip: Chip, chips: int) -> dict[str, str]:
    """Environment for a compile-only process: keeps libtpu from probing for TPU hosts (the GCE
    metadata server and worker hostnames do not exist off a TPU VM) and from taking its
    one-process-per-host lock (compile-only processes may run side by side). Never use it on a
    TPU VM."""
    return {
        "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
        "TPU_SKIP_MDS_QUERY": "1",
        "TPU_WORKER_HOSTNAMES": "localhost",
        "TPU_ACCELERATOR_TYPE": f"{chip.name}-{chips * (2 if chip.name in ('v4', 'v5p') else 1)}",
    }


def parse_slice(name: str) -> tuple[Chip, str, int]:
    """'v5p:4x4x2' → (chip, topology name, chips). Topology names are the torus shape in chips."""
    gen, _, shape = name.partition(":")
    if gen not in CHIPS or not shape:
        raise ValueError(
            f"TPU slice {name!r}: expected '<generation>:<topology>' with generation one of "
            f"{', '.join(CHIPS)}, e.g. v5p:4x4x2 or v6e:4x4"
        )
    chip = CHIPS[gen]
    try:
        dims = [int(x) for x in shape.split("x")]
    except ValueError:
        dims = []
    if len(dims) != chip.dims or min(dims, default=0) < 1:
        raise ValueError(
            f"TPU slice {name!r}: {gen} topologies have {chip.dims} dimensions, e.g. "
            f"{'2x2x1' if chip.dims == 3 else '2x2'}"
        )
    n = 1
    for d in dims:
        n *= d
    return chip, f"{gen}:{shape}", n


@functools.cache
def topology_devices(name: str) -> tuple[Any, ...]:
    """The TPU devices of slice `name` ('v5p:4x4x2'), for lowering and compiling only."""
    require_libtpu()
    chip, topo, n = parse_slice(name)
    for k, v in compile_only_env(chip, n).items():
        os.environ.setdefault(k, v)
    from jax.experimental import topologies

    hosts = (2, 2, 1) if n >= 4 else (n, 1, 1)
    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topo,
        chip_config_name=chip.chip_config,
        chips_per_host_bounds=hosts,
        num_slices=1,
    )
    devices = tuple(desc.devices)
    if len(devices) != n or devices[0].device_kind != chip.device_kind:
        raise RuntimeError(
            f"libtpu described {topo} as {len(devices)} × {devices[0].device_kind!r}; expected "
            f"{n} × {chip.device_kind!r} (libtpu and jax versions out of step?)"
        )
    return devices
