"""The persistent XLA compile cache (fst_jax/compile_cache.py, ``config.compile_cache_dir``).

The signal that a process read an executable back instead of compiling it is JAX's own
monitoring events (``/jax/compilation_cache/cache_hits`` / ``cache_misses`` /
``compile_requests_use_cache``: a compile that consulted the cache, recorded even with none),
counted in the child process, plus the entries on disk; no timings.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fst_subprocess import REPO, tiny_flags

from fst_jax import compile_cache
from fst_jax.errors import ConfigError

HITS, MISSES, USES = (
    "/jax/compilation_cache/cache_hits",
    "/jax/compilation_cache/cache_misses",
    "/jax/compilation_cache/compile_requests_use_cache",
)
# Counts JAX's compile-cache events in the child and writes them at exit (sys.exit included).
COUNTER = (
    "import atexit, json, sys; from jax import monitoring; counts = {{}}; "
    "monitoring.register_event_listener("
    "lambda e, **kw: counts.__setitem__(e, counts.get(e, 0) + 1)); "
    "atexit.register(lambda: open({out!r}, 'w').write(json.dumps(counts))); "
)


def entries(d: Path) -> set[str]:
    """The cache's executables (JAX's LRU cache writes <key>-cache and <key>-atime files)."""
    return {p.name for p in d.glob("*-cache")} if d.is_dir() else set()


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("JAX_COMPILATION_CACHE_DIR", "FST_JAX_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------- in process


def test_auto_resolves_in_documented_order(clean_env, tmp_path):
    home = os.path.expanduser("~")
    assert compile_cache.resolve("auto") == os.path.join(
        home, ".cache", "fst_jax", "xla_compile_cache"
    )
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.resolve("auto") == str(tmp_path / "xdg" / "fst_jax" / "xla_compile_cache")
    clean_env.setenv("FST_JAX_CACHE", str(tmp_path / "fst"))
    assert compile_cache.resolve("auto") == str(tmp_path / "fst" / "xla_compile_cache")
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compile_cache.resolve("auto") == str(tmp_path / "jax")
    # explicit values win over every variable; '' (and None) = off; '~' expands; URIs are kept
    assert compile_cache.resolve(str(tmp_path / "x")) == str(tmp_path / "x")
    assert compile_cache.resolve("") == compile_cache.resolve(None) == ""
    assert compile_cache.resolve("~/cc") == os.path.join(home, "cc")
    assert compile_cache.resolve("gs://bucket/cc") == "gs://bucket/cc"


def test_prepare_creates_the_directory(tmp_path):
    where = tmp_path / "a" / "b"
    assert compile_cache.prepare(str(where)) == str(where)
    assert where.is_dir() and not list(where.iterdir())  # the write probe is removed
    assert compile_cache.prepare("") == ""


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_unusable_directory_is_a_config_error_naming_key_and_fix(tmp_path, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a dir")
    bad = blocker if kind == "file" else blocker / "cache"  # mkdir under a file: ENOTDIR
    with pytest.raises(ConfigError) as e:
        compile_cache.prepare(str(bad))
    msg = str(e.value)
    assert f"compile_cache_dir={str(bad)!r}" in msg
    assert "--config.compile_cache_dir=/path" in msg and "--config.compile_cache_dir=''" in msg
    with pytest.raises(ConfigError, match=r"\(--compile_cache_dir=.*--compile_cache_dir=/path"):
        compile_cache.prepare(str(bad), key="--compile_cache_dir")  # fst-serve's flag form


def test_validate_config_checks_the_compile_cache_dir(tmp_path):
    """The config check runs with the others, before any model loads."""
    import importlib.util

    from fst_jax import controller

    spec = importlib.util.spec_from_file_location(
        "default_cfg", REPO / "experiments" / "configs" / "default.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.compile_cache_dir == "auto"
    (tmp_path / "f").write_text("x")
    c.compile_cache_dir = str(tmp_path / "f" / "cache")
    with pytest.raises(ConfigError, match=r"cannot use the compile cache directory.*compile_cache"):
        controller.validate_config(c, workdir=str(tmp_path / "run"))
    c.compile_cache_dir = ""
    controller.validate_config(c, workdir=str(tmp_path / "run"))


def test_compile_cache_dir_is_resumable():
    """Moving the cache never makes a run's checkpoints foreign."""
    from fst_jax import checkpoint

    assert checkpoint._resumable("compile_cache_dir")


# ----------------------------------------------------------------------------- subprocesses

PROGRAMS = (
    "import jax, jax.numpy as jnp; from fst_jax import compile_cache; "
    "print(compile_cache.enable({value!r})); "
    "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum()); "
    "[f(jnp.ones((n, 8))).block_until_ready() for n in (2, 3, 5)]"
)


def run_programs(value, out, **env_extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = COUNTER.format(out=str(out)) + PROGRAMS.format(value=value)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(out).read_text())


