"""Attention implementations behind one call: XLA einsums, splash attention (TPU), cuDNN (GPU).

The decoder's rule is position-based: query at position p reads key s iff 0 <= pos_s <= p, and
padding has position -1. XLA attention applies that rule literally with a [B, T, S] mask. The
fused kernels take an index-causal mask plus segment ids instead (padding → segment 0, tokens →
segment 1): the two agree whenever, within a row, the positions of real tokens increase with
their index — true of every layout fst_jax builds (left- or right-padded prompts, the prompt
bank's composed rows, training batches) — and, with a KV cache, when the call fills a fresh
cache from index 0 (the sampler's prefill). Outputs at padding queries differ (XLA: a uniform
average; kernels: attention among padding) and are never read.

`ModelConfig.attention` picks the implementation: "auto" (splash on TPU, `jax.nn.
dot_product_attention` on GPU, XLA elsewhere), "xla", "splash" or "cudnn". Decode steps (one
query token) always use XLA attention: the kernels are for long queries.

Splash attention is a Pallas kernel, which GSPMD cannot partition: under a mesh context
(`jax.set_mesh`) it runs in a `shard_map` over the batch axes (rows) and the tensor axis (heads).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
_LANES = 128  # splash blocks are multiples of 128 along both sequence axes


def resolve(name: str, backend: str | None = None) -> str:
    """The implementation "auto" stands for on `backend` (default: JAX's default backend)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention={name!r}; use one of {', '.join(IMPLEMENTATIONS)}")
    if name != "auto":
        return name
    backend = backend or jax.default_backend()
    return {"tpu": "splash", "gpu": "cudnn"}.get(backend, "xla")


def xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype: jnp.dtype
) -> jax.Array:
    """q [B, T, H, hd], k/v [B, S, KVH, hd], mask [B, T, S] → [B, T, H, hd] f32 (GQA groups)."""
    b, t, h, hd = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, hd).astype(dtype)
    scores = jnp.einsum(
        "btkgd,bskd->bkgts", qg, k.astype(dtype), preferred_element_type=jnp.float32
    ) / math.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(
        "bkgts,bskd->btkgd",
        probs.astype(dtype),
        v.astype(dtype),
        preferred_element_type=jnp.float32,
    )
    return out.reshape(b, t, h, hd)


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype: jnp.dtype
) -> jax.Array:
    """`jax.nn.dot_product_attention` (cuDNN's fused kernel when it applies: GPU, 16-bit inputs;
    XLA's otherwise), with the decoder's position mask."""
    if jnp.dtype(dtype).itemsize != 2:
        return xla_attention(q, k, v, mask, dtype)
    out = jax.nn.dot_product_attention(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask[:, None], implementation=None
    )
    return out.astype(jnp.float32)


def _pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    pad = size - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _block(n: int) -> int:
    return next(b for b in (512, 256, 128) if n % b == 0)


def _splash_kernel(heads: int, t: int, s: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    mask = sa.MultiHeadMask([sa.CausalMask((t, s)) for _ in range(heads)])
    bq, bkv = _block(t), _block(s)
    sizes = sa.BlockSizes(
        block_q=bq,
        block_kv_compute=bkv,
        block_kv=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    # Built per trace (its mask tables become constants of the trace that builds it).
    return sa.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash_local(q, k, v, q_seg, kv_seg, *, interpret: bool):
    """Per-shard splash: q [B, T, H, hd], k/v [B, S, KVH, hd] (T, S multiples of 128)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    kernel = _splash_kernel(q.shape[2], q.shape[1], k.shape[1], interpret)

    def one(qr, kr, vr, qs, ks):  # one row, heads-major as the kernel wants
        seg = sa.SegmentIds(qs, ks)
        out = kernel(qr.transpose(1, 0, 2), kr.transpose(1, 0, 2), vr.transpose(1, 0, 2), seg)
        return out.transpose(1, 0, 2)

    return jax.vmap(one)(q, k, v, q_seg, kv_seg)


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
    dtype: jnp.dtype,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Splash attention with the decoder's masking (see the module docstring for when it equals
    the position rule). q [B, T, H, hd], k/v [B, S, KVH, hd] → [B, T, H, hd] f32."""
    b, t, h, hd = q.shape
    s, kvh = k.shape[1], k.shape[2]
    tp, sp = -(-t // _LANES) * _LANES, -(-s // _LANES) * _LANES
    q = _pad_to((q / math.sqrt(hd)).astype(dtype), 1, tp)
    k = _pad_to(k.astype(dtype), 1, sp)
    v = _pad_to(v.astype(dtype), 1, sp)
    # Padding (position -1, and the rows' extension to a block multiple) is segment 0.
    q_seg = _pad_to((q_positions >= 0).astype(jnp.int32), 1, tp)
    kv_seg = _pad_to((kv_positions >= 0).astype(jnp.int32), 1, sp)
    fn = functools.partial(_splash_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        from fst_jax import mesh_axes as sharding  # axis names only (a leaf: no import cycle)

        P = jax.sharding.PartitionSpec
        shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
        rows = sharding.BATCH_AXES if b % shards == 0 else None
        tensor = mesh.shape[sharding.TENSOR]
        heads = sharding.TENSOR if h % tensor == 0 and kvh % tensor == 0 else None
        qs, ss = P(rows, None, heads, None), P(rows, None)
        fn = jax.shard_map(
            fn, mesh=mesh, in_specs=(qs, qs, qs, ss, ss), out_specs=qs, check_vma=False
        )
    out = fn(q, k, v, q_seg, kv_seg)
    return out[:, :t].astype(jnp.float32)


def attend(
    impl: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
    mask: jax.Array,
    dtype: jnp.dtype,
) -> jax.Array:
    """The decoder's attention: `impl` from ModelConfig.attention; one-token queries use XLA.

    Splash needs the mesh to shard its kernel (`jax.set_mesh`) once there is more than one
    device: "auto" falls back to XLA without one; an explicit "splash" runs the kernel unsharded
    (correct, but XLA gathers its inputs onto every device)."""
    auto = impl == "auto"
    impl = resolve(impl)
    no_mesh = jax.sharding.get_abstract_mesh().empty
    if auto and impl == "splash" and no_mesh and jax.device_count() > 1:
        impl = "xla"
    if impl == "xla" or q.shape[1] == 1:
        return xla_attention(q, k, v, mask, dtype)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, mask, dtype)
    return splash_attention(q, k, v, q_positions, kv_positions, dtype, interpret=_interpret())


def _interpret() -> bool:
    """Pallas interpret mode unless the kernel is lowered for TPU: the default backend is TPU, or
    the mesh set with `jax.set_mesh` holds TPU devices (compiling for a TPU topology from a CPU
    host, as the AOT tool does). Interpret mode runs the kernel's numerics with XLA ops (tests)."""
    if jax.default_backend() == "tpu":
        return False
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return getattr(device, "platform", None) != "tpu"
