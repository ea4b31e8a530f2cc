"""`load(spec)`: one entry point for HF dirs, GGUF files, Hub ids and the embedded default model."""

from __future__ import annotations

import os
from typing import Any

from fst_jax.models.config import ModelConfig
from fst_jax.models.embedded import CONFIG_NAME, EMBEDDED_NAME, embedded_checkpoint_dir
from fst_jax.models.gguf_loader import load_gguf
from fst_jax.models.hf import CheckpointError, load_hf_dir
from fst_jax.models.hub import is_hub_id, snapshot_dir
from fst_jax.models.tokenizer import load_tokenizer_dir


def is_embedded(spec: str) -> bool:
    return spec.strip().lower().replace("_", "-") == EMBEDDED_NAME


def load(
    spec: str,
    *,
    dtype: str | None = None,
    shardings: Any = None,
    require_tokenizer: bool = True,
    **model_overrides: Any,
) -> tuple[ModelConfig, Any, Any]:
    """Load `(config, params, tokenizer)` from an HF dir, a `.gguf` file, a Hugging Face Hub id
    (``owner/name[@revision]``, see `fst_jax.models.hub`) or `smollm2-135m-instruct`.

    dtype: sets both `param_dtype` and compute `dtype` (e.g. "bfloat16"); finer control via
    `model_overrides` (any `ModelConfig` field: `scan_layers=True`, `remat="layer"`, ...).
    shardings: None (default device), one `jax.sharding.Sharding`, or a pytree of them matching
    the params of the resulting config; each tensor is read and `device_put` straight there.
    require_tokenizer: if False, an HF dir without tokenizer files loads with tokenizer None.
    """
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"spec must be a path or model name, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if dtype is not None:
        model_overrides.setdefault("param_dtype", dtype)
        model_overrides.setdefault("dtype", dtype)
    if is_embedded(spec):
        model_overrides.setdefault("name", CONFIG_NAME)
        spec = embedded_checkpoint_dir()
    elif is_hub_id(spec):
        model_overrides.setdefault("name", spec.partition("@")[0].rsplit("/", 1)[-1])
        spec = snapshot_dir(spec)
    if os.path.isdir(spec):
        config, params = load_hf_dir(spec, shardings, **model_overrides)
        if not require_tokenizer and not os.path.exists(os.path.join(spec, "tokenizer.json")):
            return config, params, None
        tokenizer = load_tokenizer_dir(spec)
        _check_vocab(config, tokenizer, spec)
        return config, params, tokenizer
    if os.path.isfile(spec):
        config, params, tokenizer = load_gguf(spec, shardings, **model_overrides)
        _check_vocab(config, tokenizer, spec)
        return config, params, tokenizer
    raise CheckpointError(
        f"Cannot load {spec!r}: no such directory or file. Pass an HF checkpoint directory "
        f"(config.json + *.safetensors), a .gguf file, a Hub id (owner/name) or {EMBEDDED_NAME!r}."
    )


def _check_vocab(config: ModelConfig, tokenizer: Any, where: str) -> None:
    """A tokenizer emitting ids past the embedding table would index garbage: refuse it."""
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise CheckpointError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size}; they come from different models. Use the matching tokenizer."
        )
