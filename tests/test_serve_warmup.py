"""fst-serve's warm-up compiles what streamed requests run (`engine.decode_chunk`), so the first
streamed request at a warmed-up shape compiles nothing; oracle: the jitted functions' own
compiled-variant counts (`sampling.num_compilations`)."""

import openai
import pytest

from fst_jax.sampling import engine, num_compilations
from fst_jax.serve import load_spec, serving

pytestmark = pytest.mark.slow  # compiles every batch bucket of a tiny model


def test_first_streamed_request_after_warmup_compiles_nothing():
    model = load_spec("random:tiny_llama", seed=5)
    chunks_before = engine.decode_chunk._cache_size()
    with serving(model, max_batch=2, default_max_tokens=8, stream_chunk=4, warmup=True) as srv:
        assert engine.decode_chunk._cache_size() > chunks_before  # warm-up ran decode_chunk
        compiled = num_compilations()
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=120)
        for temperature in (0.7, 0.0):  # sampled and greedy: both warmed up
            pieces = client.chat.completions.create(
                model=next(iter(srv.app.names)), messages=[{"role": "user", "content": "Hi there"}],
                temperature=temperature, stream=True,
            )  # fmt: skip
            chunks = list(pieces)
            assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert srv.app.engine.stats["calls"] >= 2
        assert num_compilations() == compiled
