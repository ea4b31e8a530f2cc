"""Export fst_jax params as an HF checkpoint dir that `transformers` loads (`save_hf`).

Tensors go through the same table as loading (`hf.tensor_specs`), fetched from devices one at a
time and flushed shard by shard, so exporting never needs a second full copy on the host.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import jax
import numpy as np

from fst_jax.models.config import ModelConfig
from fst_jax.models.decoder import param_shapes, to_kernel_layout, unstack_layers
from fst_jax.models.hf import CheckpointError, _leaf, config_to_hf, tensor_specs, to_hf

_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(size: int | str) -> int:
    """`"2GB"`, `"500MB"`, `"64KiB"` or a byte count → bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", size.upper())
    if not m:
        raise ValueError(f"max_shard_size={size!r}; use bytes or e.g. '2GB', '500MB'")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


def _check_params(config: ModelConfig, params: Any) -> Any:
    if "layers" in params:
        params = unstack_layers(config, params)
    want = jax.tree.structure(param_shapes(config.replace(scan_layers=False)))
    got = jax.tree.structure(params)
    if want != got:
        raise CheckpointError(
            f"params do not match config {config.name!r}: expected tree {want}, got {got}. "
            "Pass the config the params were built with."
        )
    return params


def _to_host(x: Any) -> np.ndarray:
    """A (possibly multi-host sharded) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def save_hf(
    path: str,
    config: ModelConfig,
    params: Any,
    tokenizer: Any = None,
    *,
    max_shard_size: int | str = "2GB",
    dtype: str | None = None,
) -> str:
    """Write config.json, model.safetensors (sharded above `max_shard_size`) and tokenizer files.

    `dtype` (default: the config's param_dtype) is the stored dtype. Stale `model*.safetensors`
    files in `path` are removed first so the dir never mixes two saves. On multi-host meshes
    every process must call this (arrays are gathered); only process 0 writes. Returns `path`.
    """
    from safetensors.numpy import save_file

    # Checkpoints store kernels [in, out]; params laid out for the CPU sampler are turned back.
    config, params = to_kernel_layout(config, params, "in_out")
    params = _check_params(config, params)
    writer = jax.process_index() == 0  # every process gathers; only process 0 writes
    limit = parse_size(max_shard_size)
    np_dtype = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
    if not writer:
        for s in tensor_specs(config):
            _to_host(_leaf(params, s.path))  # take part in the collective gathers
        return path
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "model*.safetensors")) + glob.glob(
        os.path.join(path, "model.safetensors.index.json")
    ):
        os.remove(stale)

    # Group tensors into shards by size, then write each shard with only its tensors on host.
    specs = tensor_specs(config)
    shards: list[list[Any]] = [[]]
    size = 0
    for s in specs:
        nbytes = int(np.prod(_leaf(params, s.path).shape)) * np_dtype.itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for s in shard:
            w = _to_host(_leaf(params, s.path))
            tensors[s.hf_name] = to_hf(s.kind, w).astype(np_dtype)
            weight_map[s.hf_name] = fname
            total += tensors[s.hf_name].nbytes
        save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
        del tensors
    if n > 1:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    # config.json written directly (transformers' config classes import torch when it is
    # installed; the package must not). Tests check transformers loads it.
    hf_config: dict[str, Any] = {"model_type": config.arch, **config_to_hf(config)}
    hf_config["dtype"] = np_dtype.name
    hf_config["use_cache"] = True
    if tokenizer is not None:
        hf_config.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
