"""One budgeted GEPA round on the frozen policy (paper §1.6 / §4).

GEPA never touches JAX. It scores contexts through an evaluation callback

    evaluate(candidate_ids: list[int], example_ids: list[str])
        -> (scores: list[float], feedbacks: list[str], rollout_texts: list[str])

where the two input lists have equal length and are zipped: entry j asks for one rollout of
example `example_ids[j]` under the context of pool candidate `candidate_ids[j]` (its text is
`state.candidates[cid].text`), and entry j of each output belongs to that pair. The controller
implements it with one sampler call for all pairs. Every pair is one metric call of the budget.
A proposed child is appended to `state.candidates` before its minibatch evaluation and removed
again if rejected, so the id of a rejected child is reused by the next proposal: key any
tokenisation cache on the candidate's text, not its id.

Round: re-score the carried candidates on the anchor set (charged to the budget or not, per
`GepaConfig.rescore_budget`), then iterate: select a parent by Pareto frequency → evaluate it on
a minibatch → skip if perfect → reflect → evaluate the child on the same minibatch → accept on a
strict improvement of the minibatch sum → score the child on the anchor set → update the fronts.

Budget: the `gepa` package starts an iteration while calls < budget and may overshoot by one
iteration; a round here never exceeds its budget yet spends it. An iteration starts while its
minibatch part (2·minibatch) fits, so at most 2·minibatch − 1 calls stay unused (≥ 99 % of the
paper's 960). A child that passes the minibatch test when its anchor evaluation (|anchors| calls)
no longer fits is dropped and counted (`unaffordable`); the `gepa` package would have scored it
past its budget. Up to that first drop the round's calls are exactly the `gepa` package's.
`GepaConfig.max_consecutive_skips` ends a round after that many iterations in a row in which the
reflection LM gave no usable context (counted in `stopped_on_skips`), rather than re-evaluating
parents for the whole budget. Merge is not offered: with a single component (the context) a GEPA
merge can only reproduce one of its parents' texts.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from fst_jax.gepa.population import PopulationState, remove_dominated
from fst_jax.gepa.reflection import Reflector

EvaluateFn = Callable[[list[int], list[str]], tuple[list[float], list[str], list[str]]]


@dataclasses.dataclass(frozen=True)
class GepaConfig:
    """GEPA knobs; defaults are the `gepa` package's (minibatch 3, strict acceptance, perfect 1.0)."""

    minibatch_size: int = 3
    perfect_score: float = 1.0
    skip_perfect_score: bool = True
    acceptance: str = "strict_improvement"  # or "improvement_or_equal"
    candidate_selection: str = "pareto"  # or "current_best"
    rescore_budget: str = (
        "separate"  # "separate" (SHIP) or "shared" (re-scoring counts against the budget)
    )
    # Which pool members a round re-scores and evolves: "exported" (the last export_top_k set: the
    # paper's Φ ← top-K), "all" (the whole pool), or an int k (the first k of the last export).
    carry: str | int = "exported"
    max_rollout_chars: int = 4000  # per example in the reflective dataset
    # End the round after this many consecutive iterations whose reflection gave no usable
    # context (0 = never): a broken reflection LM would otherwise spend the budget on parents.
    max_consecutive_skips: int = 0

    def __post_init__(self) -> None:
        if self.acceptance not in ("strict_improvement", "improvement_or_equal"):
            raise ValueError(
                f"acceptance must be 'strict_improvement' or 'improvement_or_equal', got {self.acceptance!r}."
            )
        if self.rescore_budget not in ("separate", "shared"):
            raise ValueError(
                f"rescore_budget must be 'separate' or 'shared', got {self.rescore_budget!r}."
            )
        if self.candidate_selection not in ("pareto", "current_best"):
            raise ValueError(
                f"candidate_selection must be 'pareto' or 'current_best', got {self.candidate_selection!r}."
            )
        if not isinstance(self.max_consecutive_skips, int) or self.max_consecutive_skips < 0:
            raise ValueError(
                f"max_consecutive_skips must be an int >= 0 (0 = never stop), got "
                f"{self.max_consecutive_skips!r}."
            )
        if self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be >= 1, got {self.minibatch_size}.")
        if not (
            self.carry in ("exported", "all") or (isinstance(self.carry, int) and self.carry >= 1)
        ):
            raise ValueError(f"carry must be 'exported', 'all' or an int >= 1, got {self.carry!r}.")


