"""evaluation.validate with a scripted sampler: row layout, mean@k, running max, KL batch, quadrants."""

import zlib

import jax
import numpy as np
import pytest

from fst_jax import evaluation
from fst_jax.tasks.base import Example, Verdict


class Bank:
    no_context = 7

    def with_contexts(self, contexts):
        self.contexts = list(contexts)
        return self


class Rollouts:
    def __init__(self, texts, s=5):
        n = len(texts)
        self.texts = texts
        self.tokens = np.arange(n * s, dtype=np.int32).reshape(n, s)
        self.positions = np.tile(np.arange(s, dtype=np.int32), (n, 1))
        self.completion_mask = np.tile(np.array([0, 0, 1, 1, 0], np.float32), (n, 1))


class ScriptedSampler:
    """Answers '1' for row r iff (slot + r) is even, except the base weights always fail."""

    def __init__(self):
        self.calls, self.keys = [], []

    def sample(self, params, bank, idx, questions, key, sampling, row_ids=None):
        self.calls.append((params, list(idx), list(questions), list(row_ids)))
        self.keys.append(tuple(np.asarray(jax.random.key_data(key)).ravel()))
        ok = [params != "base" and (s + r) % 2 == 0 for r, s in enumerate(idx)]
        return Rollouts([str(int(o)) for o in ok])


class Task:
    def verify_batch(self, examples, completions):
        return [
            Verdict(float(c == "1"), "correct" if c == "1" else "wrong", "") for c in completions
        ]


EXAMPLES = [Example(f"v{i}", f"q{i}", None, {}) for i in range(3)]


def test_validate_layout_means_and_quadrants():
    sampler, kl_calls = ScriptedSampler(), []

    def measure_kl(params, base, batch):
        kl_calls.append(batch)
        return {"full": 0.25, "k1": 0.2, "k3": 0.3, "tokens": float(np.sum(batch.completion_mask))}

    rm = evaluation.RunningMax(0.9)
    m = evaluation.validate(
        sampler=sampler, params="theta", base_params="base", bank=Bank(), best_context="best",
        seed_context="seed", examples=EXAMPLES, task=Task(), k=4, kl_examples=2,
        key=jax.random.key(0), sampling=None, measure_kl=measure_kl, running_max=rm,
        quadrants=True, row_multiple=4,
    )  # fmt: skip
    # Rows are problem-major, k = 4 per problem, with the slot of the setting.
    params, idx, qs, rids = sampler.calls[0]
    assert params == "theta" and idx == [0] * 12 and rids == list(range(12))
    assert qs == ["q0"] * 4 + ["q1"] * 4 + ["q2"] * 4
    assert sampler.calls[1][1] == [Bank.no_context] * 12
    # Slot 0: rows 0,2,4,.. succeed → 0.5; no-context slot 7 (odd): odd rows succeed → 0.5.
    assert m["val/mean@4"] == 0.5 and m["val/mean@4_no_context"] == 0.5
    assert m["val/mean@4_running_max"] == 0.9  # an earlier evaluation was better
    assert m["val/status/correct"] == 0.5
    # KL on the first sample of the first 2 problems (rows 0 and 4), padded to 4 rows.
    (batch,) = kl_calls
    assert batch.tokens.shape == (4, 5)
    np.testing.assert_array_equal(batch.tokens[:2, 0], [0, 20])
    assert batch.completion_mask[2:].sum() == 0 and (batch.positions[2:] == -1).all()
    assert m["val/kl_to_base"] == 0.25 and m["val/kl_tokens"] == 4.0
    # Trained weights × seed context (slot 1) every evaluation; the quadrants add base weights
    # with seed (slot 1) and best (slot 0).
    assert [(c[0], c[1][0]) for c in sampler.calls[2:]] == [("theta", 1), ("base", 1), ("base", 0)]
    # One key per context, whatever the weights (common random numbers across the quadrants).
    best_k, none_k, seed_k, base_seed_k, base_best_k = sampler.keys
    assert seed_k == base_seed_k and best_k == base_best_k
    assert len({best_k, none_k, seed_k}) == 3
    # Slot 1 (odd): odd rows succeed; per problem (4 rows, starting at an even row) 2 of 4.
    assert m["val/mean@4_seed_context"] == 0.5
    assert m["val/per_example@4_seed_context"] == [0.5, 0.5, 0.5]
    assert m["val/mean@4_seed_context_se"] == 0.0
    assert m["val/quadrant/base_w/seed_p"] == 0.0 and m["val/quadrant/base_w/trained_p"] == 0.0
    assert (
        m["val/quadrant/trained_w/seed_p"] == 0.5 and m["val/quadrant/trained_w/trained_p"] == 0.5
    )


