"""HF parity of loading and export on tiny random checkpoints built with transformers + torch.

Oracle: transformers' own torch models (LlamaForCausalLM incl. llama3 rope scaling,
Qwen2ForCausalLM, Qwen3ForCausalLM) on the same saved weights, fp32, max |Δlogit| ≤ 1e-4.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from fst_jax.models import forward, get_config, init_params, load, save_hf
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.sharding import make_mesh, param_shardings

TOL = 1e-4
_COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
KINDS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(rms_norm_eps=1e-5)),
    "llama3": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            )
        ),
    ),
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=1e6)),
    ),
    # head_dim (32) != hidden_size / heads (16): exercises the explicit head_dim path.
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=32)),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """HF init is ~N(0, 0.02) with unit norms: too tame to catch a transposed or shuffled tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.15 * noise)


def make_hf(
    kind: str, path: str, seed: int = 0, overrides: dict | None = None, **save_kwargs
) -> torch.nn.Module:
    cfg_cls, model_cls, extra = KINDS[kind]
    model = model_cls(cfg_cls(**_COMMON, **{**extra, **(overrides or {})})).eval()
    _randomize(model, seed)
    model.save_pretrained(path, **save_kwargs)
    tiny_tokenizer().save_pretrained(path)
    return model


def hf_logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def our_logits(config, params, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(forward(config, params, jnp.asarray(tokens, jnp.int32))[0])


TOKENS = np.random.default_rng(0).integers(0, 512, size=(2, 40)).astype(np.int32)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in KINDS:
        path = str(root / kind)
        out[kind] = (path, make_hf(kind, path))
    sharded = str(root / "llama_sharded")
    out["llama_sharded"] = (sharded, make_hf("llama", sharded, seed=1, max_shard_size="100KB"))
    return out


@pytest.mark.parametrize("kind", [*KINDS, "llama_sharded"])
def test_logits_match_hf(checkpoints, kind):
    path, model = checkpoints[kind]
    if kind == "llama_sharded":
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
        assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
    config, params, tokenizer = load(path)
    assert config.arch == {"llama3": "llama", "llama_sharded": "llama"}.get(kind, kind)
    assert tokenizer.encode("hi") == tiny_tokenizer().encode("hi")
    ref = hf_logits(model, TOKENS)
    np.testing.assert_allclose(our_logits(config, params, TOKENS), ref, atol=TOL, rtol=0)
    if kind == "llama3":  # negative control: the oracle does see the rope scaling
        c0, p0, _ = load(path, rope_scaling=None)
        assert np.abs(our_logits(c0, p0, TOKENS) - ref).max() > 1e-2


def test_config_fields(checkpoints):
    c3, _, _ = load(checkpoints["llama3"][0], require_tokenizer=False)
    assert c3.rope_scaling is not None and c3.rope_scaling.factor == 8.0
    assert c3.rope_scaling.original_max_position_embeddings == 64 and c3.rope_theta == 500000.0
    q2, _, _ = load(checkpoints["qwen2"][0])
    assert q2.attention_bias and q2.tie_word_embeddings and q2.rope_theta == 1e6
    q3, _, _ = load(checkpoints["qwen3"][0])
    assert q3.qk_norm and q3.head_dim == 32 and not q3.tie_word_embeddings


def test_scan_layers_and_bf16(checkpoints):
    path, model = checkpoints["qwen3"]
    config, params, _ = load(path, scan_layers=True)
    assert config.scan_layers and params["layers"]["mlp"]["up_proj"]["kernel"].shape[0] == 2
    np.testing.assert_allclose(
        our_logits(config, params, TOKENS), hf_logits(model, TOKENS), atol=TOL
    )
    config16, params16, _ = load(path, dtype="bfloat16")
    assert config16.param_dtype == config16.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))


