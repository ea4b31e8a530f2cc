"""Greedy generation through the one local path (`fst_jax.chat` on the sampler) vs transformers
`generate`, and the `python -m fst_jax.chat` demo."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_models_hf import make_hf

from fst_jax.chat import chat_completion, greedy_tokens
from fst_jax.models import load
from fst_jax.models.hf import config_from_hf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gen") / "qwen2")
    model = make_hf("qwen2", path, seed=11)
    return path, model


def test_batched_greedy_matches_transformers(tiny):
    path, model = tiny
    config, params, tok = load(path)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(3, 512, n).tolist() for n in (5, 17, 70)]  # 70 > one length bucket
    got = greedy_tokens(config, params, tok, prompts, max_new_tokens=9, stop_ids=[])
    for p, g in zip(prompts, got):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([p]), max_new_tokens=9, do_sample=False, eos_token_id=None
            )
        assert g == out[0, len(p) :].tolist()


def test_stops_at_eos(tiny):
    path, _ = tiny
    config, params, tok = load(path)
    prompt = [7, 8, 9, 10]
    free = greedy_tokens(config, params, tok, [prompt], max_new_tokens=6, stop_ids=[])[0]
    stop = free[2]  # pretend the third generated token is EOS
    cut = greedy_tokens(config, params, tok, [prompt, prompt], max_new_tokens=6, stop_ids=[stop])
    first = free.index(stop)
    assert cut == [free[: first + 1]] * 2


def test_bad_generate_args(tiny):
    path, _ = tiny
    config, params, tok = load(path)
    with pytest.raises(ValueError, match="no empty prompt"):
        greedy_tokens(config, params, tok, [[]])
    with pytest.raises(ValueError, match="exceeds"):
        greedy_tokens(config, params, tok, [[1] * 500], max_new_tokens=100)


@pytest.mark.slow  # subprocess
def test_cli_prints_the_greedy_reply(tiny):
    path, _ = tiny
    config, params, tok = load(path)
    want = chat_completion(config, params, tok, "hello there", max_new_tokens=5)
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "fst_jax.chat", "--model", path]
    cmd += ["--prompt", "hello there", "--max_new_tokens", "5"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.rstrip("\n").endswith(want)


def test_legacy_v4_config_spelling():
    """transformers v4 config.json (top-level rope_theta + rope_scaling with `type`) reads the same."""
    base = dict(
        model_type="llama",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    v4 = config_from_hf(
        {**base, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", "factor": 8.0}}
    )
    v5 = config_from_hf(
        {**base, "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}
    )
    assert v4 == v5 and v4.rope_scaling.factor == 8.0 and v4.rope_theta == 5e5
    assert v4.num_kv_heads == 4 and v4.head_dim == 16


@pytest.mark.slow  # subprocess
def test_loading_and_export_never_import_torch(tmp_path):
    """The package must work where torch is absent: run the whole path in a fresh interpreter."""
    script = f"""
import sys, jax
from fst_jax.models import get_config, init_params, load, save_hf, smollm2_gguf_path
from fst_jax.chat import greedy_tokens
from fst_jax.models.gguf_loader import open_gguf
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.models.tokenizer import tokenizer_from_gguf
c = get_config("tiny_llama3")
save_hf({str(tmp_path)!r}, c, init_params(c, jax.random.PRNGKey(0)), tiny_tokenizer())
config, params, tok = load({str(tmp_path)!r})
greedy_tokens(config, params, tok, [tok.encode("hi")], max_new_tokens=2)
tokenizer_from_gguf(open_gguf(smollm2_gguf_path())).encode("hello")
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
