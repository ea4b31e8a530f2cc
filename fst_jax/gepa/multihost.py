"""Multi-host lockstep for GEPA rounds.

Every process runs the same round (evaluations are sharded, jitted sampler calls that need all
hosts), but only process 0 talks to the reflection LM; the outcome is broadcast so every process
applies the same update to its population state. The hook is injectable: single-process runs use
the identity, pods use `jax_lockstep()`, tests use an in-process fake.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any


def _identity(obj: Any) -> Any:
    return obj


@dataclasses.dataclass(frozen=True)
class Lockstep:
    """`broadcast(obj)` returns process 0's `obj` on every process (non-leaders pass None)."""

    process_index: int = 0
    broadcast: Callable[[Any], Any] = _identity

    @property
    def is_leader(self) -> bool:
        return self.process_index == 0


def encode(obj: Any) -> bytes:
    """JSON bytes: the payloads are plain data (text, numbers, dicts), never pickles."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def decode(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def broadcast_bytes(obj: Any, leader: bool, broadcast_array: Callable[[Any], Any]) -> Any:
    """Broadcast a JSON-able object as two array broadcasts: its byte length, then the bytes."""
    import numpy as np

    data = encode(obj) if leader else b""
    n = int(np.asarray(broadcast_array(np.asarray(len(data), np.int32))))
    buf = np.frombuffer(data, np.uint8).copy() if leader else np.zeros(n, np.uint8)
    out = np.asarray(broadcast_array(buf), dtype=np.uint8)
    return decode(out.tobytes())


def jax_lockstep() -> Lockstep:
    """Lockstep over `jax.experimental.multihost_utils.broadcast_one_to_all` (identity on one process)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return Lockstep(0, _identity)
    leader = jax.process_index() == 0

    def broadcast(obj: Any) -> Any:
        return broadcast_bytes(obj, leader, multihost_utils.broadcast_one_to_all)

    return Lockstep(jax.process_index(), broadcast)
