"""The persistent XLA compilation cache that `fst-train` and `fst-serve` use by default.

A short run on a laptop spends about a quarter of its wall time compiling the same programs
again (experiments/results/main_job_vs_old/): the sampler's prefill/decode buckets, the train
step, the KL measure. JAX can keep compiled executables on disk and read them back in the next
process (its persistent compilation cache); this module turns that on for our entry points,
under ``config.compile_cache_dir``:

- ``"auto"`` (the default): ``$JAX_COMPILATION_CACHE_DIR`` if set (JAX's own variable), else
  ``$FST_JAX_CACHE/xla_compile_cache``, else ``$XDG_CACHE_HOME/fst_jax/xla_compile_cache``, else
  ``~/.cache/fst_jax/xla_compile_cache``;
- a path (local, or a URI such as ``gs://`` that JAX's cache can write through etils.epath);
- ``""``: off (every process compiles from scratch).

Every program is cached, however small or quick to compile (JAX's default skips programs that
compiled in under a second, i.e. all of a tiny model's and many of SmolLM2's on CPU). The cache
is unbounded, as JAX's is by default (the SmolLM2 main job writes ~10 MB; delete the directory
to reclaim it). ``JAX_COMPILATION_CACHE_MAX_SIZE`` turns on JAX's least-recently-used bound, but
only on a directory always used with it: JAX's eviction fails (a warning on every write, the
entry not written) on entries written without it, e.g. by an earlier unbounded run. A
cached executable is the one XLA would compile (JAX keys it by the program, the compile
options, the backend and the jax/jaxlib versions), so samples and updates do not change; only
compilation time does.
"""

from __future__ import annotations

import os
from pathlib import Path

from fst_jax import paths
from fst_jax.errors import ConfigError

KEY = "compile_cache_dir"
AUTO = "auto"
SUBDIR = "xla_compile_cache"


def _fix(key: str) -> str:
    flag = key if key.startswith("--") else f"--config.{key}"
    return (f"choose a directory you can write to ({flag}=/path), or turn the compile cache off "
            f"with {flag}=''")  # fmt: skip


def default_dir() -> str:
    """Where ``auto`` puts the cache when ``$JAX_COMPILATION_CACHE_DIR`` is not set."""
    root = os.environ.get("FST_JAX_CACHE")
    if root:
        return os.path.join(root, SUBDIR)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "fst_jax", SUBDIR)


def resolve(value: str | None, key: str = KEY) -> str:
    """The cache directory `value` names (``auto`` resolved, ``~`` expanded); '' = off."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError("not a path", key, value, _fix(key))
    value = value.strip()
    if value == AUTO:
        return os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()
    if not value or "://" in value:
        return value
    return os.path.expanduser(value)


def prepare(value: str | None, key: str = KEY) -> str:
    """Resolves `value` and, for a local path, creates the directory and checks that a file can
    be written there; raises ConfigError naming `key` and the fix otherwise. Returns the path
    ('' = off). Run before any weights load, so a bad path costs seconds, not a run."""
    path = resolve(value, key)
    if not path or "://" in path:  # off, or remote: nothing to probe locally
        return path
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            "the compile cache path is a file, not a directory", key, value, _fix(key)
        )
    try:
        paths.make_writable_dir(p)
    except OSError as e:
        raise ConfigError(
            f"cannot use the compile cache directory {path} ({e.strerror or e})",
            key,
            value,
            _fix(key),
        ) from None
    return path


def enable(value: str | None, key: str = KEY) -> str:
    """`prepare`s `value` and points JAX's persistent compilation cache at it, caching every
    program; ``""`` turns the cache off. Call before the first jit compiles (the CLIs do it right
    after the config checks). Returns the directory in use ('' = off)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cc

    path = prepare(value, key)
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", path or None)
    if path:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)  # no size floor
    if (before or "") != path:
        jax_cc.reset_cache()  # a cache opened by an earlier compile must not keep serving
    return path


def from_config(config: object) -> str:
    """``config.compile_cache_dir``; ``auto`` for a config built without the key."""
    try:
        return config[KEY]  # type: ignore[index]
    except (KeyError, TypeError):
        return AUTO
