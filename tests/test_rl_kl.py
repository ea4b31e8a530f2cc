"""`measure_kl` in row micro-batches vs a dense numpy oracle and vs the unchunked `kl_sums`."""

import jax
import numpy as np
import pytest
from fixtures import random_rollouts

from fst_jax import sharding
from fst_jax.models import forward, get_config, init_params
from fst_jax.rl import make_measure_kl
from fst_jax.rl.kl import LOG_RATIO_CLAMP, kl_sums, micro_batch_rows

CFG = get_config("tiny_llama")
ROWS = 8


class _Batch:
    def __init__(self, r):
        self.tokens, self.positions = r["tokens"], r["positions"]
        self.completion_mask = r["completion_mask"]


@pytest.fixture(scope="module")
def setup():
    params = init_params(CFG, jax.random.PRNGKey(0))
    # A base model that differs everywhere, so every estimator is far from zero.
    base = jax.tree.map(lambda x: x + 0.05 * np.sign(np.asarray(x)), params)
    r = random_rollouts(3, batch=ROWS, seq_len=12, vocab_size=CFG.vocab_size, group_size=2)
    return params, base, _Batch(r)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def dense_oracle(params, base, batch):
    """Token means of k1/k2/k3 and the full-vocab KL from dense [B, S, V] logits in float64."""
    lp_all = _log_softmax(np.asarray(forward(CFG, params, batch.tokens, batch.positions)[0], float))
    lq_all = _log_softmax(np.asarray(forward(CFG, base, batch.tokens, batch.positions)[0], float))
    # index t scores token t with the logits at t - 1; index 0 is a prompt token (mask 0)
    y = batch.tokens[:, 1:, None]
    lp = np.take_along_axis(lp_all[:, :-1], y, -1)[..., 0]
    lq = np.take_along_axis(lq_all[:, :-1], y, -1)[..., 0]
    full = (np.exp(lp_all[:, :-1]) * (lp_all[:, :-1] - lq_all[:, :-1])).sum(-1)
    m = batch.completion_mask[:, 1:] > 0
    log_r = np.clip(lq - lp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    per = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": np.expm1(log_r) - log_r, "full": full}
    out = {k: v[m].mean() for k, v in per.items()}
    out["tokens"] = m.sum()
    return out


def unchunked(params, base, batch):
    """The computation before micro-batching: one `kl_sums` over every row."""
    sums = jax.jit(lambda p, b, t, q, m: kl_sums(CFG, p, b, t, q, m, chunk=5))(
        params, base, batch.tokens, batch.positions, batch.completion_mask
    )
    return {k: float(s) / float(c) for k, (s, c) in sums.items()}


def _host(out):
    return {k: float(v) for k, v in out.items()}


def test_micro_batch_rows():
    assert micro_batch_rows(32, 8, 1) == (8, 4)
    assert micro_batch_rows(32, 6, 4) == (8, 4)  # rounded up to whole shards
    assert micro_batch_rows(5, 8, 1) == (5, 1)  # never more than the batch
    assert micro_batch_rows(6, 4, 1) == (4, 2)  # 2 empty rows pad the last micro-batch
    assert micro_batch_rows(8, 1, 8) == (8, 1)
    with pytest.raises(ValueError, match="rows_per_chunk=0"):
        micro_batch_rows(8, 0, 1)


@pytest.mark.parametrize("rows_per_chunk", [1, 3, 8, 64])
def test_chunked_measure_kl_matches_dense_oracle_and_unchunked(setup, rows_per_chunk):
    params, base, batch = setup
    measure = make_measure_kl(
        CFG, sharding.single_device_mesh(), chunk=5, rows_per_chunk=rows_per_chunk
    )
    got = _host(measure(params, base, batch))
    ref = dense_oracle(params, base, batch)
    old = unchunked(params, base, batch)
    assert got["tokens"] == ref["tokens"] == batch.completion_mask.sum()
    for k in ("k1", "k2", "k3", "full"):
        assert abs(ref[k]) > 1e-3, (k, ref)  # the check below is not vacuous
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(got[k], old[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_chunked_measure_kl_sharded_equals_single_device(setup):
    """On a (2, 2, 2) mesh (4 batch shards) micro-batches are rounded up to 4 rows."""
    params, base, batch = setup
    single = _host(
        make_measure_kl(CFG, sharding.single_device_mesh(), chunk=5)(params, base, batch)
    )
    mesh = sharding.make_mesh((2, 2, 2))
    got = _host(make_measure_kl(CFG, mesh, chunk=5, rows_per_chunk=1)(params, base, batch))
    for k in ("k1", "k2", "k3", "full", "tokens"):
        np.testing.assert_allclose(got[k], single[k], rtol=2e-5, atol=1e-7, err_msg=k)


def test_measure_kl_bad_rows_per_chunk():
    with pytest.raises(ValueError, match="rows_per_chunk=0"):
        make_measure_kl(CFG, sharding.single_device_mesh(), rows_per_chunk=0)
