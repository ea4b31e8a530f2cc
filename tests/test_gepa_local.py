"""The `local` reflection LM: the embedded SmolLM2 proposes a context through fst_jax's sampler.

Quality is not asserted (a 135M model); parsing and bookkeeping are. Run under the heavy lock:
`flock /tmp/fst_heavy.lock .venv/bin/python -m pytest tests/test_gepa_local.py -q`.
"""

from __future__ import annotations

import pytest

from fst_jax.chat import local_reflection_lm
from fst_jax.gepa import (
    GepaConfig,
    PopulationState,
    Reflector,
    export_top_k,
    get_reflection_lm,
    run_round,
)

SEED = "Answer the arithmetic question."
ANCHORS = {
    "a0": "What is 17+25?",
    "a1": "What is 9*8?",
    "a2": "What is 100-37?",
}


def _evaluate_factory(state, calls):
    """Scripted policy: the seed scores 0 everywhere, any other context 1 (forces an acceptance)."""

    def evaluate(cids, eids):
        calls.append(list(zip(cids, eids)))
        texts = [state.candidates[c].text for c in cids]
        scores = [0.0 if t == SEED else 1.0 for t in texts]
        fb = [
            f"Wrong: the answer to {ANCHORS[e]!r} was not given as 'Answer: <number>'."
            for e in eids
        ]
        outs = [f"I think the answer to {ANCHORS[e]} is 12." for e in eids]
        return scores, fb, outs

    return evaluate


@pytest.mark.slow
def test_local_smollm2_proposes_a_context_through_the_sampler():
    lm = local_reflection_lm(
        spec="smollm2-135m-instruct", max_new_tokens=96, temperature=0.7, seed=0
    )
    assert lm.collective and lm.fingerprint().startswith("local:local:")
    state = PopulationState.new([SEED], seed=0)
    calls: list = []
    reflector = Reflector(lm, require_fence=False, content_retries=2, max_context_chars=4000)
    budget = 2 * 3 + len(ANCHORS)  # exactly one iteration's worst case
    report = run_round(
        state, _evaluate_factory(state, calls), reflector, ANCHORS, budget, config=GepaConfig()
    )

    assert report.iterations == 1 and report.calls_used <= budget
    assert (
        lm.usage["requests"] >= 1
        and lm.usage["prompt_tokens"] > 100
        and state.counters["lm_requests"] >= 1
    )
    # SmolLM2 writes inside the prefilled fence; up to three sampled attempts yield a usable context.
    assert report.accepted == 1, report
    (child,) = report.new_candidates
    cand = state.candidates[child]
    assert (
        cand.parents == [0]
        and cand.text != SEED
        and 0 < len(cand.text) <= 4000
        and cand.birth_cycle == 0
    )
    assert report.calls_used == budget and state.scores[child] == dict.fromkeys(ANCHORS, 1.0)
    assert [t.id for t in export_top_k(state, 2)] == [child, 0]
    assert len(state.lm_cache) == lm.usage["requests"] == state.counters["lm_requests"]
    assert lm.usage["completion_tokens"] >= 1
    # The replies are cached in the state: replaying the round from the restored state is free.
    requests_before = lm.usage["requests"]
    replay = PopulationState.new([SEED], seed=0)
    replay.lm_cache = dict(state.lm_cache)
    report2 = run_round(
        replay, _evaluate_factory(replay, []), reflector, ANCHORS, budget, config=GepaConfig()
    )
    assert lm.usage["requests"] == requests_before
    assert [c.text for c in replay.candidates] == [c.text for c in state.candidates]
    assert report2.accepted == report.accepted


def test_sampler_backend_bookkeeping_on_a_tiny_random_model(tmp_path):
    """The same code path on tiny_llama (random weights): prefill, finish reasons, usage, cache."""
    import jax

    from fst_jax.gepa import load_template
    from fst_jax.models import get_config, init_params
    from fst_jax.models.random_init import tiny_tokenizer

    config = get_config("tiny_llama", max_position_embeddings=2048)
    params = init_params(config, jax.random.PRNGKey(0))
    tok = tiny_tokenizer()
    lm = local_reflection_lm(config, params, tok, max_new_tokens=12, seed=3)
    template = tmp_path / "short.md"
    template.write_text("Ctx: <curr_param>\nEx: <side_info>\n<edit_request>")
    reflector = Reflector(
        lm, template=load_template(str(template)), content_retries=1, require_fence=True
    )
    state = PopulationState.new(["Be brief."])
    recs = [{"Inputs": "1+1", "Generated Outputs": "3", "Feedback": "no"}]
    out = reflector.propose(state, "Be brief.", recs, salt="t")
    reply = lm.complete([{"role": "user", "content": "hi"}])
    assert reply.text.startswith("```\n") and reply.finish_reason in ("stop", "length")
    assert 1 <= reply.completion_tokens <= 12 and reply.prompt_tokens > 10
    if reply.finish_reason == "stop":  # stopped inside the prefilled fence: it was closed for it
        assert reply.text.rstrip().endswith("```")
    assert out.attempts == 2 or out.text is not None
    if out.text is None:
        assert out.skip_reason in ("truncated", "empty", "identical", "too_long")
    assert lm.usage["requests"] == out.attempts - out.cache_hits + 1
    assert state.counters["lm_requests"] == out.attempts and len(state.lm_cache) == out.attempts
    with pytest.raises(ValueError, match="needs a model"):
        local_reflection_lm(config=config)
    with pytest.raises(TypeError, match=r"fst_jax\.chat\.local_reflection_lm"):
        get_reflection_lm("local", spec="smollm2-135m-instruct")  # GEPA itself never loads models
    with pytest.raises(ValueError, match="collective"):
        Reflector(lm, cache_path=str(tmp_path / "c.jsonl"))
