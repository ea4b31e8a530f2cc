"""The `openai` reflection backend over real HTTP against a fault-injecting local server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_gepa_fixtures import ScriptedPolicy, fenced

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


class FaultServer:
    """OpenAI `/v1/chat/completions` on 127.0.0.1 that plays a script of behaviours, one per request."""

    def __init__(self):
        self.script: list[str] = []
        self.requests: list[dict] = []
        self.default = "ok"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                body = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n))
                assert self.path == "/v1/chat/completions", self.path
                server.requests.append(req)
                behaviour = server.script.pop(0) if server.script else server.default
                if behaviour == "timeout":
                    time.sleep(1.0)
                    return self._send(200, _completion(fenced("late")))
                if behaviour in ("429", "500", "503", "401"):
                    return self._send(
                        int(behaviour), {"error": {"message": f"injected {behaviour}", "type": "x"}}
                    )
                content = {
                    "ok": fenced("Solve the task. Check arithmetic twice."),
                    "empty": "",
                    "unfenced": "You should check arithmetic twice.",
                    "overlong": fenced("x" * 20000),
                    "identical": fenced(PARENT),
                }.get(behaviour)
                if behaviour == "length":
                    return self._send(
                        200, _completion(fenced("Solve the task. Chec"), finish="length")
                    )
                if behaviour.startswith("text:"):
                    content = behaviour[5:]
                return self._send(200, _completion(content))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(content, finish="stop"):
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


@pytest.fixture(scope="module")
def server():
    s = FaultServer()
    yield s
    s.close()


def _lm(server, **kw):
    kw = {
        "timeout": 0.4,
        "max_retries": 2,
        "backoff_base": 0.001,
        "api_key_env": "FST_TEST_NO_KEY",
        **kw,
    }
    return get_reflection_lm("openai", model="fake", base_url=server.base_url, **kw)


def _propose(server, script, *, content_retries=1, max_chars=8000, salt="s", state=None, **kw):
    server.script = list(script)
    server.requests.clear()
    lm = _lm(server, **kw)
    state = state or PopulationState.new([PARENT])
    refl = Reflector(lm, content_retries=content_retries, max_context_chars=max_chars)
    return refl.propose(state, PARENT, RECORDS, salt=salt), lm, state


def test_registry_names():
    assert {"openai", "local"} <= set(list_reflection_lms())
    with pytest.raises(ValueError, match="unknown reflection LM"):
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


def test_non_retryable_error_is_loud(server):
    with pytest.raises(RuntimeError, match="HTTP 401"):
        _propose(server, ["401"])
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
    server.script, server.requests[:] = ["ok"], []
    Reflector(_lm(server), cache_path=path).propose(
        PopulationState.new([PARENT]), PARENT, RECORDS, salt="k"
    )
    server.script, server.requests[:] = ["500"] * 5, []
    out = Reflector(_lm(server), cache_path=path).propose(
        PopulationState.new([PARENT]), PARENT, RECORDS, salt="k"
    )
    assert out.text is not None and server.requests == []


def test_round_over_http_with_faults_counts_skips_and_keeps_pool(server):
    state = PopulationState.new([PARENT], seed=1)
    policy = ScriptedPolicy(state, "http", bias={"Solve the task. Check arithmetic twice.": 0.5})
    server.requests.clear()
    server.script = [
        "429",
        "ok",
        "unfenced",
        "unfenced",
        "timeout",
        "timeout",
        "timeout",
        "empty",
        "ok",
    ]
    server.default = "identical"
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