def test_load_into_sharded_target(checkpoints):
    path, model = checkpoints["llama"]
    assert jax.device_count() == 8
    mesh = make_mesh((2, 2, 2))
    for scan in (False, True):
        config, _, _ = load(path, scan_layers=scan)  # config of the target layout
        target = param_shardings(config, mesh)
        config, params, _ = load(path, shardings=target, scan_layers=scan)
        for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(target)):
            assert leaf.sharding.is_equivalent_to(want, leaf.ndim)
        assert any(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(params))
        got = jax.jit(lambda p, t, c=config: forward(c, p, t)[0])(params, jnp.asarray(TOKENS))
        np.testing.assert_allclose(np.asarray(got), hf_logits(model, TOKENS), atol=TOL)


@pytest.mark.parametrize("kind", ["llama3", "qwen2", "qwen3"])
def test_export_roundtrip_transformers(checkpoints, tmp_path, kind):
    path, model = checkpoints[kind]
    config, params, tokenizer = load(path, scan_layers=kind == "qwen3")
    out = save_hf(str(tmp_path / "export"), config, params, tokenizer, max_shard_size="120KB")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded) is type(model)
    np.testing.assert_allclose(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS), atol=1e-6)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == {"llama3": "llama"}.get(kind, kind)
    assert cfg["tie_word_embeddings"] == config.tie_word_embeddings
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == (
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    )
    config2, params2, _ = load(out)  # and back into fst_jax
    assert config2.replace(name=config.name, scan_layers=config.scan_layers) == config
    np.testing.assert_allclose(
        our_logits(config2, params2, TOKENS), hf_logits(model, TOKENS), atol=TOL
    )


@pytest.mark.parametrize(
    "name",
    [
        "tiny_qwen3",
        pytest.param("tiny_llama3", marks=pytest.mark.slow),
        pytest.param("tiny_qwen2", marks=pytest.mark.slow),
    ],
)
def test_export_of_random_params_matches_transformers(tmp_path, name):
    config = get_config(name)
    params = init_params(config, jax.random.PRNGKey(3))
    out = save_hf(str(tmp_path / name), config, params, tiny_tokenizer())
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    np.testing.assert_allclose(
        hf_logits(model, TOKENS), our_logits(config, params, TOKENS), atol=TOL, rtol=0
    )


@pytest.mark.slow  # torch oracle; the fast tier keeps test_logits_match_hf
def test_bf16_checkpoint_roundtrip(tmp_path):
    """bf16 safetensors (how real Qwen/Llama checkpoints ship) load into f32 or bf16 params."""
    config = get_config("tiny_llama")
    params = init_params(config, jax.random.PRNGKey(4))
    out = save_hf(str(tmp_path / "bf16"), config, params, tiny_tokenizer(), dtype="bfloat16")
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch.bfloat16
    c32, p32, _ = load(out)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params)
    for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(rounded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(
        our_logits(c32, p32, TOKENS), hf_logits(model.float(), TOKENS), atol=TOL, rtol=0
    )


@pytest.mark.slow  # huggingface_hub + torch oracle
def test_hub_id_loads_offline_from_a_prepared_cache(tmp_path, monkeypatch):
    """model.spec=owner/name[@rev] resolves through huggingface_hub; with HF_HUB_OFFLINE the
    prepared local cache is all it reads (no network), and a missing id names the fix."""
    import shutil

    import huggingface_hub.constants as hub_constants

    from fst_jax.errors import CheckpointError
    from fst_jax.models.hub import is_hub_id

    src = tmp_path / "src"
    model = make_hf("qwen2", str(src), seed=5)
    cache, commit = tmp_path / "hub", "a" * 40
    repo = cache / "models--fst-test--tiny-qwen2"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    assert is_hub_id("fst-test/tiny-qwen2") and is_hub_id("fst-test/tiny-qwen2@main")
    assert not is_hub_id(str(src)) and not is_hub_id("smollm2-135m-instruct")
    config, params, tok = load("fst-test/tiny-qwen2")
    ref_config, _, _ = load(str(src))
    assert config.name == "tiny-qwen2" and config.replace(name="src") == ref_config
    assert tok is not None
    ids = np.array([[3, 17, 99, 4]])
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    got, _ = forward(config, params, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=1e-4)
    with pytest.raises(CheckpointError, match=r"not in the local Hugging Face cache.*hf download"):
        load("fst-test/not-cached")
