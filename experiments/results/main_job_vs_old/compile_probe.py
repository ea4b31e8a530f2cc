"""Runs `fst-train` (``fst_jax.main``, of whatever checkout is on PYTHONPATH) and writes how much
of its time went to compilation, from JAX's own monitoring events, to ``$COMPILE_PROBE_OUT``:

- ``/jax/core/compile/jaxpr_trace_duration`` and ``jaxpr_to_mlir_module_duration``: tracing and
  lowering (paid on every compile, cache hit or not);
- ``/jax/core/compile/backend_compile_duration``: XLA compiling (what the cache saves);
- ``/jax/compilation_cache/cache_retrieval_time_sec``: reading executables back (hits);
- counts of cache hits, misses and lookups.

    COMPILE_PROBE_OUT=probe.json PYTHONPATH=<checkout> python compile_probe.py --workdir=... ...

The listeners only add numbers; the run is the same.
"""

import atexit
import json
import os
import sys
from collections import defaultdict

from jax import monitoring

COUNTS: dict[str, int] = defaultdict(int)
SECONDS: dict[str, float] = defaultdict(float)


def _event(name: str, **kw) -> None:
    COUNTS[name] += 1


def _duration(name: str, secs: float, **kw) -> None:
    COUNTS[name] += 1
    SECONDS[name] += secs


def _write() -> None:
    out = os.environ.get("COMPILE_PROBE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump({"counts": dict(COUNTS), "seconds": dict(SECONDS)}, f, indent=1)


if __name__ == "__main__":
    monitoring.register_event_listener(_event)
    monitoring.register_event_duration_secs_listener(_duration)
    atexit.register(_write)
    from fst_jax.main import run

    sys.argv[0] = "fst-train"
    run()
