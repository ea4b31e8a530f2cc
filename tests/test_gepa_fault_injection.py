"""Real GEPA rounds against a loopback endpoint that cycles through every failure mode.

The reflection LM is the real `openai` backend over HTTP; the fault server (tests/fault_server.py)
answers each request with the next behaviour of a cycle over all of them: timeouts, dropped
sockets, 429 (with and without Retry-After), 5xx, 401/404, truncated JSON, an HTML page, JSON that
is not a chat completion, a huge reply, and the content faults (empty, unfenced, over-long,
identical, cut at the length limit) between good replies. The run must finish with the population
intact and every fault counted: the client's counts equal what the server injected.
"""

from __future__ import annotations

import json

import fault_server
import pytest
from fault_server import FaultServer
from fixtures import ScriptedPolicy

from fst_jax.gepa import GepaConfig, PopulationState, Reflector, get_reflection_lm, run_round

SEED = "Solve the task."
# Every behaviour once per cycle, a usable reply after each so proposals also succeed.
CYCLE = [b for f in fault_server.ALL if f not in ("ok", "fresh") for b in (f, "fresh")]
# ... and bursts that outlast the retries (3 attempts; 2 content attempts): counted skips.
CYCLE += [b for f in ("500", "truncated_json", "html", "drop", "timeout") for b in [f] * 3]
CYCLE += [b for f in ("unfenced", "empty", "identical") for b in [f] * 2]
CONTENT_FAULTS = {"empty", "unfenced", "too_long", "identical", "truncated"}


def _expected_faults(served: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b, n in served.items():
        if b in fault_server.TRANSPORT:
            r = fault_server.TRANSPORT[b]
            out[r] = out.get(r, 0) + n
    return out


def _lm(server):
    return get_reflection_lm(
        "openai", model="fake", base_url=server.base_url, api_key_env="FST_TEST_NO_KEY",
        timeout=1.0, max_retries=2, backoff_base=0.001, backoff_max=0.01, max_reply_chars=50_000,
    )  # fmt: skip


@pytest.mark.slow  # ~20 s: nine 1 s client timeouts
def test_gepa_rounds_survive_every_failure_mode():
    server = FaultServer(parent=SEED, hang_s=1.6, max_requests=600)
    try:
        server.reset(cycle=CYCLE)
        state = PopulationState.new([SEED], seed=3)
        policy = ScriptedPolicy(state, "faults", bias={})
        lm = _lm(server)
        refl = Reflector(lm, content_retries=1, max_context_chars=2000, max_cache_entries=64)
        anchors = {f"e{i}": f"q{i}" for i in range(4)}
        reports = [
            run_round(state, policy, refl, anchors, 120, config=GepaConfig()) for _ in range(4)
        ]
    finally:
        server.close()
    served = server.served()
    # Every failure mode was actually injected during the rounds.
    assert set(served) >= set(fault_server.ALL) - {"ok"}, sorted(served)
    # The population is intact: the seed first, every other member a real extracted context.
    assert state.candidates[0].text == SEED
    assert all(c.text.startswith(server.good + " (variant ") for c in state.candidates[1:])
    assert state.active_ids and all(set(state.scores[i]) == set(anchors) for i in state.active_ids)
    assert PopulationState.loads(state.dumps()).to_json() == state.to_json()
    assert len(state.lm_cache) <= 64 and len(state.dumps()) < 200_000
    # Counted: the client's view equals the server's, fault by fault.
    assert lm.usage["requests"] == len(server.log)
    assert lm.faults == _expected_faults(served)
    counters = state.counters
    assert {k[9:]: v for k, v in counters.items() if k.startswith("lm_fault_")} == lm.faults
    assert counters["lm_requests"] == lm.usage["requests"]
    assert counters["lm_retries"] == lm.usage["retries"] > 0
    skips: dict[str, int] = {}
    for rep in reports:
        assert rep.iterations == rep.accepted + rep.rejected + rep.skipped_perfect + rep.skipped_lm
        for k, v in rep.skip_reasons.items():
            skips[k] = skips.get(k, 0) + v
    lm_reasons = {f"lm_{r}" for r in fault_server.TRANSPORT.values()}
    assert set(skips) <= lm_reasons | CONTENT_FAULTS, skips
    assert {"lm_http_500", "lm_bad_json", "lm_not_json", "lm_connection", "lm_timeout",
            "unfenced", "empty", "identical", "lm_http_401"} <= set(skips), skips  # fmt: skip
    assert sum(r.accepted + r.rejected for r in reports) > 0  # proposals also got through
    print(  # the closing note's numbers (pytest -s)
        "FAULT-INJECTION", json.dumps({
            "requests": lm.usage["requests"], "retries": lm.usage["retries"],
            "faults": lm.faults, "skips": skips,
            "iterations": sum(r.iterations for r in reports),
            "accepted": sum(r.accepted for r in reports),
            "population": len(state.candidates),
        }, sort_keys=True),
    )  # fmt: skip


@pytest.mark.slow
def test_fst_controller_run_against_the_fault_server(tmp_path):
    """The whole FST loop (tiny model) with its reflection LM on the fault server: completes,
    checkpoints a population whose counters match what the server injected."""
    from test_controller_e2e import tiny_config

    from fst_jax import controller, metrics

    c = tiny_config("fst")
    c.num_cycles = 3
    c.gepa.budget = 40
    server = FaultServer(hang_s=1.6, max_requests=600)
    try:
        g = c.gepa
        g.reflection_lm, g.reflection_model = "openai", "fake"
        g.reflection_base_url, g.reflection_api_key_env = server.base_url, "FST_TEST_NO_KEY"
        g.reflection_timeout_s, g.reflection_max_retries = 1.0, 2
        g.reflection_backoff_s, g.reflection_backoff_max_s = 0.001, 0.01
        ctl = controller.Controller(c, tmp_path)
        seed = ctl.rs.population.candidates[0].text
        server.parent = seed
        server.reset(cycle=CYCLE)
        summary = ctl.run()
    finally:
        server.close()
    assert summary["cycles"] == 3 and summary["steps"] == 6
    pop = ctl.rs.population
    assert pop.candidates[0].text == seed
    assert all(x.text.startswith(server.good + " (variant ") for x in pop.candidates[1:])
    served = server.served()
    faults = {k[9:]: v for k, v in pop.counters.items() if k.startswith("lm_fault_")}
    assert faults == _expected_faults(served) and sum(faults.values()) > 0
    assert pop.counters["lm_requests"] == len(server.log)
    # The checkpoint holds the same population, and the metrics stream names each skip reason.
    again = controller.Controller(c, tmp_path)
    assert again.population.to_json() == pop.to_json()
    recs = metrics.read_metrics(tmp_path)
    logged = {k for r in recs for k in r if k.startswith("gepa/skip/")}
    assert logged and all(k.removeprefix("gepa/skip/") in {f"lm_{v}" for v in
                                                           fault_server.TRANSPORT.values()} | CONTENT_FAULTS
                          for k in logged)  # fmt: skip
    print(
        "FST-FAULT-INJECTION",
        json.dumps({"served": len(server.log), "faults": faults,
                    "retries": pop.counters["lm_retries"],
                    "skipped_lm": pop.counters.get("skipped_lm", 0),
                    "accepted": pop.counters.get("accepted", 0),
                    "population": len(pop.candidates)}, sort_keys=True),
    )  # fmt: skip
