"""The policy as its own reflection LM: an FST run with ``gepa.reflection_lm=openai`` whose base
URL is an fst-serve of a tiny policy — every reflective proposal goes over loopback HTTP."""

import pytest
from test_controller_e2e import tiny_config

from fst_jax import controller, metrics
from fst_jax.gepa.openai_lm import OpenAIReflectionLM
from fst_jax.serve import load_spec, serving


@pytest.mark.slow
def test_fst_run_reflects_through_fst_serve(tmp_path, monkeypatch):
    monkeypatch.delenv("FST_TEST_NO_KEY", raising=False)
    # Reflection prompts are long; the served tiny policy gets room for them.
    policy = load_spec("random:tiny_llama,max_position_embeddings=4096", seed=5)
    with serving(policy, max_batch=4, default_max_tokens=32) as srv:
        c = tiny_config("fst")
        c.gepa.reflection_lm = "openai"
        c.gepa.reflection_base_url = srv.url
        c.gepa.reflection_model = policy.name
        c.gepa.reflection_api_key_env = "FST_TEST_NO_KEY"  # unset: local servers need no key
        c.gepa.reflection_max_tokens = 32
        ctl = controller.Controller(c, tmp_path)
        lm = ctl.reflector.lm
        assert isinstance(lm, OpenAIReflectionLM) and lm.base_url == srv.url
        summary = ctl.run()
        stats = dict(srv.app.engine.stats)
    assert summary["steps"] == 4
    # Every reflection request reached the server as one row and came back with usage counts.
    assert lm.usage["requests"] >= 1 and lm.usage["retries"] == 0 and not lm.faults
    assert stats["rows"] == lm.usage["requests"]
    assert 1 <= lm.usage["completion_tokens"] <= 32 * lm.usage["requests"]
    assert lm.usage["prompt_tokens"] > 100 * lm.usage["requests"]  # the reflection template
    recs = metrics.read_metrics(tmp_path)
    assert [r["step"] for r in recs if "gepa/calls_used" in r] == [0, 2]