class PerProblemSampler:
    """Problem i's rows succeed with a scripted per-problem rate (k = 4)."""

    def __init__(self, rates):
        self.rates, self.calls = rates, 0

    def sample(self, params, bank, idx, questions, key, sampling, row_ids=None):
        self.calls += 1
        texts = [str(int(r % 4 < 4 * self.rates[r // 4])) for r in range(len(idx))]
        return Rollouts(texts)


def _validate(sampler, best, seed, n):
    return evaluation.validate(
        sampler=sampler, params="theta", base_params="base", bank=Bank(), best_context=best,
        seed_context=seed, examples=[Example(f"v{i}", f"q{i}", None, {}) for i in range(n)],
        task=Task(), k=4, kl_examples=0, key=jax.random.key(0), sampling=None, measure_kl=None,
        running_max=evaluation.RunningMax(),
    )  # fmt: skip


def test_standard_errors_are_over_problems_and_seed_context_reuses_best():
    import statistics

    rates = [0.0, 0.25, 1.0, 0.5, 0.75]
    sampler = PerProblemSampler(rates)
    m = _validate(sampler, "same", "same", len(rates))
    assert sampler.calls == 2  # best == seed: no third sampling pass
    assert m["val/per_example@4"] == rates == m["val/per_example@4_seed_context"]
    want = statistics.stdev(rates) / len(rates) ** 0.5  # independent formula
    assert m["val/mean@4_se"] == pytest.approx(want) == m["val/mean@4_seed_context_se"]
    assert m["val/mean@4"] == pytest.approx(statistics.mean(rates))
    assert _validate(PerProblemSampler(rates), "best", "seed", len(rates)) is not None
    # best == seed: the quadrants' start-weights cells are one sampling pass too.
    s2 = ScriptedSampler()
    m2 = evaluation.validate(
        sampler=s2, params="theta", base_params="base", bank=Bank(), best_context="same",
        seed_context="same", examples=EXAMPLES, task=Task(), k=4, kl_examples=0,
        key=jax.random.key(0), sampling=None, measure_kl=None,
        running_max=evaluation.RunningMax(), quadrants=True,
    )  # fmt: skip
    assert [(c[0], c[1][0]) for c in s2.calls] == [("theta", 0), ("theta", 7), ("base", 1)]
    assert s2.keys[0] == s2.keys[2]  # start and trained weights draw the same samples
    assert m2["val/quadrant/base_w/seed_p"] == m2["val/quadrant/base_w/trained_p"] == 0.0
    assert evaluation.standard_error([0.3]) == 0.0


def test_paired_delta_and_summary_verdicts():
    from fst_jax import run_summary
    from fst_jax.run_state import RunState

    start, end = [0.0, 0.25, 0.0, 0.5] * 8, [0.5, 0.5, 0.25, 0.75] * 8
    d, se = evaluation.paired_delta(start, end)
    diffs = [b - a for a, b in zip(start, end, strict=True)]
    import statistics

    assert d == pytest.approx(statistics.mean(diffs))
    assert se == pytest.approx(statistics.stdev(diffs) / len(diffs) ** 0.5)
    with pytest.raises(ValueError, match="not the same set"):
        evaluation.paired_delta([0.0], [0.0, 1.0])

    def summary(a, b):
        rs = RunState.__new__(RunState)
        ev = lambda x: {  # noqa: E731
            "val/mean@4_seed_context": sum(x) / len(x), "val/mean@4_seed_context_se": 0.01,
            "val/per_example@4_seed_context": x, "val/num_examples": len(x),
        }  # fmt: skip
        rs.first_eval, rs.last_eval = ev(a), ev(b)
        rs.step = rs.cycle = 1
        rs.running_max = evaluation.RunningMax(0.5)
        rs.population = type("P", (), {"candidates": [1]})()
        rs.exported = ["ctx"]
        return run_summary.summarize(rs, workdir="w", mode="rl", k=4, wall_s=1.0, checkpoints=[1])

    s = summary(start, end)
    assert s["verdict"].startswith("LEARNED") and s["num_val_rollouts"] == 128
    text = run_summary.format_summary(s)
    assert text.splitlines()[-2].strip().startswith("verdict         LEARNED")
    assert "± 0.010" in text
    assert summary(end, start)["verdict"].startswith("GOT WORSE")
    noisy = summary([0.0, 1.0] * 16, [1.0, 0.0] * 15 + [1.0, 1.0])
    assert noisy["verdict"].startswith("DID NOT LEARN")


def test_mean_at_k_rejects_empty_and_bad_k():
    with pytest.raises(ValueError, match="validation set is empty"):
        evaluation.mean_at_k(ScriptedSampler(), None, Bank(), 0, [], Task(), 4, None, None)
    with pytest.raises(ValueError, match=r"eval\.k must be >= 1"):
        evaluation.mean_at_k(ScriptedSampler(), None, Bank(), 0, EXAMPLES, Task(), 0, None, None)


class KeyedSampler:
    """Row r succeeds iff a hash of (key, row id, context text) is even: samples depend only
    on the key, the row and the context's text (as the real sampler's do), never on the slot."""

    def sample(self, params, bank, idx, questions, key, sampling, row_ids=None):
        kd = tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())
        text = lambda s: "none" if s == Bank.no_context else bank.contexts[s]  # noqa: E731
        ok = [
            zlib.crc32(repr((kd, rid, text(s), params)).encode()) % 2 == 0
            for rid, s in zip(row_ids, idx)
        ]
        return Rollouts([str(int(o)) for o in ok])


def test_seed_context_samples_are_the_same_when_the_best_context_moves():
    """Start (best == seed, slot 0) vs end (best evolved, seed in slot 1), unchanged weights and
    the same key: the seed-context scores must match problem by problem (common random
    numbers), and an independent draw must not (the oracle is not trivially equal)."""
    examples = [Example(f"v{i}", f"q{i}", None, {}) for i in range(16)]

    def run(best, key):
        return evaluation.validate(
            sampler=KeyedSampler(), params="theta", base_params="base", bank=Bank(),
            best_context=best, seed_context="seed", examples=examples, task=Task(), k=4,
            kl_examples=0, key=jax.random.key(key), sampling=None, measure_kl=None,
            running_max=evaluation.RunningMax(), quadrants=True,
        )  # fmt: skip

    start, end, other = run("seed", 3), run("evolved", 3), run("seed", 4)
    k = "val/per_example@4_seed_context"
    assert start[k] == end[k] and start[k] != other[k]
    assert start["val/per_example@4_no_context"] == end["val/per_example@4_no_context"]
    assert end["val/quadrant/base_w/seed_p"] == start["val/quadrant/base_w/seed_p"]
    assert end["val/per_example@4"] != end[k]  # the evolved context draws its own samples
