"""The `openai` reflection backend over real HTTP against a fault-injecting local server."""

from __future__ import annotations

import fault_server
import pytest
from fault_server import FaultServer
from fixtures import ScriptedPolicy

from fst_jax.gepa import (
    GepaConfig,
    PopulationState,
    Reflector,
    get_reflection_lm,
    list_reflection_lms,
    run_round,
)
from fst_jax.gepa.openai_lm import OpenAIReflectionLM

PARENT = "Solve the task."
RECORDS = [{"Inputs": "2+2?", "Generated Outputs": "5", "Feedback": "expected 4"}]


@pytest.fixture(scope="module")
def server():
    s = FaultServer(hang_s=1.5)
    yield s
    s.close()


def _lm(server, **kw):
    kw = {
        "timeout": 0.8,  # generous: a loaded CI machine must not turn a reply into a timeout
        "max_retries": 2,
        "backoff_base": 0.001,
        "api_key_env": "FST_TEST_NO_KEY",
        **kw,
    }
    return get_reflection_lm("openai", model="fake", base_url=server.base_url, **kw)


def _propose(server, script, *, content_retries=1, max_chars=8000, salt="s", state=None, **kw):
    server.reset(script)
    lm = _lm(server, **kw)
    state = state or PopulationState.new([PARENT])
    refl = Reflector(lm, content_retries=content_retries, max_context_chars=max_chars)
    return refl.propose(state, PARENT, RECORDS, salt=salt), lm, state


def test_registry_names():
    assert {"openai", "local"} <= set(list_reflection_lms())
    with pytest.raises(ValueError, match=r"Unknown reflection LM 'gpt-oracle'"):
        get_reflection_lm("gpt-oracle")


def test_success_and_usage(server):
    out, lm, state = _propose(server, ["ok"])
    assert out.text == "Solve the task. Check arithmetic twice." and out.skip_reason is None
    assert lm.usage == {"requests": 1, "retries": 0, "prompt_tokens": 11, "completion_tokens": 7}
    assert state.counters["lm_prompt_tokens"] == 11 and state.counters["lm_requests"] == 1
    req = server.requests[0]
    assert req["model"] == "fake" and req["max_tokens"] == 4096
    assert "expected 4" in req["messages"][0]["content"] and PARENT in req["messages"][0]["content"]


@pytest.mark.parametrize(
    ("script", "retries"), [(["429", "ok"], 1), (["500", "503", "ok"], 2), (["timeout", "ok"], 1)]
)
def test_transient_faults_are_retried(server, script, retries):
    out, lm, _ = _propose(server, script)
    assert out.text is not None
    assert lm.usage["retries"] == retries and lm.usage["requests"] == retries + 1
    assert len(server.requests) == retries + 1


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("429", "lm_rate_limited"), ("500", "lm_http_500"), ("timeout", "lm_timeout")],
)
def test_persistent_transport_faults_become_counted_skips(server, behaviour, reason):
    out, lm, state = _propose(server, [behaviour] * 3)
    assert out.text is None and out.skip_reason == reason
    assert lm.usage["requests"] == 3 and lm.usage["retries"] == 2
    assert state.lm_cache == {}  # nothing cached for a failed request: a rerun asks again


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("empty", "empty"),
        ("unfenced", "unfenced"),
        ("overlong", "too_long"),
        ("identical", "identical"),
        ("length", "truncated"),
    ],
)
def test_content_faults_retry_then_skip(server, behaviour, reason):
    # One bad reply, then a good one: the corrective follow-up fixes it.
    out, _, _ = _propose(server, [behaviour, "ok"], max_chars=5000)
    assert out.text == "Solve the task. Check arithmetic twice." and out.attempts == 2
    follow_up = server.requests[1]["messages"]
    assert [m["role"] for m in follow_up] == [
        "user",
        "assistant",
        "user",
    ] and "could not be used" in follow_up[2]["content"]
    # Persistently bad: skipped and the reason reported.
    out, _, _ = _propose(server, [behaviour] * 2, max_chars=5000)
    assert out.text is None and out.skip_reason == reason and out.attempts == 2


