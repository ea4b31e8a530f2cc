"""Test setup: 8 fake CPU devices for sharding tests, set before anything imports jax; and the
tiny random model the sampler tests share (built once per session: one init, not one a file)."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
