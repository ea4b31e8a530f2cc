"""Splash attention (Pallas, interpret mode on CPU) against the XLA attention path.

Oracle: `xla_attention` applies the decoder's position rule literally (query at p reads keys at
0 <= pos <= p). Splash takes index-causal masking + padding segments; on every layout fst_jax
builds they must agree at real tokens — forward and gradients, fp32 — including GQA, left and
right padding, holes in the middle of a row (the prompt bank's composed rows), sequence lengths
that are not block multiples, a KV cache longer than the query (prefill), and a sharded mesh
(the kernel runs in a shard_map over rows and heads).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fst_jax import sharding
from fst_jax.models import attention
from fst_jax.models.config import get_config
from fst_jax.models.decoder import forward, init_cache, init_params

F32 = jnp.float32


def _positions(pads: list[tuple[int, int, int]], t: int) -> np.ndarray:
    """Rows of [left pad, real, hole, real, right pad] → positions with -1 at padding."""
    rows = []
    for left, hole_at, hole in pads:
        row = np.full(t, -1, np.int32)
        idx = [i for i in range(left, t) if not (hole_at <= i < hole_at + hole)]
        row[idx] = np.arange(len(idx))
        rows.append(row)
    return np.stack(rows)


def _qkv(key, b, t, s, h, kvh, hd):
    kq, kk, kv = jax.random.split(key, 3)
    return (
        jax.random.normal(kq, (b, t, h, hd), F32),
        jax.random.normal(kk, (b, s, kvh, hd), F32),
        jax.random.normal(kv, (b, s, kvh, hd), F32),
    )


def _mask(qpos, kvpos):
    return (kvpos[:, None, :] >= 0) & (kvpos[:, None, :] <= qpos[:, :, None])


@pytest.mark.parametrize(
    "t,h,kvh",
    [  # one case in the fast tier; padding and head-ratio cases in the slow one
        (128, 4, 2),
        pytest.param(40, 2, 1, marks=pytest.mark.slow),
        pytest.param(160, 4, 4, marks=pytest.mark.slow),
    ],
)
def test_splash_matches_xla_forward_and_grads(t, h, kvh):
    hd = 16
    pos = jnp.asarray(
        _positions([(0, t, 0), (5, t, 0), (3, t // 2, 7), (0, t, 0)], t)
    )  # plain, left-padded, hole in the middle, then right padding on the last row
    pos = pos.at[-1, t - 9 :].set(-1)
    q, k, v = _qkv(jax.random.key(t), pos.shape[0], t, t, h, kvh, hd)
    real = (pos >= 0)[:, :, None, None].astype(F32)
    w = jax.random.normal(jax.random.key(1), q.shape, F32) * real  # loss reads real tokens only

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * w)

    def xla(q, k, v):
        return attention.xla_attention(q, k, v, _mask(pos, pos), F32)

    def splash(q, k, v):
        return attention.splash_attention(q, k, v, pos, pos, F32, interpret=True)

    np.testing.assert_allclose(splash(q, k, v) * real, xla(q, k, v) * real, atol=2e-5, rtol=2e-5)
    g_x = jax.grad(lambda *a: loss(xla, *a), argnums=(0, 1, 2))(q, k, v)
    g_s = jax.grad(lambda *a: loss(splash, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_s, g_x, strict=True):
        assert float(jnp.abs(b).max()) > 0
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=5e-5)


def test_splash_prefill_into_a_longer_cache():
    """Query = the prompt, keys = a fresh cache of prompt + response length (unwritten = -1)."""
    t, s = 48, 200
    qpos = jnp.asarray(_positions([(0, t, 0), (11, t, 0)], t))
    kvpos = jnp.full((2, s), -1, jnp.int32).at[:, :t].set(qpos)
    q, k, v = _qkv(jax.random.key(3), 2, t, s, 4, 2, 8)
    real = (qpos >= 0)[:, :, None, None]
    ref = attention.xla_attention(q, k, v, _mask(qpos, kvpos), F32)
    out = attention.splash_attention(q, k, v, qpos, kvpos, F32, interpret=True)
    np.testing.assert_allclose(out * real, ref * real, atol=2e-5, rtol=2e-5)


@pytest.mark.slow  # splash (interpret mode) in a shard_map over 8 fake devices
def test_decoder_forward_and_prefill_with_splash_on_a_mesh():
    """The whole decoder with attention='splash' equals attention='xla' — training forward on a
    2×2×2 mesh (shard_map over rows and heads) and prefill into a KV cache."""
    base = get_config("tiny_qwen3", dtype="float32")
    params = init_params(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, base.vocab_size)
    pos = jnp.asarray(_positions([(0, 24, 0), (3, 24, 0), (0, 10, 4), (6, 24, 0)], 24))
    real = (pos >= 0)[..., None]
    ref = forward(base.replace(attention="xla"), params, tokens, pos)[0]
    mesh = sharding.make_mesh((2, 2, 2))
    cfg = base.replace(attention="splash")
    with jax.set_mesh(mesh):
        out = jax.jit(lambda p, t, q: forward(cfg, p, t, q)[0])(params, tokens, pos)
    np.testing.assert_allclose(out * real, ref * real, atol=1e-4, rtol=1e-4)
    cache = init_cache(base, 4, 40)
    ref_c = forward(base.replace(attention="xla"), params, tokens, pos, cache)[0]
    with jax.set_mesh(mesh):
        out_c = jax.jit(lambda p, t, q, c: forward(cfg, p, t, q, c)[0])(params, tokens, pos, cache)
    np.testing.assert_allclose(out_c * real, ref_c * real, atol=1e-4, rtol=1e-4)
    # Without a mesh on 8 devices an explicit "splash" runs the kernel unsharded.
    out_plain = forward(cfg, params, tokens, pos)[0]
    np.testing.assert_allclose(out_plain * real, ref * real, atol=1e-4, rtol=1e-4)


def test_implementation_names():
    assert attention.resolve("auto", "tpu") == "splash"
    assert attention.resolve("auto", "gpu") == "cudnn"
    assert attention.resolve("auto", "cpu") == "xla"
    with pytest.raises(ValueError, match="use one of"):
        attention.resolve("flash")
    with pytest.raises(ValueError, match="attention='flash'"):
        get_config("tiny_llama", attention="flash")