def test_non_retryable_status_is_a_logged_skip_without_retry(server, caplog):
    out, lm, state = _propose(server, ["401", "ok"])
    assert out.text is None and out.skip_reason == "lm_http_401"
    assert lm.usage["requests"] == 1 and lm.usage["retries"] == 0 and len(server.requests) == 1
    assert lm.faults == {"http_401": 1} and state.counters["lm_fault_http_401"] == 1
    assert "API key" in caplog.text and "retrying cannot fix this" in caplog.text
    with pytest.raises(ValueError, match="is not set"):
        OpenAIReflectionLM("gpt-x", api_key_env="FST_TEST_NO_KEY")


def test_cache_means_a_replay_does_not_pay_twice(server, tmp_path):
    out1, _, state = _propose(server, ["ok"], salt="iteration:4")
    assert len(server.requests) == 1 and len(state.lm_cache) == 1
    # Same request at the same place in the run (e.g. after restoring the state): served from cache.
    restored = PopulationState.loads(state.dumps())
    out2, lm2, _ = _propose(server, ["500"] * 5, salt="iteration:4", state=restored)
    assert (
        out2.text == out1.text
        and out2.cache_hits == 1
        and server.requests == []
        and lm2.usage["requests"] == 0
    )
    # The same question at a later iteration samples afresh.
    _propose(server, ["ok"], salt="iteration:5", state=restored)
    assert len(server.requests) == 1
    # Write-through file cache: survives losing the in-memory state entirely.
    path = str(tmp_path / "replies.jsonl")
    server.reset(["ok"])
    Reflector(_lm(server), cache_path=path).propose(
        PopulationState.new([PARENT]), PARENT, RECORDS, salt="k"
    )
    server.reset(["500"] * 5)
    out = Reflector(_lm(server), cache_path=path).propose(
        PopulationState.new([PARENT]), PARENT, RECORDS, salt="k"
    )
    assert out.text is not None and server.requests == []


def test_round_over_http_with_faults_counts_skips_and_keeps_pool(server):
    state = PopulationState.new([PARENT], seed=1)
    policy = ScriptedPolicy(state, "http", bias={"Solve the task. Check arithmetic twice.": 0.5})
    server.reset([
        "429",
        "ok",
        "unfenced",
        "unfenced",
        "timeout",
        "timeout",
        "timeout",
        "empty",
        "ok",
    ], default="identical")  # fmt: skip
    try:
        refl = Reflector(_lm(server), content_retries=1)
        report = run_round(
            state, policy, refl, {f"e{i}": f"q{i}" for i in range(4)}, 60, config=GepaConfig()
        )
    finally:
        server.default = "ok"
    assert report.skipped_lm >= 2
    assert report.skip_reasons.get("unfenced") == 1 and report.skip_reasons.get("lm_timeout") == 1
    assert report.skip_reasons.get("identical", 0) >= 1
    assert (
        report.iterations
        == report.accepted + report.rejected + report.skipped_perfect + report.skipped_lm
    )
    assert state.candidates[0].text == PARENT and all(
        c.text != PARENT for c in state.candidates[1:]
    )
    assert report.calls_used <= 60 and state.counters["lm_retries"] >= 1


