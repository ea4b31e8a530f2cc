"""GGUF loading on tiny files written here with `gguf.GGUFWriter`, against transformers' GGUF reader.

The files are written the way llama.cpp's converter writes them (llama Q/K rows permuted for
interleaved RoPE, Q8_0 / F16 / F32 tensors, byte-level BPE metadata), and transformers (torch)
reads the same file as the oracle. Also covers the embedded-model cache on a tiny stand-in GGUF:
reuse, and rebuild after corruption.
"""

from __future__ import annotations

import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from test_models_hf import make_hf

from fst_jax.models import CheckpointError, forward, load
from fst_jax.models import embedded as emb
from fst_jax.models.random_init import CHATML_TEMPLATE, tiny_tokenizer

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
EXTRA_TOKENS = ["Ġt", "he", "Ġthe"]  # with merges, so the BPE merge path is exercised
MERGES = ["Ġ t", "h e", "Ġt he"]
PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "default"}


def _gguf_name(hf: str) -> str:
    if hf in _GGUF_NAMES:
        return _GGUF_NAMES[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_LAYER[rest]}"


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's Q/K permutation (rotate-half → interleaved RoPE)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(path: str, model: torch.nn.Module, arch: str) -> None:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tok = tiny_tokenizer()
    tokens = tok.convert_ids_to_tokens(list(range(len(tok)))) + EXTRA_TOKENS
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE[arch])
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHATML_TEMPLATE)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp writes no output.weight for tied embeddings
        a = t.float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            a = _llamacpp_permute(a, heads)
        if a.ndim == 2 and "embed" not in name:
            w.add_tensor(
                _gguf_name(name),
                gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        elif a.ndim == 2:
            w.add_tensor(_gguf_name(name), a.astype(np.float16))
        else:
            w.add_tensor(_gguf_name(name), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for kind in ("llama", "qwen2", "qwen3"):
        # transformers' GGUF reader ignores qwen3.attention.key_length (assumes head_dim 128)
        over = {"head_dim": 128} if kind == "qwen3" else None
        model = make_hf(kind, str(root / f"hf_{kind}"), seed=5, overrides=over)
        path = str(root / f"{kind}.gguf")
        write_gguf(path, model, kind)
        out[kind] = path
    return out


TOKENS = np.random.default_rng(1).integers(0, 262, size=(2, 33)).astype(np.int32)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_gguf_logits_and_tokenizer_match_transformers(gguf_files, kind):
    path = gguf_files[kind]
    d, f = os.path.dirname(path), os.path.basename(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    ref_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    config, params, tok = load(path)
    assert config.arch == kind and config.head_dim == {"qwen3": 128}.get(kind, 16)
    assert config.tie_word_embeddings == (kind == "qwen2") and config.attention_bias == (
        kind == "qwen2"
    )
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(TOKENS).long()).logits.numpy()
    got = np.asarray(forward(config, params, jnp.asarray(TOKENS))[0])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for s in [
        "the other then",
        "  the\n\nthe 12 345",
        "<|im_start|>user\nthe<|im_end|>",
        "héllo 🙂",
    ]:
        assert tok.encode(s) == ref_tok.encode(s), s
    assert tok.encode(" the") == [261]  # merged via "Ġt he"
    msgs = [{"role": "user", "content": "the"}]
    kw = dict(tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(msgs, **kw) == ref_tok.apply_chat_template(msgs, **kw)


def test_unsupported_gguf_arch(tmp_path):
    path = str(tmp_path / "g.gguf")
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="GGUF architecture 'gemma3' is not supported"):
        load(path)


def test_embedded_cache_reuse_and_rebuild(gguf_files, tmp_path, monkeypatch, caplog):
    """The cache logic of the embedded model, on a tiny stand-in GGUF (fast)."""
    monkeypatch.setattr(emb, "smollm2_gguf_path", lambda: gguf_files["qwen3"])
    monkeypatch.setenv("FST_JAX_CACHE", str(tmp_path))
    _, params, tok = load("smollm2-135m-instruct")
    path = emb.embedded_checkpoint_dir()
    assert path.startswith(str(tmp_path)) and emb.verify_cache(path) is None
    assert sorted(os.listdir(path)) == sorted(
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            emb.MANIFEST,
        ]
    )
    weights = os.path.join(path, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    _, again, tok2 = load("smollm2-135m-instruct")
    assert os.stat(weights).st_mtime_ns == stamp  # reused, not rebuilt
    assert tok2.encode("the other") == tok.encode("the other")
    emb_w = np.asarray(params["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(np.asarray(again["embed_tokens"]["embedding"]), emb_w)

    def flip_byte():
        with open(weights, "r+b") as f:
            f.seek(os.path.getsize(weights) - 100)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x55]))

    def truncate():
        with open(weights, "r+b") as f:
            f.truncate(1000)

    def drop_manifest():
        os.remove(os.path.join(path, emb.MANIFEST))

    for corrupt, reason in ((flip_byte, "sha256"), (truncate, "size"), (drop_manifest, "manifest")):
        corrupt()
        assert reason in emb.verify_cache(path)
        caplog.clear()
        with caplog.at_level("WARNING"):
            _, rebuilt, _ = load("smollm2-135m-instruct")
        assert "corrupt" in caplog.text and emb.verify_cache(path) is None
        np.testing.assert_array_equal(np.asarray(rebuilt["embed_tokens"]["embedding"]), emb_w)
