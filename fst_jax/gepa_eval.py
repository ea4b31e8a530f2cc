"""GEPA's policy-evaluation callback on the run's sampler: (candidate, example) pairs → scores.

`fst_jax.gepa.run_round` asks ``evaluate(cids, eids)`` for the score, feedback and rollout text
of candidate ``cids[j]`` on example ``eids[j]``. This makes that ONE sampler call over all pairs:
each distinct candidate text gets a slot of the prompt bank, and pair j samples example j under
its slot. Two edge cases are handled here rather than in GEPA:

- a context longer than a bank row cannot be sampled: it scores 0 with feedback saying so (GEPA
  then rejects it), counted in `overlong`;
- more distinct texts than bank rows (only with a pool above ``gepa.max_pool``): one sampler call
  per chunk of ``bank.max_prompts`` texts.

Rollout reuse (``rl.reuse_gepa_rollouts``): given a `fst_jax.rl.reuse.RolloutStore`, the rollouts
of every candidate scored on the WHOLE anchor set in a call (re-scoring, full scoring of an
accepted child) are kept there — tokens, θ_c log-probs, reward — for the cycle's RL steps; such
calls fetch the token arrays (``arrays=True``), all others only texts. Minibatch evaluations are
not kept (the rule and why: `fst_jax.rl.reuse`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from fst_jax.rl.reuse import RolloutStore, compact_rows


class SamplerEvaluator:
    """``evaluate(cids, eids) -> (scores, feedbacks, rollouts)`` for one GEPA round."""

    def __init__(
        self,
        *,
        population: Any,
        bank: Any,
        sampler: Any,
        task: Any,
        params: Any,
        examples: Mapping[str, Any],
        sampling: Any,
        key_for: Callable[[int, int], jax.Array],
        on_evaluated: Callable[[int], None] = lambda n: None,
        store: RolloutStore | None = None,
    ) -> None:
        self.population, self.bank, self.sampler, self.task = population, bank, sampler, task
        self.params, self.examples, self.sampling = params, examples, sampling
        self.key_for, self.on_evaluated, self.store = key_for, on_evaluated, store
        self.calls = 0  # evaluate() calls so far: part of every sampler key
        self.overlong = 0  # rollouts scored 0 because their context did not fit a bank row

    def _text(self, cid: int) -> str:
        return self.population.candidates[cid].text

    def _whole_set_texts(self, cids: list[int], eids: list[str]) -> set[str]:
        """Texts this call scores on every anchor (their rollouts go to the store)."""
        if self.store is None:
            return set()
        seen: dict[str, set[str]] = {}
        for cid, eid in zip(cids, eids):
            seen.setdefault(self._text(cid), set()).add(eid)
        return {t for t, s in seen.items() if s >= set(self.examples)}

    def __call__(self, cids: list[int], eids: list[str]) -> tuple[list, list, list]:
        if len(cids) != len(eids):
            raise ValueError(f"{len(cids)} candidate ids but {len(eids)} example ids")
        texts = sorted({self._text(cid) for cid in cids})
        results: dict[int, tuple[float, str, str]] = {}
        too_long = {t for t in texts if len(self.bank.layout.encode_context(t)) > self.bank.max_len}
        for j, cid in enumerate(cids):
            if self._text(cid) in too_long:
                results[j] = (0.0, f"The context is too long: it must render to at most "
                              f"{self.bank.max_len} tokens. Make it shorter.", "")  # fmt: skip
                self.overlong += 1
        texts = [t for t in texts if t not in too_long]
        keep = self._whole_set_texts(cids, eids)
        for lo in range(0, len(texts), self.bank.max_prompts):
            chunk = texts[lo : lo + self.bank.max_prompts]
            slot = {t: i for i, t in enumerate(chunk)}
            pairs = [(j, slot[self._text(cid)]) for j, cid in enumerate(cids)
                     if self._text(cid) in slot]  # fmt: skip
            rows = [self.examples[eids[j]] for j, _ in pairs]
            arrays = any(t in keep for t in chunk)
            out = self.sampler.sample(
                self.params, self.bank.with_contexts(chunk),
                np.asarray([s for _, s in pairs], np.int32), [ex.question for ex in rows],
                self.key_for(self.calls, lo), self.sampling, arrays=arrays,
            )  # fmt: skip
            verdicts = self.task.verify_batch(rows, out.texts)
            for (j, _), v, txt in zip(pairs, verdicts, out.texts):
                results[j] = (v.reward, v.feedback, txt)
            if arrays:
                compact = compact_rows(out, [v.reward for v in verdicts])
                for (j, _), row in zip(pairs, compact):
                    if self._text(cids[j]) in keep:
                        self.store.add(self._text(cids[j]), eids[j], row)
        self.calls += 1
        self.on_evaluated(len(cids))
        ordered = [results[j] for j in range(len(cids))]
        return [r[0] for r in ordered], [r[1] for r in ordered], [r[2] for r in ordered]

    def round_metrics(self, report: Any, population: Any, top: list, *, cycle: int,
                      leak: tuple[float, int], seconds: float) -> dict[str, Any]:  # fmt: skip
        """The round's ``gepa/*`` record: GEPA's report, the exported top-K, this evaluator's
        counters (over-long contexts, stored rollouts) and the answer-leak check."""
        m = {f"gepa/{k}": v for k, v in report.metrics().items()}
        m.update({
            "gepa/pool_size": len(population.active_ids),
            "gepa/best_anchor_score": top[0].mean_score,
            "gepa/exported_mean_score": float(np.mean([e.mean_score for e in top])),
            "gepa/best_context": top[0].text,
            "time/gepa_round_s": seconds,
            "gepa/cycle": cycle,
            "gepa/overlong_rollouts": self.overlong,
            "gepa/answer_leak": leak[0],
            "gepa/answer_leak_checked": leak[1],
        })  # fmt: skip
        if self.store is not None:
            m["gepa/reuse_stored_rows"] = len(self.store)
            m["gepa/reuse_store_dropped"] = self.store.dropped
        return m
