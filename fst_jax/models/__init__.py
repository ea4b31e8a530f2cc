"""Decoder models: configs, pure forward, loading and export (see DESIGN.md, models/)."""

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

__all__ = [
    "ModelConfig",
    "RopeScaling",
    "default_positions",
    "forward",
    "get_config",
    "init_cache",
    "init_params",
    "named_configs",
    "param_logical_axes",
    "param_shapes",
    "stack_layers",
    "unembed",
    "unstack_layers",
]