@dataclasses.dataclass(frozen=True)
class IterationRecord:
    iteration: int
    parent: int
    minibatch: list[str]
    parent_scores: list[float]
    child_scores: list[float] | None
    decision: str  # accepted | rejected | unaffordable | skipped_perfect | skipped_lm
    child: int | None = None
    skip_reason: str | None = None
    calls: int = 0  # rollouts this iteration requested (parent + child minibatch, child anchors)
    child_text: str | None = None  # the proposal, accepted or not (the GEPA log hashes it)


@dataclasses.dataclass
class RoundReport:
    cycle: int
    budget: int
    rescored: list[int]
    rescore_calls: int
    rescore_charged: bool
    calls_used: int  # charged against `budget` (includes re-scoring when rescore_budget='shared')
    total_calls: int  # every rollout requested this round
    iterations: int = 0
    accepted: int = 0
    rejected: int = 0
    skipped_perfect: int = 0
    skipped_lm: int = 0
    unaffordable: int = 0  # children that passed the minibatch but whose anchor scoring did not fit
    stopped_on_skips: int = 0  # 1 if max_consecutive_skips ended the round
    skip_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    new_candidates: list[int] = dataclasses.field(default_factory=list)
    records: list[IterationRecord] = dataclasses.field(default_factory=list)
    pool_size: int = 0
    front: list[int] = dataclasses.field(default_factory=list)  # non-dominated active candidates
    best_mean: float = 0.0  # best mean anchor score in the population after the round
    front_mean: float = (
        0.0  # mean over anchors of the per-instance best score (the Pareto "oracle")
    )

    def metrics(self) -> dict[str, float]:
        """Flat scalars for the metrics stream."""
        m = {
            k: float(getattr(self, k))
            for k in ("calls_used", "total_calls", "rescore_calls", "iterations")
        }
        decisions = ("accepted", "rejected", "skipped_perfect", "skipped_lm", "unaffordable")
        m.update({k: float(getattr(self, k)) for k in (*decisions, "stopped_on_skips")})
        m.update({f"skip/{k}": float(v) for k, v in self.skip_reasons.items()})
        return m


def _checked_evaluate(
    evaluate: EvaluateFn, cids: list[int], eids: list[str]
) -> tuple[list[float], list[str], list[str]]:
    out = evaluate(list(cids), list(eids))
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise TypeError(
            "evaluate(candidate_ids, example_ids) must return (scores, feedbacks, rollout_texts)."
        )
    scores, feedbacks, texts = (list(x) for x in out)
    n = len(cids)
    if not (len(scores) == len(feedbacks) == len(texts) == n):
        raise ValueError(
            f"evaluate returned {len(scores)} scores, {len(feedbacks)} feedbacks and {len(texts)} rollout texts "
            f"for {n} (candidate, example) pairs; return exactly one entry per pair, in order."
        )
    for s in scores:
        if not isinstance(s, int | float) or not math.isfinite(s):
            raise ValueError(
                f"evaluate returned a non-finite or non-numeric score {s!r}; scores must be finite floats."
            )
    return [float(s) for s in scores], [str(f) for f in feedbacks], [str(t) for t in texts]


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters truncated]"


def reflective_records(
    inputs: Mapping[str, str],
    example_ids: Sequence[str],
    texts: Sequence[str],
    feedbacks: Sequence[str],
    limit: int,
) -> list[dict[str, str]]:
    """GEPA's reflective dataset: one record per example with Inputs / Generated Outputs / Feedback."""
    return [
        {
            "Inputs": _clip(inputs[e], limit),
            "Generated Outputs": _clip(t, limit),
            "Feedback": _clip(f, limit),
        }
        for e, t, f in zip(example_ids, texts, feedbacks, strict=True)
    ]


