"""Host (CPU) memory hygiene: glibc malloc arenas and trimming freed memory back to the OS.

WHY: XLA:CPU runs each op on a pool of threads, and glibc gives every thread that meets a locked
arena a new one (up to 8 × cores). Buffers freed by one phase (the train step's temporaries, a
128-row evaluation's KV caches, a prepared copy of the weights) stay mapped in whichever arena
held them, and the next phase allocates from another; resident memory then sits gigabytes above
what is live. `configure_malloc` caps the arenas (as ``MALLOC_ARENA_MAX`` would, which glibc reads
only at process start, hence `mallopt` here) and `trim` hands free pages back between phases.
Neither changes what is computed. Elsewhere than glibc/Linux both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc <malloc.h>
DEFAULT_ARENA_MAX = 2


@cache
def _glibc() -> Any:
    """libc as a ctypes handle when it is glibc (mallopt and malloc_trim exist), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    needed = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, name) for name in needed) else None


def configure_malloc(
    arena_max: int = DEFAULT_ARENA_MAX, environ: Mapping[str, str] = os.environ
) -> int | None:
    """Caps glibc's malloc arenas at `arena_max` unless the user set ``MALLOC_ARENA_MAX``
    (glibc honoured it at start). Call before jax starts its threads. Returns the cap it set,
    or None (user's setting kept, or not glibc)."""
    if arena_max < 1:
        raise ValueError(f"arena_max={arena_max}: use >= 1")
    if "MALLOC_ARENA_MAX" in environ:
        return None
    libc = _glibc()
    if libc is None or libc.mallopt(M_ARENA_MAX, arena_max) != 1:
        return None
    log.debug("glibc malloc arenas capped at %d", arena_max)
    return arena_max


def trim() -> bool:
    """Returns free heap pages of every arena to the OS (``malloc_trim(0)``); True if any were."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