@pytest.mark.slow  # subprocesses
def test_a_fresh_process_reads_back_what_the_first_wrote(tmp_path):
    """Tiny programs (milliseconds to compile) are cached too: JAX's default skips them."""
    cache = tmp_path / "cache"
    first = run_programs(str(cache), tmp_path / "1.json")
    written = entries(cache)
    assert first.get(MISSES, 0) >= 3 and first.get(HITS, 0) == 0, first
    assert len(written) >= 3  # one executable per shape at least
    second = run_programs(str(cache), tmp_path / "2.json")
    assert second.get(HITS, 0) >= 3 and second.get(MISSES, 0) == 0, second
    assert entries(cache) == written  # nothing new compiled, nothing new written


@pytest.mark.slow  # subprocesses
def test_empty_string_turns_the_cache_off(tmp_path):
    """With no cache JAX neither looks an executable up (a miss) nor reads one back (a hit)."""
    counts = run_programs("", tmp_path / "off.json", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert counts.get(USES, 0) >= 3, counts  # it compiled ...
    assert counts.get(MISSES, 0) == 0 and counts.get(HITS, 0) == 0, counts  # ... uncached
    assert not (tmp_path / "xdg").exists()  # and 'auto' was not used behind our back


@pytest.mark.slow  # subprocesses
def test_a_directory_written_by_plain_jax_is_usable(tmp_path):
    """A cache directory first filled by plain JAX (its default: unbounded, no access-time
    files), e.g. a user's $JAX_COMPILATION_CACHE_DIR, must take new entries without warnings:
    JAX's LRU eviction (if we turned it on) fails on such entries and skips every write."""
    cache = tmp_path / "cache"
    plain = (
        f"import jax, jax.numpy as jnp; jax.config.update('jax_compilation_cache_dir', {str(cache)!r}); "
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0); "
        "jax.jit(lambda x: jnp.sin(x).sum())(jnp.ones(4)).block_until_ready()"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAX_COMPILATION_CACHE_MAX_SIZE", None)
    proc = subprocess.run([sys.executable, "-c", plain], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = entries(cache)
    assert before and not list(cache.glob("*-atime"))  # plain JAX: entries, no access times
    ours = "import warnings; warnings.simplefilter('error'); " + PROGRAMS.format(value=str(cache))
    proc = subprocess.run([sys.executable, "-c", ours], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(entries(cache)) >= len(before) + 3  # the new programs were written


def fst_train(tmp_path, name, *extra, env_extra=None):
    """A seconds-long tiny fst-train run (1 cycle) in a fresh process; its cache event counts."""
    out = tmp_path / f"{name}.json"
    boot = COUNTER.format(out=str(out)) + (
        f"sys.path.insert(0, {str(REPO / 'tests')!r}); import test_controller_e2e; "
        "from fst_jax.main import run; sys.argv[0] = 'fst-train'; run()"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu", **(env_extra or {}))  # fmt: skip
    for var in ("JAX_COMPILATION_CACHE_DIR", "FST_JAX_CACHE"):
        env.pop(var, None)
    cmd = [sys.executable, "-c", boot, f"--workdir={tmp_path / name}",
           *tiny_flags(1, "--config.mesh.devices=1", "--config.progress=False"), *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return proc, (json.loads(out.read_text()) if out.exists() else {})


@pytest.mark.slow  # fst-train subprocesses
def test_fst_train_caches_by_default_and_a_rerun_compiles_nothing(tmp_path):
    xdg = tmp_path / "xdg"
    cache = xdg / "fst_jax" / "xla_compile_cache"
    proc, first = fst_train(tmp_path, "run1", env_extra={"XDG_CACHE_HOME": str(xdg)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = entries(cache)
    assert first.get(MISSES, 0) > 0 and len(written) >= first[MISSES] * 0.9, (first, len(written))
    # Same work in a new workdir, the same directory named explicitly: every program is read back.
    proc, second = fst_train(tmp_path, "run2", f"--config.compile_cache_dir={cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert second.get(HITS, 0) > 0 and second.get(MISSES, 0) == 0, second
    assert entries(cache) == written
    proc, off = fst_train(tmp_path, "run3", "--config.compile_cache_dir=",
                          env_extra={"XDG_CACHE_HOME": str(xdg)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert off.get(USES, 0) > 0 and off.get(MISSES, 0) == 0 and off.get(HITS, 0) == 0, off
    assert entries(cache) == written


@pytest.mark.slow  # an fst-train subprocess (fails before any model loads)
def test_fst_train_reports_an_unusable_cache_dir_in_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    proc, _ = fst_train(tmp_path, "bad", f"--config.compile_cache_dir={tmp_path / 'f' / 'c'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fst-train: error: cannot use the compile cache directory"), last
    assert "--config.compile_cache_dir=''" in last