def _carried_ids(state: PopulationState, carry: str | int) -> list[int]:
    if carry == "all":
        return [c.id for c in state.candidates]
    k = None if carry == "exported" else int(carry)
    if state.exported_ids:
        return list(state.exported_ids[:k])
    if state.scores:  # never exported: the best active candidates by mean score
        means = state.mean_scores()
        return sorted(means, key=lambda c: (-means[c], c))[: k or len(means)]
    return [c.id for c in state.candidates]  # first round: the seed(s)


def budget_warning(
    budget: int,
    num_anchors: int,
    minibatch_size: int,
    rescore_calls: int = 0,
    min_iterations: int = 3,
) -> str | None:
    """A pre-flight message when `budget` cannot pay for `min_iterations` worst-case iterations.

    Worst case = an accepted child: 2·minibatch + |anchors| rollouts; `rescore_calls` is what
    re-scoring carried candidates takes from the same budget (rescore_budget='shared').
    """
    worst = 2 * minibatch_size + num_anchors
    n = max(budget - rescore_calls, 0) // worst
    if n >= min_iterations:
        return None
    need = rescore_calls + min_iterations * worst
    return (
        f"gepa.budget={budget} pays for only {n} worst-case GEPA iteration(s) per round "
        f"(each accepted child costs 2·minibatch + anchors = {worst} rollouts"
        + (f", after {rescore_calls} re-scoring calls" if rescore_calls else "")
        + f"); raise gepa.budget to >= {need} or lower gepa.anchor_size for at least "
        f"{min_iterations}"
    )


