"""Population state vs the `gepa` package's own functions on the same score tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from gepa.core.data_loader import ensure_loader
from gepa.core.state import GEPAState, ValsetEvaluation
from gepa.gepa_utils import remove_dominated_programs, select_program_candidate_from_pareto_front
from gepa.strategies.batch_sampler import EpochShuffledBatchSampler

from fst_jax.gepa import (
    MinibatchSampler,
    PopulationState,
    build_fronts,
    export_top_k,
    remove_dominated,
    selection_weights,
)


def _table(rng: random.Random, n_cand: int, n_ex: int, levels=(0.0, 0.5, 1.0)) -> list[list[float]]:
    return [[rng.choice(levels) for _ in range(n_ex)] for _ in range(n_cand)]


def _gepa_state(table: list[list[float]]) -> GEPAState:
    """Fronts as gepa builds them: seed first, then each candidate added in order."""
    n_ex = len(table[0])
    ev = lambda row: ValsetEvaluation(outputs_by_val_id={}, scores_by_val_id=dict(enumerate(row)))  # noqa: E731
    st = GEPAState({"c": "seed"}, ev(table[0]), track_best_outputs=False)
    for k, row in enumerate(table[1:], 1):
        st.update_state_with_new_program([k - 1], {"c": f"cand{k}"}, ev(row), None, 0)
    assert len(st.program_candidates) == len(table) and len(st.pareto_front_valset) == n_ex
    return st


def _ours(table):
    anchors = [f"e{i}" for i in range(len(table[0]))]
    scores = {c: dict(zip(anchors, row)) for c, row in enumerate(table)}
    means = {c: sum(r) / len(r) for c, r in enumerate(table)}
    return anchors, scores, means


TABLES = [
    (seed, nc, ne) for seed in range(12) for nc, ne in [(1, 4), (3, 5), (6, 7), (7, 12), (5, 2)]
]


@pytest.mark.parametrize(("seed", "n_cand", "n_ex"), TABLES)
def test_fronts_dominated_removal_and_selection_match_gepa(seed, n_cand, n_ex):
    table = _table(random.Random(seed), n_cand, n_ex)
    g = _gepa_state(table)
    anchors, scores, means = _ours(table)
    fronts = build_fronts(scores, anchors)
    # Per-instance best scores and front sets (ties kept).
    assert {int(a[1:]): best for a, (best, _) in fronts.items()} == g.pareto_front_valset
    assert {int(a[1:]): set(m) for a, (_, m) in fronts.items()} == g.program_at_pareto_front_valset
    # Dominated-candidate removal.
    g_mapping = g.get_pareto_front_mapping()
    g_scores = g.per_program_tracked_scores
    g_after = remove_dominated_programs(g_mapping, scores=g_scores)
    front_sets = {a: m for a, (_, m) in fronts.items()}
    survivors = remove_dominated(front_sets, means)
    assert survivors == set().union(*g_after.values())
    # Selection weights: recover gepa's exact sampling list through a recording rng.
    seen = []

    class Recorder:
        def choice(self, seq):
            seen.append(list(seq))
            return seq[0]

    select_program_candidate_from_pareto_front(g_mapping, g_scores, Recorder())
    weights = selection_weights(front_sets, means)
    assert [c for c, n in weights.items() for _ in range(n)] == seen[0]  # same multiset, same order
    # And the same draws from the same seeded RNG.
    state = PopulationState.new([f"c{i}" for i in range(n_cand)], seed=seed)
    state.set_anchor_set(anchors)
    for c in range(n_cand):
        state.record_scores(c, scores[c])
    g_rng = random.Random(seed)
    ours = [state.select_parent() for _ in range(25)]
    theirs = [
        select_program_candidate_from_pareto_front(g_mapping, g_scores, g_rng) for _ in range(25)
    ]
    assert ours == theirs
    probs = state.selection_probabilities()
    total = len(seen[0])
    assert probs == {c: n / total for c, n in Counter(seen[0]).items()}


@pytest.mark.parametrize("seed", range(6))
def test_selection_distribution_matches_gepa_beyond_8_candidates(seed):
    """Same parent distribution as gepa with 9-20 candidates (draw order may differ there)."""
    rng = random.Random(100 + seed)
    n_cand = rng.randint(9, 20)
    # Many distinct levels so that many candidates survive on some front.
    table = _table(rng, n_cand, 30, levels=tuple(i / 10 for i in range(11)))
    g = _gepa_state(table)
    anchors, scores, means = _ours(table)
    front_sets = {a: m for a, (_, m) in build_fronts(scores, anchors).items()}
    seen = []

    class Recorder:
        def choice(self, seq):
            seen.append(list(seq))
            return seq[0]

    select_program_candidate_from_pareto_front(
        g.get_pareto_front_mapping(), g.per_program_tracked_scores, Recorder()
    )
    weights = selection_weights(front_sets, means)
    assert max(weights) >= 8  # the regime where set iteration order stops being ascending
    assert Counter(c for c, n in weights.items() for _ in range(n)) == Counter(seen[0])
    state = PopulationState.new([f"c{i}" for i in range(n_cand)], seed=seed)
    state.set_anchor_set(anchors)
    for c in range(n_cand):
        state.record_scores(c, scores[c])
    total = len(seen[0])
    assert state.selection_probabilities() == {c: k / total for c, k in Counter(seen[0]).items()}


def test_dominated_candidate_is_never_selected():
    # c1 ties c0 everywhere c1 is best, and c0 also owns e2: c1 is dominated (removed first: lower mean).
    table = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.5]]
    anchors, scores, means = _ours(table)
    fronts = {a: m for a, (_, m) in build_fronts(scores, anchors).items()}
    assert fronts == {"e0": [0, 1], "e1": [0, 1], "e2": [0]}
    assert remove_dominated(fronts, means) == {0}
    assert selection_weights(fronts, means) == {0: 3}


@pytest.mark.parametrize(
    ("n", "b", "seed"),
    [(7, 3, 0), (8, 3, 1), (2, 3, 2), (9, 3, 3), (10, 4, 4), (1, 3, 5), (5, 1, 6)],
)
def test_minibatch_sampler_matches_epoch_shuffled_batch_sampler(n, b, seed):
    loader = ensure_loader([{"x": i} for i in range(n)])
    g_rng, o_rng = random.Random(seed), random.Random(seed)
    g = EpochShuffledBatchSampler(minibatch_size=b, rng=g_rng)
    ours = MinibatchSampler(b)
    ours.reset([str(i) for i in range(n)])

    class S:
        i = 0

    st = S()
    for it in range(40):
        st.i = it
        theirs = [str(i) for i in g.next_minibatch_ids(loader, st)]
        assert ours.next_ids(o_rng) == theirs, f"iteration {it}"
        # Interleave other draws on the shared RNG (parent selection does this in a round).
        assert g_rng.random() == o_rng.random()


def test_sampler_state_round_trip_and_reset():
    s = MinibatchSampler(3)
    with pytest.raises(ValueError, match="reset"):
        s.next_ids(random.Random(0))
    s.reset(["a", "b", "c", "d"])
    rng = random.Random(1)
    first = [s.next_ids(rng) for _ in range(3)]
    assert all(len(mb) == 3 for mb in first)
    # One epoch = the 4 shuffled ids + 2 pads (least used; ties: the id shuffled last first).
    assert set(first[0]) | {first[1][0]} == {"a", "b", "c", "d"}
    assert first[1][1:] == [first[1][0], first[0][2]]
    clone = MinibatchSampler.from_json(s.to_json())
    rng2 = random.Random()
    rng2.setstate(rng.getstate())
    assert [clone.next_ids(rng2) for _ in range(5)] == [s.next_ids(rng) for _ in range(5)]
    with pytest.raises(ValueError, match="minibatch_size"):
        MinibatchSampler(0)


def test_export_top_k_ranks_front_then_fills_from_pool():
    table = [
        [1.0, 0.0, 0.0, 0.0],  # c0: front on e0 only
        [0.5, 1.0, 1.0, 0.0],  # c1: front on e1, e2 (coverage 2)
        [0.5, 0.5, 0.5, 0.5],  # c2: not on any front → filler, mean 0.5
        [0.0, 0.0, 0.0, 1.0],  # c3: front on e3, mean 0.25
        [0.0, 0.0, 0.0, 0.0],  # c4: filler, mean 0
    ]
    anchors, scores, means = _ours(table)
    state = PopulationState.new([f"c{i}" for i in range(5)])
    state.set_anchor_set(anchors)
    for c in range(5):
        state.record_scores(c, scores[c])
    # Reference rule written here: non-dominated front members by (coverage desc, mean desc, id),
    # then the rest by (mean desc, coverage desc, id).
    cov = {
        c: sum(scores[c][a] == max(scores[k][a] for k in range(5)) for a in anchors)
        for c in range(5)
    }
    front = [c for c in range(5) if cov[c] > 0]
    expect = sorted(front, key=lambda c: (-cov[c], -means[c], c)) + sorted(
        [c for c in range(5) if c not in front], key=lambda c: (-means[c], -cov[c], c)
    )
    top = export_top_k(state, 4)
    assert [t.id for t in top] == expect[:4] == [1, 0, 3, 2]
    assert [t.on_front for t in top] == [True, True, True, False] and state.exported_ids == [
        1,
        0,
        3,
        2,
    ]
    assert [t.text for t in export_top_k(state, 10)] == [f"c{i}" for i in expect]
    with pytest.raises(ValueError, match="k must be"):
        export_top_k(state, 0)
    with pytest.raises(ValueError, match="no scores"):
        export_top_k(PopulationState.new(["x"]), 2)


def test_rng_json_round_trip_continues_stream():
    state = PopulationState.new(["a"], seed=123)
    state.rng.random()
    restored = PopulationState.loads(state.dumps())
    assert [restored.rng.random() for _ in range(5)] == [state.rng.random() for _ in range(5)]
    with pytest.raises(TypeError, match="anchor ids must be str"):
        state.set_anchor_set([1, 2])
    with pytest.raises(ValueError, match="lacks scores"):
        state.set_anchor_set(["x", "y"])
        state.record_scores(0, {"x": 1.0})
