"""The GEPA fast-weight population: candidates, per-instance scores, Pareto fronts, parent selection.

The population persists across FST cycles (it is part of the checkpoint), so everything here is
plain Python data with an exact JSON round trip, including the RNG and the minibatch sampler.
Selection semantics follow the `gepa` package (paper §4): instance fronts keep ties, dominated
candidates are removed in ascending order of mean score, and the parent is drawn with probability
proportional to front membership. Candidates are never deleted; a candidate is *active* while it
has scores on the current anchor set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

STATE_VERSION = 1


@dataclasses.dataclass
class Candidate:
    """One context text. `id` is its index in the pool; `parents` are pool ids ([] for a seed)."""

    id: int
    text: str
    parents: list[int]
    birth_cycle: int


class MinibatchSampler:
    """Epoch-shuffled minibatches over the anchor ids (the `gepa` EpochShuffledBatchSampler semantics).

    Each epoch shuffles the ids with the population RNG; when the id count is not a multiple of the
    minibatch size the list is padded with the least-used ids (ties: the one shuffled last). Call k
    of an epoch takes the k-th consecutive chunk. A new anchor set restarts the stream.
    """

    def __init__(self, minibatch_size: int) -> None:
        if minibatch_size < 1:
            raise ValueError(
                f"minibatch_size must be >= 1, got {minibatch_size}; use the paper default 3."
            )
        self.minibatch_size = minibatch_size
        self.ids: list[str] = []
        self.shuffled: list[str] = []
        self.epoch = -1
        self.calls = 0

    def reset(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self.shuffled = []
        self.epoch = -1
        self.calls = 0

    def _reshuffle(self, rng: random.Random) -> None:
        order = list(self.ids)
        rng.shuffle(order)
        counts = {i: 0 for i in order}
        for i in order:
            counts[i] += 1
        position = {i: p for p, i in enumerate(order)}
        remainder = len(order) % self.minibatch_size
        for _ in range((self.minibatch_size - remainder) % self.minibatch_size):
            fewest = min(counts.values())
            pick = max((i for i, c in counts.items() if c == fewest), key=position.__getitem__)
            order.append(pick)
            counts[pick] += 1
        self.shuffled = order

    def next_ids(self, rng: random.Random) -> list[str]:
        """The next minibatch of anchor ids; draws from `rng` only at an epoch boundary."""
        if not self.ids:
            raise ValueError("MinibatchSampler has no anchor ids; call reset(anchor_ids) first.")
        start = self.calls * self.minibatch_size
        epoch = 0 if self.epoch == -1 or not self.shuffled else start // len(self.shuffled)
        if not self.shuffled or epoch > self.epoch:
            self.epoch = epoch
            self._reshuffle(rng)
        offset = start % len(self.shuffled)
        self.calls += 1
        return self.shuffled[offset : offset + self.minibatch_size]

    def to_json(self) -> dict[str, Any]:
        return {
            "minibatch_size": self.minibatch_size,
            "ids": self.ids,
            "shuffled": self.shuffled,
            "epoch": self.epoch,
            "calls": self.calls,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MinibatchSampler:
        s = cls(int(d["minibatch_size"]))
        s.ids, s.shuffled = list(d["ids"]), list(d["shuffled"])
        s.epoch, s.calls = int(d["epoch"]), int(d["calls"])
        return s


def rng_state_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def rng_from_json(d: Sequence[Any]) -> random.Random:
    rng = random.Random()
    rng.setstate((int(d[0]), tuple(int(x) for x in d[1]), d[2]))
    return rng


# ---------------------------------------------------------------------------------------------
# Pure front logic (score table -> fronts -> non-dominated set -> selection weights).


def build_fronts(
    scores: Mapping[int, Mapping[str, float]], anchor_ids: Sequence[str]
) -> dict[str, tuple[float, list[int]]]:
    """Per anchor id: (best score, ascending ids of every candidate achieving it — ties kept)."""
    fronts: dict[str, tuple[float, list[int]]] = {}
    for aid in anchor_ids:
        best, members = -math.inf, []
        for cid in sorted(scores):
            s = scores[cid].get(aid)
            if s is None:
                continue
            if s > best:
                best, members = s, [cid]
            elif s == best:
                members.append(cid)
        if members:
            fronts[aid] = (best, members)
    return fronts


def _first_appearance(front_sets: Mapping[str, Sequence[int]]) -> list[int]:
    seen: dict[int, None] = {}
    for members in front_sets.values():
        for cid in members:
            seen.setdefault(cid, None)
    return list(seen)


def remove_dominated(
    front_sets: Mapping[str, Sequence[int]], mean_scores: Mapping[int, float]
) -> set[int]:
    """The candidates that survive dominated-removal (paper Alg. 2).

    A candidate is dominated when every front it belongs to also holds another surviving candidate.
    Candidates are examined in ascending mean score (stable in order of first front appearance),
    removing one at a time and restarting, so the lowest-scoring redundant candidates go first.
    """
    order = sorted(_first_appearance(front_sets), key=lambda c: mean_scores[c])
    dominated: set[int] = set()
    changed = True
    while changed:
        changed = False
        for y in order:
            if y in dominated:
                continue
            others = set(order) - dominated - {y}
            fronts_of_y = [m for m in front_sets.values() if y in m]
            if all(any(o in others for o in m) for m in fronts_of_y):
                dominated.add(y)
                changed = True
                break
    return set(order) - dominated


def selection_weights(
    front_sets: Mapping[str, Sequence[int]], mean_scores: Mapping[int, float]
) -> dict[int, int]:
    """Front-membership counts of the non-dominated candidates, in first-appearance order.

    The parent is drawn with probability weight / sum(weights), the `gepa` package's
    distribution for any number of candidates. Its exact draw sequence is replayed only up to 8
    candidate ids: `gepa` walks each front as a Python set, which iterates small ints in
    ascending order only while the ids fit the set's initial 8-slot table; beyond that its
    sampling list is a permutation of ours, so the same RNG picks differently (same distribution).
    """
    survivors = remove_dominated(front_sets, mean_scores)
    weights: dict[int, int] = {}
    for members in front_sets.values():
        for cid in members:
            if cid in survivors:
                weights[cid] = weights.get(cid, 0) + 1
    if not weights:
        raise ValueError(
            "No candidate is on any Pareto front: score the population on the anchor set first."
        )
    return weights


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PopulationState:
    """Everything GEPA carries across rounds; `to_json`/`from_json` is an exact round trip."""

    candidates: list[Candidate]
    anchor_ids: list[str]
    scores: dict[int, dict[str, float]]
    rng: random.Random
    sampler: MinibatchSampler
    exported_ids: list[int] = dataclasses.field(default_factory=list)
    lm_cache: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    rounds: int = 0

    @classmethod
    def new(
        cls, seed_texts: Sequence[str], *, seed: int = 0, minibatch_size: int = 3
    ) -> PopulationState:
        """A fresh population holding the seed context(s) (e.g. the task's `seed_prompt`)."""
        if isinstance(seed_texts, str) or not seed_texts:
            raise ValueError(
                "seed_texts must be a non-empty list of context strings, e.g. [task.seed_prompt]."
            )
        for t in seed_texts:
            if not isinstance(t, str):
                raise TypeError(f"seed context must be str, got {type(t).__name__}.")
        cands = [Candidate(i, t, [], 0) for i, t in enumerate(seed_texts)]
        return cls(cands, [], {}, random.Random(seed), MinibatchSampler(minibatch_size))

    # -- queries ---------------------------------------------------------------------------

    @property
    def active_ids(self) -> list[int]:
        return sorted(self.scores)

    def mean_score(self, cid: int) -> float:
        s = self.scores.get(cid)
        if not s:
            return -math.inf
        return sum(s.values()) / len(s)

    def mean_scores(self) -> dict[int, float]:
        return {cid: self.mean_score(cid) for cid in self.active_ids}

    def fronts(self) -> dict[str, tuple[float, list[int]]]:
        return build_fronts(self.scores, self.anchor_ids)

    def front_sets(self) -> dict[str, list[int]]:
        return {aid: members for aid, (_, members) in self.fronts().items()}

    def coverage(self) -> dict[int, int]:
        """Number of instance fronts each active candidate is on (ties count)."""
        cov = dict.fromkeys(self.active_ids, 0)
        for members in self.front_sets().values():
            for cid in members:
                cov[cid] += 1
        return cov

    def selection_probabilities(self) -> dict[int, float]:
        w = selection_weights(self.front_sets(), self.mean_scores())
        total = sum(w.values())
        return {cid: n / total for cid, n in w.items()}

    # -- decisions (consume the RNG) ---------------------------------------------------------

    def select_parent(self, strategy: str = "pareto") -> int:
        """Pareto-frequency parent draw (`gepa`'s default) or the best mean score (`current_best`)."""
        if strategy == "current_best":
            means = self.mean_scores()
            return max(self.active_ids, key=lambda c: (means[c], -c))
        if strategy != "pareto":
            raise ValueError(
                f"Unknown candidate selection {strategy!r}; use 'pareto' or 'current_best'."
            )
        w = selection_weights(self.front_sets(), self.mean_scores())
        pool = [cid for cid, n in w.items() for _ in range(n)]
        return self.rng.choice(pool)

    def next_minibatch(self) -> list[str]:
        return self.sampler.next_ids(self.rng)

    # -- mutation ----------------------------------------------------------------------------

    def set_anchor_set(self, anchor_ids: Sequence[str]) -> None:
        """Switch to a new anchor set: old scores describe another set (and policy), so drop them."""
        ids = list(anchor_ids)
        if not ids:
            raise ValueError("anchor set is empty: pass the cycle's anchor example ids.")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"anchor ids must be unique; duplicated: {dup[:5]}.")
        for i in ids:
            if not isinstance(i, str):
                raise TypeError(
                    f"anchor ids must be str (Example.id), got {type(i).__name__}: {i!r}."
                )
        if ids != self.anchor_ids:
            self.sampler.reset(ids)
        self.anchor_ids = ids
        self.scores = {}

    def record_scores(self, cid: int, scores: Mapping[str, float]) -> None:
        missing = [a for a in self.anchor_ids if a not in scores]
        if missing:
            raise ValueError(f"candidate {cid} lacks scores for anchor ids {missing[:5]}.")
        self.scores[cid] = {a: float(scores[a]) for a in self.anchor_ids}

    def add_candidate(self, text: str, parents: list[int], cycle: int) -> int:
        cid = len(self.candidates)
        self.candidates.append(Candidate(cid, text, list(parents), cycle))
        return cid

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- serialisation -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
            "anchor_ids": self.anchor_ids,
            "scores": {str(cid): s for cid, s in self.scores.items()},
            "rng": rng_state_to_json(self.rng),
            "sampler": self.sampler.to_json(),
            "exported_ids": self.exported_ids,
            "lm_cache": self.lm_cache,
            "counters": self.counters,
            "rounds": self.rounds,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PopulationState:
        if d.get("version") != STATE_VERSION:
            raise ValueError(
                f"GEPA state version {d.get('version')!r} is not supported (expected {STATE_VERSION}); "
                "restore it with the fst_jax release that wrote it."
            )
        return cls(
            candidates=[Candidate(**c) for c in d["candidates"]],
            anchor_ids=list(d["anchor_ids"]),
            scores={int(cid): dict(s) for cid, s in d["scores"].items()},
            rng=rng_from_json(d["rng"]),
            sampler=MinibatchSampler.from_json(d["sampler"]),
            exported_ids=list(d["exported_ids"]),
            lm_cache=dict(d["lm_cache"]),
            counters=dict(d["counters"]),
            rounds=int(d["rounds"]),
        )

    @classmethod
    def loads(cls, s: str) -> PopulationState:
        return cls.from_json(json.loads(s))


@dataclasses.dataclass(frozen=True)
class ExportedContext:
    id: int
    text: str
    mean_score: float
    coverage: int
    on_front: bool


def export_top_k(state: PopulationState, k: int) -> list[ExportedContext]:
    """The K contexts for the next RL steps: non-dominated front members by (coverage, mean score),
    then, if the front is smaller than K, the best remaining active candidates by mean score.

    Records the choice in `state.exported_ids` (the set carried into the next round).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if not state.scores:
        raise ValueError(
            "The population has no scores on the anchor set yet; run a GEPA round first."
        )
    means, cov = state.mean_scores(), state.coverage()
    front = remove_dominated(state.front_sets(), means)
    ranked = sorted(front, key=lambda c: (-cov[c], -means[c], c))
    rest = sorted(
        (c for c in state.active_ids if c not in front), key=lambda c: (-means[c], -cov[c], c)
    )
    chosen = (ranked + rest)[:k]
    state.exported_ids = list(chosen)
    return [
        ExportedContext(c, state.candidates[c].text, means[c], cov[c], c in front) for c in chosen
    ]