@pytest.mark.parametrize("behaviour", sorted(fault_server.TRANSPORT))
def test_every_failure_mode_is_a_typed_counted_outcome(server, behaviour):
    """A 200 that is not a chat completion, a dropped socket, a non-2xx, a huge reply: each is
    retried (when retrying can help) and then skipped under its own reason — never raised."""
    reason = fault_server.TRANSPORT[behaviour]
    retried = behaviour in fault_server.RETRIED
    out, lm, state = _propose(server, [behaviour] * 3, max_retries=2)
    assert out.text is None and out.skip_reason == f"lm_{reason}"
    tries = 3 if retried else 1
    assert [b for b, _ in server.log] == [behaviour] * tries
    assert lm.usage["requests"] == tries and lm.usage["retries"] == tries - 1
    assert lm.faults == {reason: tries} and state.counters[f"lm_fault_{reason}"] == tries
    assert state.lm_cache == {}  # a failed request is not cached: a rerun asks again
    # Once, then a good reply: retried faults recover within the same proposal.
    out, lm, _ = _propose(server, [behaviour, "ok"], max_retries=2)
    assert (out.text is not None) == retried


def test_retry_after_is_honoured(server):
    waits = []
    lm = _lm(server, backoff_base=7.0, backoff_max=30.0, sleep=waits.append)
    server.reset(["429_retry_after", "500", "ok"])
    out = Reflector(lm).propose(PopulationState.new([PARENT]), PARENT, RECORDS, salt="r")
    assert out.text is not None
    assert waits == [0.0, 14.0]  # Retry-After: 0, then the exponential 7·2^1 (attempt 1)
    assert lm.usage["retries"] == 2


def test_reply_cache_is_bounded_and_holds_no_rambling(server):
    """Rejected replies are stored clipped (with their verdict) and the cache keeps at most
    max_cache_entries entries, so the population JSON stays small however the endpoint rambles."""
    state = PopulationState.new([PARENT])
    lm = _lm(server)
    refl = Reflector(lm, content_retries=1, max_context_chars=500, max_cache_entries=3)
    for i in range(4):
        server.reset(["overlong", "overlong"])
        out = refl.propose(state, PARENT, RECORDS, salt=f"it{i}")
        assert out.skip_reason == "too_long"
    assert len(state.lm_cache) == 3
    assert all(len(e["text"]) <= 500 + 2000 + 40 for e in state.lm_cache.values())
    assert all(e["fault"] == "too_long" for e in state.lm_cache.values())
    assert len(state.dumps()) < 20_000  # 8 replies of 20 kB each would be > 160 kB
    # The clipped text is what the follow-up quoted, so a replay rebuilds the same requests and
    # is served entirely from the cache.
    restored = PopulationState.loads(state.dumps())
    server.reset(default="500")
    out = Reflector(_lm(server), content_retries=1, max_context_chars=500).propose(
        restored, PARENT, RECORDS, salt="it3"
    )
    assert out.skip_reason == "too_long" and out.cache_hits == 2 and server.log == []
    # A usable reply wrapped in a long ramble is stored as just its fenced context.
    server.reset(["text:" + "chatter " * 2000 + "```\nBe careful.\n```"])
    state2 = PopulationState.new([PARENT])
    out = Reflector(_lm(server), max_context_chars=500).propose(state2, PARENT, RECORDS, salt="x")
    (entry,) = state2.lm_cache.values()
    assert out.text == "Be careful." and len(entry["text"]) < 100
    server.reset(default="500")
    again = Reflector(_lm(server), max_context_chars=500).propose(
        PopulationState.loads(state2.dumps()), PARENT, RECORDS, salt="x"
    )
    assert again.text == "Be careful." and again.cache_hits == 1


def test_truncated_cache_file_line_is_ignored(server, tmp_path):
    path = tmp_path / "replies.jsonl"
    server.reset(["ok"])
    Reflector(_lm(server), cache_path=str(path)).propose(
        PopulationState.new([PARENT]), PARENT, RECORDS, salt="k"
    )
    with open(path, "a") as f:
        f.write('{"key": "abc", "entry": {"te')  # a crash mid-write
    server.reset(["ok"])
    out = Reflector(_lm(server), cache_path=str(path)).propose(
        PopulationState.new([PARENT]), PARENT, RECORDS, salt="k"
    )
    assert out.text is not None and server.log == []