def run_round(
    state: PopulationState,
    evaluate: EvaluateFn,
    reflector: Reflector,
    anchors: Mapping[str, str],
    budget: int,
    *,
    config: GepaConfig | None = None,
    cycle: int | None = None,
) -> RoundReport:
    """Run one GEPA round in place on `state`; `anchors` maps anchor example id -> input text.

    Deterministic given the state (its RNG and sampler advance) and the callbacks' answers, so
    every process of a multi-host run, and a run restored from `state.to_json()`, makes the same
    decisions.
    """
    config = config or GepaConfig()
    cycle = state.rounds if cycle is None else cycle
    if not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget must be a non-negative int (rollouts), got {budget!r}.")
    if not isinstance(anchors, Mapping) or not anchors:
        raise ValueError(
            "anchors must be a non-empty mapping {example id: input text} for this cycle."
        )
    bad = [k for k, v in anchors.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(
            f"anchors must map example id -> input text (str); not str for ids {bad[:5]}."
        )
    if config.minibatch_size != state.sampler.minibatch_size:
        raise ValueError(
            f"config.minibatch_size={config.minibatch_size} but the state was built with "
            f"{state.sampler.minibatch_size}; create the state with PopulationState.new(..., minibatch_size=...)."
        )
    anchor_ids = list(anchors)
    # Reply-cache entries older than the previous round can no longer be replayed; drop them.
    state.lm_cache = {
        k: v for k, v in state.lm_cache.items() if v.get("round", 0) >= state.rounds - 1
    }

    # 1) Carried candidates, re-scored under the current (frozen) policy.
    carried = sorted(_carried_ids(state, config.carry))
    rescore_calls = len(carried) * len(anchor_ids)
    charged = config.rescore_budget == "shared"
    if charged and rescore_calls > budget:
        raise ValueError(
            f"re-scoring {len(carried)} carried candidates on {len(anchor_ids)} anchors costs {rescore_calls} "
            f"rollouts, more than the round budget {budget}; raise the budget, lower GepaConfig.carry, "
            "or use rescore_budget='separate'."
        )
    state.set_anchor_set(anchor_ids)
    cids = [c for c in carried for _ in anchor_ids]
    scores, _, _ = _checked_evaluate(evaluate, cids, anchor_ids * len(carried))
    for k, cid in enumerate(carried):
        state.record_scores(
            cid, dict(zip(anchor_ids, scores[k * len(anchor_ids) : (k + 1) * len(anchor_ids)]))
        )

    report = RoundReport(
        cycle,
        budget,
        carried,
        rescore_calls,
        charged,
        rescore_calls if charged else 0,
        rescore_calls,
    )
    b = config.minibatch_size
    reasons: Counter[str] = Counter()
    lm_skips_in_a_row = 0

    def spend(n: int) -> None:
        report.calls_used += n
        report.total_calls += n

    # 2) The reflective-mutation loop.
    while report.calls_used + 2 * b <= budget:
        if config.max_consecutive_skips and lm_skips_in_a_row >= config.max_consecutive_skips:
            report.stopped_on_skips = 1
            break
        it, start = state.counters.get("iterations", 0), report.total_calls
        state.bump("iterations")
        report.iterations += 1
        parent = state.select_parent(config.candidate_selection)
        mb = state.next_minibatch()
        p_scores, p_fb, p_texts = _checked_evaluate(evaluate, [parent] * len(mb), mb)
        spend(len(mb))
        if config.skip_perfect_score and all(s >= config.perfect_score for s in p_scores):
            report.skipped_perfect += 1
            report.records.append(IterationRecord(it, parent, mb, p_scores, None, "skipped_perfect",
                                                  calls=report.total_calls - start))  # fmt: skip
            continue
        records = reflective_records(anchors, mb, p_texts, p_fb, config.max_rollout_chars)
        outcome = reflector.propose(
            state, state.candidates[parent].text, records, salt=f"iteration:{it}"
        )
        if outcome.text is None:
            lm_skips_in_a_row += 1
            report.skipped_lm += 1
            reasons[outcome.skip_reason] += 1
            report.records.append(IterationRecord(it, parent, mb, p_scores, None, "skipped_lm", None,
                                                  outcome.skip_reason, report.total_calls - start))  # fmt: skip
            continue
        lm_skips_in_a_row = 0
        # The child is evaluated before it joins the pool; it gets the next id if accepted.
        child_id = state.add_candidate(outcome.text, [parent], cycle)
        c_scores, _, _ = _checked_evaluate(evaluate, [child_id] * len(mb), mb)
        spend(len(mb))
        old, new = sum(p_scores), sum(c_scores)
        ok = new > old if config.acceptance == "strict_improvement" else new >= old
        if not ok:
            state.candidates.pop()
            report.rejected += 1
            report.records.append(IterationRecord(it, parent, mb, p_scores, c_scores, "rejected",
                                                  calls=report.total_calls - start,
                                                  child_text=outcome.text))  # fmt: skip
            continue
        if report.calls_used + len(anchor_ids) > budget:  # cannot be scored within the budget
            state.candidates.pop()
            report.unaffordable += 1
            report.records.append(IterationRecord(it, parent, mb, p_scores, c_scores, "unaffordable",
                                                  calls=report.total_calls - start,
                                                  child_text=outcome.text))  # fmt: skip
            continue
        full, _, _ = _checked_evaluate(evaluate, [child_id] * len(anchor_ids), anchor_ids)
        spend(len(anchor_ids))
        state.record_scores(child_id, dict(zip(anchor_ids, full)))
        report.accepted += 1
        report.new_candidates.append(child_id)
        report.records.append(IterationRecord(it, parent, mb, p_scores, c_scores, "accepted", child_id,
                                              calls=report.total_calls - start, child_text=outcome.text))  # fmt: skip

    report.skip_reasons = dict(sorted(reasons.items()))
    means, fronts = state.mean_scores(), state.fronts()
    report.pool_size = len(state.candidates)
    report.front = sorted(remove_dominated({a: m for a, (_, m) in fronts.items()}, means))
    report.best_mean = max(means.values())
    report.front_mean = sum(best for best, _ in fronts.values()) / len(fronts)
    for k in ("accepted", "rejected", "skipped_perfect", "skipped_lm", "unaffordable"):
        state.bump(k, getattr(report, k))
    state.bump("metric_calls", report.total_calls)
    state.rounds += 1
    return report
