"""Test setup: 8 fake CPU devices for sharding tests, set before anything imports jax; cheaper
compiles and a persistent XLA compile cache for the fast tier; and the tiny random model the sampler tests share
(built once per session: one init, not one a file)."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """`-m "not slow"` (the everyday loop) compiles cheaper and keeps what it compiled.

    ~70 % of the fast tier's time is XLA compiles of the same tiny models, most of it in
    LLVM's machine-code optimisation, which tiny test shapes do not need:
    - LLVM at -O0 (``--xla_backend_optimization_level=0``): the same HLO and XLA passes, about
      half the compile CPU; results differ from -O3 by float rounding at most (every fast test
      passes with its tolerances unchanged). FST_JAX_TEST_FAST_COMPILE=0 turns it off.
    - A persistent XLA compile cache: a warm run skips the compiles. Every fast test passes on
      executables read back from the cache (measured). Jitted-function caches in memory, what
      the recompilation tests count, are unchanged. FST_JAX_TEST_XLA_CACHE=0 turns it off,
      =<dir> moves it.
    Only there: the full suite (`./dev.sh test`, `.ci/run`) compiles exactly as fst-train does,
    and its slow tests compare compilers' cost/memory analyses (tests/test_aot.py), which
    neither setting has been shown to keep."""
    if "not slow" not in (config.option.markexpr or ""):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    fast = os.environ.get("FST_JAX_TEST_FAST_COMPILE", "") != "0"
    if fast and "xla_backend_optimization_level" not in flags:  # before jax starts a backend
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    where = os.environ.get("FST_JAX_TEST_XLA_CACHE", "")
    if where == "0":
        return
    import jax

    root = os.environ.get("FST_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fst_jax"
    )
    jax.config.update("jax_compilation_cache_dir", where or os.path.join(root, "xla-tests"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny models compile fast
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)  # LRU-evicted past 2 GiB


@pytest.fixture(scope="session")
def tok():
    """The byte-level tokenizer of the `random:` models."""
    from fst_jax.models.random_init import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model():
    """(config, params) of tiny_llama, seed 0. Params are immutable jax arrays: safe to share."""
    import jax

    from fst_jax.models import get_config, init_params

    cfg = get_config("tiny_llama")
    return cfg, init_params(cfg, jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def bank(tok):
    """A frozen PromptBank of fixtures.BANK_CONTEXTS (4 rows of 48 tokens)."""
    from fixtures import BANK_CONTEXTS

    from fst_jax.sampling import build_bank

    return build_bank(tok, list(BANK_CONTEXTS), max_prompts=4, max_len=48)
