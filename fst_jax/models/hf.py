"""HF checkpoints ↔ fst_jax: config translation, tensor-name/layout mapping, safetensors reading.

One table (`tensor_specs`) says, for a `ModelConfig`, which HF tensor feeds which leaf of our
param tree and how its layout changes (torch `nn.Linear` stores [out, in]; we store [in, ...]
with heads split out). Loading (`assemble_params`) and export (`export.py`) both walk this table,
so the two directions cannot drift apart. Tensors come from a `TensorSource` (safetensors files
here, a GGUF file in `gguf_loader.py`) and are read, converted and placed one leaf at a time:
with target shardings each leaf goes straight to its devices, so the whole model never sits on
the host twice.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterable
from typing import Any, Protocol

import jax
import numpy as np

from fst_jax import errors as _errors
from fst_jax.models.config import ModelConfig, RopeScaling
from fst_jax.models.decoder import param_shapes

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Buffers some older checkpoints carry that are recomputed, never learned.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


# A checkpoint that cannot be loaded as asked: the one class shared with the run checkpointer.
CheckpointError = _errors.CheckpointError


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict[str, Any], name: str = "hf_model", **overrides: Any) -> ModelConfig:
    """`config.json` contents (transformers v4 or v5 spelling) → `ModelConfig`."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"Unknown model_type {model_type!r} in config.json; fst_jax supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama/SmolLM2, Qwen2/2.5, Qwen3). Use a "
            "checkpoint of one of these families or add the architecture to fst_jax/models."
        )
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [k for k in required if hf.get(k) is None]
    if missing:
        raise CheckpointError(
            f"config.json lacks {', '.join(missing)}; re-save it with transformers "
            "(`AutoConfig.from_pretrained(...).save_pretrained(dir)`)."
        )
    if hf.get("mlp_bias"):
        raise CheckpointError("config.json sets mlp_bias=true, which fst_jax does not support.")
    if hf.get("use_sliding_window"):
        raise CheckpointError(
            "config.json sets use_sliding_window=true; fst_jax implements full attention only. "
            "Set use_sliding_window=false if the model was trained without it."
        )
    if model_type == "qwen2":
        attention_bias = True  # Qwen2 always has q/k/v biases and no o_proj bias
    elif hf.get("attention_bias"):
        raise CheckpointError(
            f"config.json sets attention_bias=true for model_type={model_type!r} (this adds an "
            "o_proj bias), which fst_jax does not support."
        )
    else:
        attention_bias = False
    heads = int(hf["num_attention_heads"])
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    rope = {**legacy, **rope}
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling: RopeScaling | None
    if rope_type == "default":
        scaling = None
    elif rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                rope.get("original_max_position_embeddings", 8192)
            ),
        )
    elif rope_type == "linear":
        scaling = RopeScaling(factor=float(rope["factor"]), rope_type="linear")
    else:
        raise CheckpointError(
            f"Unsupported rope type {rope_type!r} in config.json; fst_jax implements default, "
            "linear and llama3 RoPE."
        )
    fields = dict(
        name=name,
        arch=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qk_norm=model_type == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """`ModelConfig` → the keyword arguments of the matching transformers config class."""
    if config.arch == "qwen2" and not config.attention_bias:
        raise CheckpointError(
            "Qwen2 checkpoints always carry q/k/v biases; set attention_bias=True"
        )
    if config.arch != "qwen2" and config.attention_bias:
        raise CheckpointError(
            f"arch={config.arch!r} with attention_bias=True has no HF equivalent (HF adds an "
            "o_proj bias too); export it as arch='qwen2' or drop the biases."
        )
    if config.qk_norm != (config.arch == "qwen3"):
        raise CheckpointError(f"qk_norm={config.qk_norm} has no HF equivalent for {config.arch}")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    rs = config.rope_scaling
    if rs is not None:
        rope = {"rope_type": rs.rope_type, "rope_theta": config.rope_theta, "factor": rs.factor}
        if rs.rope_type == "llama3":
            rope.update(
                low_freq_factor=rs.low_freq_factor,
                high_freq_factor=rs.high_freq_factor,
                original_max_position_embeddings=rs.original_max_position_embeddings,
            )
    out = dict(
        architectures=[HF_ARCHITECTURES[config.arch]],
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rope_parameters=rope,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act="silu",
    )
    if config.arch in ("llama", "qwen3"):
        out["attention_bias"] = False
    if config.arch == "llama":
        out["mlp_bias"] = False
    return out


# ----------------------------------------------------------------------------- tensor table


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor ↔ one leaf of our (unrolled) param tree."""

    hf_name: str
    path: tuple[
        str, ...
    ]  # path in the unrolled tree, e.g. ("layers_3", "mlp", "up_proj", "kernel")
    kind: str  # "copy" | "linear" | "qkv" | "qkv_bias" | "o"


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every tensor an HF checkpoint of this config holds, in file order."""
    specs = [TensorSpec("model.embed_tokens.weight", ("embed_tokens", "embedding"), "copy")]
    for i in range(config.num_layers):
        hf, us = f"model.layers.{i}.", f"layers_{i}"
        specs.append(
            TensorSpec(hf + "input_layernorm.weight", (us, "input_layernorm", "scale"), "copy")
        )
        for p in ("q_proj", "k_proj", "v_proj"):
            specs.append(
                TensorSpec(f"{hf}self_attn.{p}.weight", (us, "self_attn", p, "kernel"), "qkv")
            )
            if config.attention_bias:
                specs.append(
                    TensorSpec(f"{hf}self_attn.{p}.bias", (us, "self_attn", p, "bias"), "qkv_bias")
                )
        specs.append(
            TensorSpec(hf + "self_attn.o_proj.weight", (us, "self_attn", "o_proj", "kernel"), "o")
        )
        if config.qk_norm:
            for p in ("q_norm", "k_norm"):
                specs.append(
                    TensorSpec(f"{hf}self_attn.{p}.weight", (us, "self_attn", p, "scale"), "copy")
                )
        specs.append(
            TensorSpec(
                hf + "post_attention_layernorm.weight",
                (us, "post_attention_layernorm", "scale"),
                "copy",
            )
        )
        for p in ("gate_proj", "up_proj", "down_proj"):
            specs.append(TensorSpec(f"{hf}mlp.{p}.weight", (us, "mlp", p, "kernel"), "linear"))
    specs.append(TensorSpec("model.norm.weight", ("norm", "scale"), "copy"))
    if not config.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head", "kernel"), "linear"))
    return specs


def hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape of a tensor whose fst_jax shape is `ours`."""
    if kind == "copy":
        return tuple(ours)
    if kind == "linear":
        return (ours[1], ours[0])
    if kind == "qkv":  # ours [D, H, hd] ← HF [H*hd, D]
        return (ours[1] * ours[2], ours[0])
    if kind == "qkv_bias":  # ours [H, hd] ← HF [H*hd]
        return (ours[0] * ours[1],)
    if kind == "o":  # ours [H, hd, D] ← HF [D, H*hd]
        return (ours[2], ours[0] * ours[1])
    raise ValueError(f"unknown tensor kind {kind!r}")


def to_ours(kind: str, w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    """HF layout → fst_jax layout."""
    if kind in ("copy", "qkv_bias"):
        return w.reshape(ours)
    if kind == "linear":
        return np.ascontiguousarray(w.T)
    if kind in ("qkv", "o"):
        return np.ascontiguousarray(w.T).reshape(ours)
    raise ValueError(f"unknown tensor kind {kind!r}")


def to_hf(kind: str, w: np.ndarray) -> np.ndarray:
    """fst_jax layout → HF layout (inverse of `to_ours`)."""
    if kind == "copy":
        return w
    if kind == "qkv_bias":
        return w.reshape(-1)
    if kind == "linear":
        return np.ascontiguousarray(w.T)
    if kind == "qkv":
        return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
    if kind == "o":
        return np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T)
    raise ValueError(f"unknown tensor kind {kind!r}")


# ----------------------------------------------------------------------------- sources


class TensorSource(Protocol):
    """Where HF-named, HF-layout tensors come from (safetensors files, a GGUF file, ...)."""

    description: str

    def names(self) -> set[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...


def _safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(
                f"{index} is not a valid safetensors index ({e}); re-save the checkpoint."
            ) from e
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not os.path.exists(os.path.join(path, f))]
        if absent:
            raise CheckpointError(
                f"{path}: shard file(s) {', '.join(absent)} listed in model.safetensors.index.json "
                "are missing; copy the complete checkpoint."
            )
        return [os.path.join(path, f) for f in files]
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise CheckpointError(
            f"No *.safetensors files in {path}; an HF checkpoint dir needs config.json plus "
            "model.safetensors (or shards with model.safetensors.index.json)."
        )
    return files


class SafetensorsSource:
    """All tensors of an HF checkpoint dir, read lazily one at a time as numpy (memory-mapped)."""

    def __init__(self, path: str):
        from safetensors import SafetensorError, safe_open

        self.description = path
        self._handles: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        for file in _safetensors_files(path):
            try:
                handle = safe_open(file, framework="numpy")
                keys = list(handle.keys())
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(
                    f"{file} is truncated or corrupt ({e}); re-download or re-save the checkpoint."
                ) from e
            self._handles[file] = handle
            for k in keys:
                if k in self._where:
                    raise CheckpointError(
                        f"Tensor {k} appears in both {self._where[k]} and {file}; the checkpoint "
                        "mixes two saves. Remove the stale file."
                    )
                self._where[k] = file

    def names(self) -> set[str]:
        return set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        from safetensors import SafetensorError

        try:
            return self._handles[self._where[name]].get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"Could not read {name} from {self._where[name]} ({e}); the file is corrupt. "
                "Re-download or re-save the checkpoint."
            ) from e


# ----------------------------------------------------------------------------- assembly


def _listing(items: Iterable[str], limit: int = 8) -> str:
    items = sorted(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_source(config: ModelConfig, source: TensorSource) -> list[TensorSpec]:
    """Fail with named tensors unless the source holds exactly what `config` needs, in shape."""
    specs = tensor_specs(config)
    shapes = param_shapes(config.replace(scan_layers=False))
    expected = {s.hf_name for s in specs}
    have = source.names()
    missing = expected - have
    unexpected = {
        n for n in have - expected if not n.endswith(_IGNORED_SUFFIXES) and n != "lm_head.weight"
    }
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_listing(unexpected)}")
        raise CheckpointError(
            f"{source.description} does not match config {config.name!r} ({config.arch}, "
            f"{config.num_layers} layers, tie_word_embeddings={config.tie_word_embeddings}, "
            f"attention_bias={config.attention_bias}, qk_norm={config.qk_norm}): "
            + "; ".join(parts)
            + ". The config disagrees with the weights or the checkpoint is incomplete; fix "
            "config.json (or the GGUF metadata) or use the complete checkpoint. Nothing was loaded."
        )
    if "lm_head.weight" in have and config.tie_word_embeddings:
        tied_ok = source.shape("lm_head.weight") == source.shape("model.embed_tokens.weight") and (
            np.array_equal(source.get("lm_head.weight"), source.get("model.embed_tokens.weight"))
        )
        if not tied_ok:
            raise CheckpointError(
                f"{source.description}: config says tie_word_embeddings=true but lm_head.weight "
                "differs from model.embed_tokens.weight. Set tie_word_embeddings=false in "
                "config.json."
            )
    bad = []
    for s in specs:
        ours = _leaf(shapes, s.path).shape
        want, got = hf_shape(s.kind, ours), source.shape(s.hf_name)
        if tuple(got) != tuple(want):
            bad.append(f"{s.hf_name} has shape {tuple(got)}, config implies {tuple(want)}")
    if bad:
        raise CheckpointError(
            f"{source.description}: shapes disagree with config {config.name!r} (hidden_size="
            f"{config.hidden_size}, heads={config.num_heads}/{config.num_kv_heads}, head_dim="
            f"{config.head_dim}, intermediate_size={config.intermediate_size}, vocab_size="
            f"{config.vocab_size}): "
            + "; ".join(bad[:6])
            + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")
            + ". Fix config.json (or the GGUF metadata) to match the weights. Nothing was loaded."
        )
    return specs


def _leaf(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _read(source: TensorSource, spec: TensorSpec, ours: tuple[int, ...], dtype) -> np.ndarray:
    w = source.get(spec.hf_name)
    if not np.issubdtype(w.dtype, np.floating) and w.dtype.name != "bfloat16":
        raise CheckpointError(
            f"{spec.hf_name} has dtype {w.dtype}; expected floating point weights"
        )
    w = to_ours(spec.kind, w, ours).astype(dtype)
    if not np.all(np.isfinite(w.astype(np.float32) if w.dtype.name == "bfloat16" else w)):
        raise CheckpointError(
            f"{source.description}: {spec.hf_name} contains NaN/inf; the checkpoint is corrupt."
        )
    return w


def _check_shardings(shardings: Any, target: Any) -> Any:
    if shardings is None:
        return jax.tree.map(lambda _: None, target)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda _: shardings, target)
    want = jax.tree.structure(target)
    got = jax.tree.structure(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if want != got:
        raise CheckpointError(
            "`shardings` must be a pytree of jax.sharding.Sharding with exactly the params' "
            f"structure (for scan_layers={'layers' in target}); got {got}, expected {want}. "
            "Build it from fst_jax.models.param_logical_axes(config) of the same config."
        )
    return shardings


def assemble_params(config: ModelConfig, source: TensorSource, shardings: Any = None) -> Any:
    """Read, convert and place every parameter, one leaf at a time.

    `shardings`: None (default device), one `Sharding` for all leaves, or a pytree of them
    matching the params of `config` (stacked `layers` when `config.scan_layers`).
    """
    specs = check_source(config, source)
    target = param_shapes(config)
    flat_shardings = _check_shardings(shardings, target)
    unrolled = param_shapes(config.replace(scan_layers=False))
    by_path = {s.path: s for s in specs}
    dtype = np.dtype(jax.numpy.dtype(config.param_dtype))
    out: dict[str, Any] = {}

    def place(arr: np.ndarray, sharding: Any) -> jax.Array:
        return jax.device_put(arr, sharding) if sharding is not None else jax.device_put(arr)

    leaves = jax.tree_util.tree_flatten_with_path(target)[0]
    for keypath, leaf in leaves:
        path = tuple(k.key for k in keypath)
        sharding = _leaf(flat_shardings, path)
        if path[0] == "layers":  # scanned: stack layer i's tensors along a new leading axis
            stack = np.empty(leaf.shape, dtype)
            for i in range(config.num_layers):
                p = (f"layers_{i}", *path[1:])
                stack[i] = _read(source, by_path[p], _leaf(unrolled, p).shape, dtype)
            arr = stack
        else:
            arr = _read(source, by_path[path], leaf.shape, dtype)
        _set(out, path, place(arr, sharding))
        del arr
    return out


def read_hf_config(path: str) -> dict[str, Any]:
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise CheckpointError(f"{path} has no config.json; it is not an HF checkpoint directory.")
    try:
        with open(cfg_file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); re-save the config.") from e


def load_hf_dir(path: str, shardings: Any = None, **overrides: Any) -> tuple[ModelConfig, Any]:
    """An HF checkpoint dir → (config, params). Tokenizer loading is in `tokenizer.py`."""
    name = overrides.pop("name", os.path.basename(os.path.normpath(path)))
    config = config_from_hf(read_hf_config(path), name=name, **overrides)
    return config, assemble_params(config, SafetensorsSource(path), shardings)
