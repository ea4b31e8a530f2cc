"""Pure-functional decoder for the Llama / Qwen2 / Qwen3 family (Flax linen, no hidden state).

Positions drive everything: a token at position p attends to every cached token whose position is
in [0, p]. Padding has position -1 and is never attended to. This one rule covers training on
right-padded batches, prefill of a padded batch with per-row lengths, and one-token decode steps
that write into a shared KV-cache slot, so the sampler never needs per-row cache indices.

Params are a plain pytree (`{"params": ...}` stripped); logical axis names for every parameter
come from `param_logical_axes(config)`, mapped to mesh axes by `fst_jax.sharding`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fst_jax.models import attention
from fst_jax.models.config import ModelConfig

Params = Any
Cache = dict[str, Any]

# Logical axis names (mapped to mesh axes in fst_jax/sharding.py).
BATCH, LENGTH, EMBED, VOCAB, MLP = "batch", "length", "embed", "vocab", "mlp"
HEADS, KV_HEADS, HEAD_DIM, LAYERS, NORM = "heads", "kv_heads", "head_dim", "layers", "norm"
CACHE_LENGTH = "cache_length"


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init):
    cfg: ModelConfig = module.config
    return module.param(
        name, nn.with_logical_partitioning(init, axes), shape, _dtype(cfg.param_dtype)
    )


def _dense_init(fan_in: int):
    return nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))


def _einsum(spec: str, x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Matmul in `dtype` with f32 accumulation (fast bf16 on CPU and TPU), result in f32."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


class RMSNorm(nn.Module):
    config: ModelConfig
    dim: int
    axis_name: str = NORM

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (self.dim,), (self.axis_name,), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return x32 * jax.lax.rsqrt(var + self.config.rms_norm_eps) * scale.astype(jnp.float32)


def _contracted_dims(spec: str) -> int:
    """Number of leading kernel dims contracted in an einsum spec like "btd,dhk->bthk" (here 1)."""
    lhs, w = spec.split("->")[0].split(",")
    n = 0
    while n < len(w) and w[n] in lhs:
        n += 1
    if lhs[len(lhs) - n :] != w[:n]:
        raise ValueError(f"{spec!r}: the contracted dims must end the input and start the kernel")
    return n


class Linear(nn.Module):
    """A projection with an explicit einsum; kernel shape/axes given, optional bias on out dims."""

    config: ModelConfig
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    fan_in: int
    bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, spec: str) -> jax.Array:
        """`spec` documents the contraction; it runs as ONE 2-D matmul [rows, K] @ [K, N].

        XLA:CPU lowers a 3-D einsum's weight gradient (contracting batch and time) to a fused
        elementwise + transpose that is slow; the 2-D form makes the MLP backward ~1.8x faster on
        CPU and is free on TPU (the reshapes only merge/split contiguous dims).
        """
        n_in = _contracted_dims(spec)
        k = math.prod(self.shape[:n_in])
        if x.shape[x.ndim - n_in :] != self.shape[:n_in]:
            raise ValueError(f"input {x.shape} does not end with the contracted dims of {spec!r}")
        out_shape = (*x.shape[: x.ndim - n_in], *self.shape[n_in:])
        dt = _dtype(self.config.dtype)
        x2 = x.reshape(-1, k).astype(dt)
        if self.config.kernel_layout == "out_in":
            shape = (*self.shape[n_in:], *self.shape[:n_in])
            axes = (*self.axes[n_in:], *self.axes[:n_in])
            w = _param(self, "kernel", shape, axes, _dense_init(self.fan_in))
            w2 = w.reshape(-1, k).astype(dt)
            y = jax.lax.dot_general(
                x2, w2, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )
        else:
            w = _param(self, "kernel", self.shape, self.axes, _dense_init(self.fan_in))
            y = jnp.dot(x2, w.reshape(k, -1).astype(dt), preferred_element_type=jnp.float32)
        y = y.reshape(out_shape)
        if self.bias:
            b = _param(self, "bias", self.shape[1:], self.axes[1:], nn.initializers.zeros)
            y = y + b.astype(jnp.float32)
        return y


class Embed(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.embedding = _param(
            self,
            "embedding",
            (cfg.vocab_size, cfg.hidden_size),
            (VOCAB, EMBED),
            nn.initializers.normal(stddev=1.0),
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(jnp.float32)

    def attend(self, x: jax.Array) -> jax.Array:
        return _einsum("btd,vd->btv", x, self.embedding, _dtype(self.config.dtype))


def rope_inv_freq(config: ModelConfig) -> jax.Array:
    """Inverse RoPE frequencies, with Llama-3 frequency-dependent scaling when configured."""
    hd = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    rs = config.rope_scaling
    if rs is None:
        return inv
    if rs.rope_type == "linear":
        return inv / rs.factor
    if rs.rope_type != "llama3":
        raise ValueError(f"Unsupported rope_scaling type {rs.rope_type!r}; use llama3 or linear")
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    mid = (1 - smooth) * inv / rs.factor + smooth * inv
    out = jnp.where(wavelen > low_wavelen, inv / rs.factor, inv)
    is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_mid, mid, out)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE (HF convention). x: [B, T, H, hd] f32, positions: [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: Cache | None,
        write_index: jax.Array | None,
        kv_positions: jax.Array | None = None,
    ) -> tuple[jax.Array, Cache | None]:
        cfg = self.config
        d, h, kvh, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt = _dtype(cfg.dtype)

        def proj(name: str, heads: int, head_axis: str) -> jax.Array:
            lin = Linear(
                cfg,
                (d, heads, hd),
                (EMBED, head_axis, HEAD_DIM),
                d,
                bias=cfg.attention_bias,
                name=name,
            )
            return lin(x, "btd,dhk->bthk")

        q = proj("q_proj", h, HEADS)
        k = proj("k_proj", kvh, KV_HEADS)
        v = proj("v_proj", kvh, KV_HEADS)
        if cfg.qk_norm:
            q = RMSNorm(cfg, hd, HEAD_DIM, name="q_norm")(q)
            k = RMSNorm(cfg, hd, HEAD_DIM, name="k_norm")(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)

        new_cache = None
        if cache is not None:
            kc = jax.lax.dynamic_update_slice_in_dim(
                cache["k"], k.astype(cache["k"].dtype), write_index, axis=1
            )
            vc = jax.lax.dynamic_update_slice_in_dim(
                cache["v"], v.astype(cache["v"].dtype), write_index, axis=1
            )
            new_cache = {"k": kc, "v": vc}
            k, v = kc, vc

        kv_pos = positions if kv_positions is None else kv_positions
        out = attention.attend(cfg.attention, q, k, v, positions, kv_pos, mask, dt)
        o_proj = Linear(cfg, (h, hd, d), (HEADS, HEAD_DIM, EMBED), h * hd, name="o_proj")
        return o_proj(out, "bthk,hkd->btd"), new_cache


class FeedForward(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        d, f = cfg.hidden_size, cfg.intermediate_size
        gate = Linear(cfg, (d, f), (EMBED, MLP), d, name="gate_proj")(x, "btd,df->btf")
        up = Linear(cfg, (d, f), (EMBED, MLP), d, name="up_proj")(x, "btd,df->btf")
        down = Linear(cfg, (f, d), (MLP, EMBED), f, name="down_proj")
        return down(jax.nn.silu(gate) * up, "btf,fd->btd")


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, cache: Cache | None, ctx: dict[str, jax.Array]
    ) -> tuple[jax.Array, Cache | None]:
        cfg = self.config
        h = RMSNorm(cfg, cfg.hidden_size, name="input_layernorm")(x)
        attn, new_cache = Attention(cfg, name="self_attn")(
            h, ctx["positions"], ctx["mask"], cache, ctx.get("write_index"), ctx["kv_positions"]
        )
        x = x + attn
        h = RMSNorm(cfg, cfg.hidden_size, name="post_attention_layernorm")(x)
        x = x + FeedForward(cfg, name="mlp")(h)
        return x, new_cache


def _layer_cls(cfg: ModelConfig) -> type[nn.Module]:
    if cfg.remat == "none":
        return DecoderLayer
    policy = (
        None if cfg.remat == "layer" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    )
    return nn.remat(DecoderLayer, policy=policy, prevent_cse=not cfg.scan_layers)


class Decoder(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: Cache | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, Cache | None]:
        cfg = self.config
        d = cfg.hidden_size
        embed = Embed(cfg, name="embed_tokens")
        x = embed(tokens)

        if cache is None:
            kv_pos = positions
            write_index = None
            new_pos = None
        else:
            write_index = cache["index"]
            new_pos = jax.lax.dynamic_update_slice_in_dim(
                cache["pos"], positions.astype(jnp.int32), write_index, axis=1
            )
            kv_pos = new_pos
        # mask[b, t, s]: query t may read key s iff 0 <= pos_s <= pos_t (position-based causality).
        mask = (kv_pos[:, None, :] >= 0) & (kv_pos[:, None, :] <= positions[:, :, None])
        ctx = {"positions": positions, "mask": mask, "kv_positions": kv_pos}
        if write_index is not None:
            ctx["write_index"] = write_index

        layer_cls = _layer_cls(cfg)
        layer_caches = None if cache is None else cache["layers"]
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: LAYERS},
            )
            x, new_layers = scanned(cfg, name="layers")(x, layer_caches, ctx)
        else:
            new_layers = []
            for i in range(cfg.num_layers):
                lc = None if layer_caches is None else layer_caches[i]
                x, nc = layer_cls(cfg, name=f"layers_{i}")(x, lc, ctx)
                new_layers.append(nc)
        x = RMSNorm(cfg, d, name="norm")(x)

        new_cache = None
        if cache is not None:
            new_cache = {
                "layers": new_layers,
                "pos": new_pos,
                "index": write_index + tokens.shape[1],
            }
        if return_hidden:
            return x, new_cache
        if cfg.tie_word_embeddings:
            return embed.attend(x), new_cache
        lm_head = Linear(cfg, (d, cfg.vocab_size), (EMBED, VOCAB), d, name="lm_head")
        return lm_head(x, "btd,dv->btv"), new_cache


# ----------------------------------------------------------------------------- public functions


def default_positions(tokens: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """Positions 0..T-1 for right-padded rows; -1 beyond each row's length."""
    b, t = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if lengths is None:
        return pos
    return jnp.where(pos < lengths[:, None], pos, -1)


