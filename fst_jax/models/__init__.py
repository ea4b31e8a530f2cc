"""Decoder models: configs, pure forward, loading and export (layers: ARCHITECTURE.md)."""

from fst_jax.models.config import ModelConfig, RopeScaling, get_config, named_configs
from fst_jax.models.decoder import (
    default_positions,
    forward,
    init_cache,
    init_params,
    param_logical_axes,
    param_shapes,
    stack_layers,
    unembed,
    unstack_layers,
)
from fst_jax.models.embedded import EMBEDDED_NAME, smollm2_gguf_path
from fst_jax.models.export import save_hf
from fst_jax.models.hf import CheckpointError
from fst_jax.models.loading import load

__all__ = [
    "EMBEDDED_NAME",
    "CheckpointError",
    "ModelConfig",
    "RopeScaling",
    "default_positions",
    "forward",
    "get_config",
    "init_cache",
    "init_params",
    "load",
    "named_configs",
    "param_logical_axes",
    "param_shapes",
    "save_hf",
    "smollm2_gguf_path",
    "stack_layers",
    "unembed",
    "unstack_layers",
]
