"""Validation: mean@k with the best context and with none, running max, quadrants, KL to base.

* ``val/mean@k``: each validation problem is sampled k times (k = 4 in the paper) with the best
  exported context; the score is the mean reward over problems × samples.
* ``val/mean@k_no_context``: the same without any context (the paper's OOD protocol, "evaluated
  with no GEPA prompt"), which isolates what the slow weights learned.
* ``val/mean@k_seed_context``: the same under the run's seed context at every evaluation, so the
  start and end of a run are compared under one fixed context (the best context changes as GEPA
  evolves it; in mode rl the two are the same rollouts).
* ``val/mean@k…_se``: the standard error of each score over validation problems (the k samples of a
  problem are averaged first, so correlated samples are not counted as independent), and
  ``val/per_example@k…``: the per-problem scores themselves (lists, in metrics.jsonl and the
  checkpointed first/last evaluation) for paired start-vs-end differences (`paired_delta`).
* ``val/mean@k_running_max``: the running maximum over evaluations (the paper plots it).
* ``val/kl_to_base``: KL(π_θ ‖ π_base) on held-out prompts, without context ("slow-weight
  displacement", paper §2.5): completions are sampled from π_θ and the exact full-vocabulary
  per-token KL is averaged over their tokens (``k1``/``k3`` Monte-Carlo estimates logged too).
  π_base is always the run's original base model, also in a plasticity run (``init_from``);
  there ``val/kl_to_init`` adds the KL to the loaded starting weights.
* Quadrants (paper P-v2 ``indist_quadrants``): {start, trained} weights × {seed, trained}
  context, mean@k each (start = the base model, or the ``init_from`` weights the run began with;
  the keys keep the name ``base_w``).
* Task streams (continual learning, paper Fig. 6): every task of the stream is evaluated at
  every evaluation under ``val/<task>/…`` with its own running max (`task_prefixed`);
  ``val/mean@k`` is then the mean over the stream's tasks, so it keeps one meaning across switches.
* ``gepa/answer_leak`` (`answer_leak`): the fraction of upcoming RL problems whose gold answer
  appears verbatim in an exported context (GEPA's feedback shows gold answers).

Everything samples through one :class:`fst_jax.sampling.Sampler` call per (weights, context)
setting; the bank passed in has fixed shapes, so evaluations never recompile the sampler.
The controller passes the same key to every evaluation of a task (common random numbers): a
problem's k samples use the same random draws at start and end, so sampling noise largely
cancels in the paired start-vs-end difference, and unchanged weights under an unchanged context
score exactly the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fst_jax.sampling import PromptBank, Sampler, SamplingParams

KL_KEY = "val/kl_to_base"
KL_INIT_KEY = "val/kl_to_init"


@dataclasses.dataclass
class MeanAtK:
    mean: float  # over problems × samples
    per_example: list[float]  # mean over the k samples of each problem
    rollouts: Any  # the sampler's Rollouts (rows = problem-major, k per problem)
    verdict_status: dict[str, int]


def mean_at_k(
    sampler: Sampler,
    params: Any,
    bank: PromptBank,
    slot: int,
    examples: Sequence[Any],
    task: Any,
    k: int,
    key: jax.Array,
    sampling: SamplingParams,
) -> MeanAtK:
    """k samples per example under bank row ``slot`` (``bank.no_context`` for none), verified."""
    if not examples:
        raise ValueError("validation set is empty; raise eval.num_examples or check the task split")
    if k < 1:
        raise ValueError(f"eval.k must be >= 1, got {k}")
    rows = [ex for ex in examples for _ in range(k)]
    idx = np.full((len(rows),), slot, np.int32)
    out = sampler.sample(
        params, bank, idx, [ex.question for ex in rows], key, sampling,
        row_ids=np.arange(len(rows), dtype=np.int32),
    )  # fmt: skip
    verdicts = task.verify_batch(rows, out.texts)
    rewards = np.asarray([v.reward for v in verdicts], np.float64).reshape(len(examples), k)
    status: dict[str, int] = {}
    for v in verdicts:
        status[v.status] = status.get(v.status, 0) + 1
    return MeanAtK(float(rewards.mean()), rewards.mean(1).tolist(), out, status)


def standard_error(per_example: Sequence[float]) -> float:
    """SE of the mean over problems (sample sd, ddof 1); 0 for fewer than two problems."""
    x = np.asarray(per_example, np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def paired_delta(start: Sequence[float], end: Sequence[float]) -> tuple[float, float]:
    """(mean, SE) of end − start over the same problems: the paired test of a change."""
    a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_delta: {a.shape} vs {b.shape} problems; not the same set")
    d = b - a
    return float(d.mean()), standard_error(d)


def _score(m: dict[str, Any], key: str, r: MeanAtK) -> None:
    m[key] = r.mean
    m[f"{key}_se"] = standard_error(r.per_example)
    m[key.replace("val/mean@", "val/per_example@", 1)] = [round(x, 6) for x in r.per_example]


class _KLBatch:
    """The three arrays ``measure_kl`` reads, padded to a row multiple with empty rows."""

    def __init__(self, rollouts: Any, rows: int, multiple: int) -> None:
        take = lambda x: np.asarray(jax.device_get(x))[:rows]  # noqa: E731
        tokens, positions, mask = (
            take(rollouts.tokens), take(rollouts.positions), take(rollouts.completion_mask)
        )  # fmt: skip
        pad = (-rows) % max(multiple, 1)
        if pad:
            tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), tokens.dtype)])
            positions = np.concatenate(
                [positions, np.full((pad, positions.shape[1]), -1, positions.dtype)]
            )
            mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
        self.tokens, self.positions, self.completion_mask = tokens, positions, mask


def kl_to_base(
    measure_kl: Callable[[Any, Any, Any], dict[str, Any]],
    params: Any,
    base_params: Any,
    rollouts: Any,
    rows: int,
    row_multiple: int = 1,
) -> dict[str, float]:
    """KL(π_θ ‖ π_base) on the first ``rows`` rollouts (sampled from π_θ)."""
    out = jax.device_get(measure_kl(params, base_params, _KLBatch(rollouts, rows, row_multiple)))
    return {
        KL_KEY: float(out["full"]),
        "val/kl_k1": float(out["k1"]),
        "val/kl_k3": float(out["k3"]),
        "val/kl_tokens": float(out["tokens"]),
    }


@dataclasses.dataclass
class RunningMax:
    """Running maximum of val/mean@k across evaluations (checkpointed with the run)."""

    value: float = float("-inf")

    def update(self, x: float) -> float:
        self.value = max(self.value, float(x))
        return self.value


def validate(
    *,
    sampler: Sampler,
    params: Any,
    base_params: Any,
    bank: PromptBank,
    best_context: str,
    seed_context: str,
    examples: Sequence[Any],
    task: Any,
    k: int,
    kl_examples: int,
    key: jax.Array,
    sampling: SamplingParams,
    measure_kl: Callable[[Any, Any, Any], dict[str, Any]] | None,
    running_max: RunningMax,
    quadrants: bool = False,
    row_multiple: int = 1,
    init_params: Any = None,
) -> dict[str, Any]:
    """One evaluation: mean@k (best context, no context), running max, KL, optional quadrants.

    ``bank`` is refilled with [best_context, seed_context] (same shapes → no recompilation).
    One key per context role (seed, none, best), shared by both weights: with the same ``key``
    at every evaluation, a context's samples use the same random draws whatever the weights, so
    start-vs-end and weights-quadrant differences are paired (common random numbers).
    """
    bank = bank.with_contexts([best_context, seed_context])
    k_seed, k_none, _, k_best = jax.random.split(key, 4)
    same = best_context == seed_context
    best = mean_at_k(
        sampler, params, bank, 0, examples, task, k, k_seed if same else k_best, sampling
    )
    none = mean_at_k(sampler, params, bank, bank.no_context, examples, task, k, k_none, sampling)
    # Trained weights × seed context (also the quadrant cell): the same rollouts as `best` while
    # the best context is still the seed, so mode rl and a run's start pay nothing extra.
    seed = (
        best if same else mean_at_k(sampler, params, bank, 1, examples, task, k, k_seed, sampling)
    )
    m: dict[str, Any] = {}
    _score(m, f"val/mean@{k}", best)
    _score(m, f"val/mean@{k}_no_context", none)
    _score(m, f"val/mean@{k}_seed_context", seed)
    m.update({
        f"val/mean@{k}_running_max": running_max.update(best.mean),
        "val/num_examples": len(examples),
        "val/best_context_chars": len(best_context),
    })  # fmt: skip
    for status, n in sorted(best.verdict_status.items()):
        m[f"val/status/{status}"] = n / (len(examples) * k)
    if measure_kl is not None and kl_examples > 0:
        # Held-out prompts without context; one sample per prompt from the no-context rollouts.
        n_kl = min(kl_examples, len(examples))
        first = _first_sample_rows(none.rollouts, n_kl, k)
        m.update(kl_to_base(measure_kl, params, base_params, first, n_kl, row_multiple))
        if init_params is not None:  # plasticity run: also the KL to its starting weights
            kl_init = kl_to_base(measure_kl, params, init_params, first, n_kl, row_multiple)
            m[KL_INIT_KEY] = kl_init[KL_KEY]
    if quadrants:
        # start weights × {seed, trained} context; trained weights' cells are the runs above.
        # "Base" weights are the ones this run started from: the base model, or the warm start
        # / earlier run it was initialised from (init_from).
        start = base_params if init_params is None else init_params
        base_seed = mean_at_k(sampler, start, bank, 1, examples, task, k, k_seed, sampling)
        qs = {
            "base_w/seed_p": base_seed,
            "base_w/trained_p": base_seed if same else mean_at_k(
                sampler, start, bank, 0, examples, task, k, k_best, sampling),
            "trained_w/seed_p": seed,
            "trained_w/trained_p": best,
        }  # fmt: skip
        for name, r in qs.items():
            m[f"val/quadrant/{name}"] = r.mean
    return m


class _Rows:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _first_sample_rows(rollouts: Any, n: int, k: int) -> Any:
    """Rows 0, k, 2k, ...: the first sample of each of the first n problems."""
    sel = np.arange(n) * k
    get = lambda x: np.asarray(jax.device_get(x))[sel]  # noqa: E731
    return _Rows(
        tokens=get(rollouts.tokens),
        positions=get(rollouts.positions),
        completion_mask=get(rollouts.completion_mask),
    )


def task_prefixed(metrics: dict[str, Any], task: str) -> dict[str, Any]:
    """``val/x`` → ``val/<task>/x``: one task's evaluation inside a stream's."""
    return {f"val/{task}/{k.removeprefix('val/')}": v for k, v in metrics.items()}


def stream_mean(per_task: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """Mean over the stream's tasks of each of `keys` present in every task's metrics."""
    out = {}
    for key in keys:
        vals = [m[key] for m in per_task.values() if key in m]
        if vals and len(vals) == len(per_task):
            out[key] = float(np.mean(vals))
    return out


def stream_metrics(
    per_task: dict[str, dict[str, Any]], k: int, running_max: RunningMax
) -> dict[str, Any]:
    """A stream's evaluation record: each task's metrics under ``val/<task>/…``, the mean over
    the tasks of the headline keys (mean@k with and without context, the KLs) under their plain
    names, and the stream's running max of that mean (`running_max` is updated)."""
    m: dict[str, Any] = {}
    for name, tm in per_task.items():
        m.update(task_prefixed(tm, name))
    m.update(stream_mean(per_task, [
        f"val/mean@{k}", f"val/mean@{k}_no_context", KL_KEY, KL_INIT_KEY, "val/kl_k1", "val/kl_k3",
    ]))  # fmt: skip
    m[f"val/mean@{k}_running_max"] = running_max.update(m[f"val/mean@{k}"])
    return m


def _contains_verbatim(text: str, answer: str) -> bool:
    """`answer` occurs in `text` not glued to a letter/digit on either side."""
    import re

    pat = r"(?<![0-9A-Za-z])" + re.escape(answer) + r"(?![0-9A-Za-z])"
    return re.search(pat, text) is not None


def answer_leak(
    contexts: Sequence[str], golds: Sequence[Any], min_chars: int = 3
) -> tuple[float, float]:
    """(leaked, checked): fractions of `golds` that appear verbatim in some context, and that were
    long enough (>= `min_chars` after strip) to check at all; shorter golds (a letter, one digit)
    would match by chance, so they count as not leaked and lower `checked`."""
    if not golds:
        return 0.0, 0.0
    leaked = checked = 0
    for gold in golds:
        g = str(gold).strip() if gold is not None else ""
        if len(g) < min_chars:
            continue
        checked += 1
        leaked += any(_contains_verbatim(c, g) for c in contexts)
    return leaked / len(golds), checked / len(golds)