def forward(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    cache: Cache | None = None,
    *,
    return_hidden: bool = False,
) -> tuple[jax.Array, Cache | None]:
    """Pure forward: tokens [B, T] int32 → (logits [B, T, V] f32 or hidden [B, T, D], cache).

    positions [B, T] int32 (default 0..T-1); -1 marks padding. With a cache (from `init_cache`)
    the block is written at `cache["index"]` and attends to everything cached so far.
    """
    if positions is None:
        positions = default_positions(tokens)
    if tokens.shape != positions.shape:
        raise ValueError(f"tokens {tokens.shape} and positions {positions.shape} differ in shape")
    return Decoder(config).apply(
        {"params": params}, tokens, positions, cache, return_hidden=return_hidden
    )


def unembed(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Final hidden states [..., D] → logits [..., V] in f32 (used for chunked log-probs)."""
    dt = _dtype(config.dtype)
    if config.tie_word_embeddings:
        w = params["embed_tokens"]["embedding"]
        return jnp.einsum(
            "...d,vd->...v", hidden.astype(dt), w.astype(dt), preferred_element_type=jnp.float32
        )
    w = params["lm_head"]["kernel"]
    spec = "...d,vd->...v" if config.kernel_layout == "out_in" else "...d,dv->...v"
    return jnp.einsum(spec, hidden.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)


# Kernels whose leading (in_out) dims contracted with the input number more than one.
_CONTRACTED = {"o_proj": 2}


def to_kernel_layout(
    config: ModelConfig, params: Params, layout: str
) -> tuple[ModelConfig, Params]:
    """Params re-laid out for `layout` ("in_out" | "out_in") and the config that reads them.

    Only projection kernels move (a transpose each: call it under jit, once per sampler call, not
    per step); embeddings, norms and biases keep their shape. Checkpoints and the trainer use
    "in_out"; the CPU sampler uses "out_in" (torch's [out, in] order), on which XLA:CPU's
    small-batch matmuls run ~1.8x faster.
    """
    if layout not in ("in_out", "out_in"):
        raise ValueError(f"layout={layout!r}; use 'in_out' or 'out_in'")
    if layout == config.kernel_layout:
        return config, params
    lead = 1 if config.scan_layers else 0

    def move(path, x):
        names = [getattr(p, "key", None) for p in path]
        if names[-1] != "kernel":
            return x
        n_in = _CONTRACTED.get(names[-2], 1)
        stacked = lead if names[0] == "layers" else 0
        dims = list(range(stacked, x.ndim))
        # in_out -> out_in rotates the n_in contracted dims to the end; the reverse rotates back.
        split = n_in if layout == "out_in" else len(dims) - n_in
        return jnp.transpose(x, (*range(stacked), *dims[split:], *dims[:split]))

    return config.replace(kernel_layout=layout), jax.tree_util.tree_map_with_path(move, params)


def _abstract_init(config: ModelConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(
        lambda: Decoder(config).init(jax.random.PRNGKey(0), tokens, jnp.zeros_like(tokens))
    )


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Random params (plain arrays, no partitioning boxes)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.jit(lambda r: Decoder(config).init(r, tokens, jnp.zeros_like(tokens)))(rng)
    return nn.unbox(variables["params"])


def param_shapes(config: ModelConfig) -> Params:
    """ShapeDtypeStruct pytree of the params, without allocating anything."""
    return nn.unbox(_abstract_init(config)["params"])


def param_logical_axes(config: ModelConfig) -> Params:
    """Pytree (same structure as params) of `PartitionSpec`s of logical axis names."""
    return nn.get_partition_spec(_abstract_init(config)["params"])


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> Cache:
    """Empty KV cache: per-layer list (unrolled) or stacked [L, ...] arrays (scan_layers)."""
    dt = _dtype(dtype or config.dtype)
    shape = (batch, max_len, config.num_kv_heads, config.head_dim)
    if config.scan_layers:
        full = (config.num_layers, *shape)
        layers: Any = {"k": jnp.zeros(full, dt), "v": jnp.zeros(full, dt)}
    else:
        layers = [
            {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(config.num_layers)
        ]
    return {
        "layers": layers,
        "pos": jnp.full((batch, max_len), -1, jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def stack_layers(config: ModelConfig, params: Params) -> Params:
    """Unrolled params (layers_0..layers_{L-1}) → scanned layout (`layers` with leading L axis)."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    per_layer = [params[f"layers_{i}"] for i in range(config.num_layers)]
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    return out


def unstack_layers(config: ModelConfig, params: Params) -> Params:
    """Scanned layout → unrolled layout (inverse of `stack_layers`)."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(config.num_layers):
        out[f"layers_{i}"] = jax.tree.map(functools.partial(lambda i, x: x[i], i), params["layers"])
    return out
