"""GEPA's evaluation callback on the sampler (`fst_jax.gepa_eval`) and the controller's
self-serialising `RunState`, tested alone: candidate → bank slot, chunking when there are more
texts than bank rows, over-long contexts, order; RunState's JSON round trip."""

from __future__ import annotations

import dataclasses
import types

import pytest

from fst_jax import evaluation, gepa
from fst_jax.gepa_eval import SamplerEvaluator
from fst_jax.run_state import RunState


@dataclasses.dataclass
class Ex:
    id: str
    question: str


class FakeBank:
    """encode_context = one token per character; `with_contexts` remembers the chunk."""

    def __init__(self, max_len: int, max_prompts: int, texts=()):
        self.max_len, self.max_prompts, self.texts = max_len, max_prompts, list(texts)
        self.layout = types.SimpleNamespace(encode_context=lambda t: list(t))

    def with_contexts(self, texts):
        return FakeBank(self.max_len, self.max_prompts, texts)


class FakeSampler:
    """Replies "<context>|<question>" for each row: the row's slot must name its candidate."""

    def __init__(self):
        self.calls = []

    def sample(self, params, bank, idx, questions, key, sampling, *, arrays=True):
        self.calls.append((list(bank.texts), list(idx), list(questions), key, arrays))
        texts = [f"{bank.texts[i]}|{q}" for i, q in zip(idx, questions)]
        return types.SimpleNamespace(texts=texts)


class FakeTask:
    def verify_batch(self, rows, texts):
        return [
            types.SimpleNamespace(reward=float(len(t) % 3) / 2, feedback=f"fb:{t}") for t in texts
        ]


def _oracle(ctx, q):
    t = f"{ctx}|{q}"
    return float(len(t) % 3) / 2, f"fb:{t}", t


def test_one_call_per_chunk_slots_order_and_overlong():
    texts = ["alpha", "beta", "gamma", "x" * 50]  # the last does not fit a 20-token row
    pop = gepa.PopulationState.new(texts[:1], seed=0)
    for t in texts[1:]:
        pop.candidates.append(dataclasses.replace(pop.candidates[0], text=t))
    examples = {f"e{i}": Ex(f"e{i}", f"q{i}") for i in range(3)}
    sampler, evaluated = FakeSampler(), []
    ev = SamplerEvaluator(
        population=pop, bank=FakeBank(max_len=20, max_prompts=2), sampler=sampler,
        task=FakeTask(), params=None, examples=examples, sampling=None,
        key_for=lambda call, lo: (call, lo), on_evaluated=evaluated.append,
    )  # fmt: skip
    cids = [2, 0, 3, 1, 2, 0]
    eids = ["e0", "e1", "e2", "e0", "e2", "e2"]
    scores, fbs, outs = ev(cids, eids)
    for j, (cid, eid) in enumerate(zip(cids, eids)):
        ctx = pop.candidates[cid].text
        if ctx.startswith("x"):
            assert scores[j] == 0.0 and "too long" in fbs[j] and outs[j] == ""
        else:
            assert (scores[j], fbs[j], outs[j]) == _oracle(ctx, examples[eid].question)
    # 3 sampleable texts, 2 bank rows: two sampler calls, texts-only, keyed by (call, chunk)
    assert [c[0] for c in sampler.calls] == [["alpha", "beta"], ["gamma"]]
    assert [c[3] for c in sampler.calls] == [(0, 0), (0, 2)] and not any(
        c[4] for c in sampler.calls
    )
    assert sum(len(c[1]) for c in sampler.calls) == 5 and ev.overlong == 1
    assert evaluated == [6] and ev.calls == 1
    ev([0], ["e1"])
    assert sampler.calls[-1][3] == (1, 0)  # the next evaluate() call draws a new key
    with pytest.raises(ValueError, match="2 candidate ids but 1 example ids"):
        ev([0, 1], ["e0"])


def test_run_state_round_trips_and_reads_old_checkpoints():
    rs = RunState.new(["a", "b"], "seed ctx", seed=3, minibatch_size=2)
    rs.step, rs.cycle, rs.positions["b"], rs.exported = 7, 2, 12, ["c1", "seed ctx"]
    rs.running_max.update(0.5)
    rs.task_running_max["a"].update(0.25)
    rs.last_eval, rs.first_eval = {"val/mean@4": 0.5}, {"val/mean@4": 0.1}
    host = rs.to_json(metrics_offset=123)
    assert set(host) == {
        "step",
        "cycle",
        "positions",
        "population",
        "exported",
        "running_max",
        "last_eval",
        "task_running_max",
        "first_eval",
        "metrics_offset",
    }  # fmt: skip  (the checkpoint layout older runs wrote)
    back, offset = RunState.from_json(host, ["a", "b"])
    assert offset == 123 and back.to_json(123) == host
    assert back.population.to_json() == rs.population.to_json()
    old = {k: v for k, v in host.items() if k != "task_running_max"}  # before streams
    back, _ = RunState.from_json(old, ["a", "b"])
    assert back.task_running_max["a"].value == evaluation.RunningMax().value
