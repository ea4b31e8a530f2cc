"""The FST loop: the one stateful object, wiring sampler, RL step, GEPA, tasks and checkpoints.

Read ``Controller.run`` top to bottom; one cycle is

  1. GEPA round on the frozen policy θ_c (modes gepa/fst/fst_distill): re-score the carried
     contexts on the cycle's anchor set (the next ``gepa.anchor_size`` training problems, i.e. a
     lookahead over the coming batches; ``gepa.anchors=disjoint``: a held-out slice of train),
     reflective mutation within ``gepa.budget`` rollouts, then export the top-K contexts into
     the prompt bank and log ``gepa/answer_leak``. Every GEPA evaluation is ONE sampler call
     over all its (candidate, example) pairs.
  2. T = ``rl.steps_per_cycle`` RL steps (modes rl/fst/fst_distill; a task stream's stage ends
     exactly at ``task.switch_every`` steps, see `cycle_plan`): a batch of problems, G
     rollouts each spread over the exported contexts as evenly as possible (`spread_contexts`:
     G/K per context; counts differ by at most one when fewer than K exist; mode rl uses the seed),
     verification, group advantages over all G rollouts of a problem, ``rl.updates_per_batch``
     jitted train steps (one per mini-batch of problems; 1 in the paper). The batch is built by
     `rl.collect_rollouts`; with ``rl.reuse_gepa_rollouts`` it first takes the round's stored
     rollouts of exported contexts (`fst_jax.rl.reuse`) and samples only the rest.
  3. Evaluation (every ``eval.every_cycles`` and at start/end; every task of a stream) and a
     checkpoint.

``fst_distill`` samples the student WITHOUT context and trains
``Σ_t KL(π_θ(·|x, y<t) ‖ sg π_θ(·|φ, x, y<t))`` (full-vocabulary reverse KL from the unprompted
student to the prompted teacher, same weights, teacher under stop-gradient, on the student's own
tokens; no reward term) — the RL module's ``fst_distill`` loss; φ cycles over the K exported
contexts (G/K rows each). ``gepa`` mode runs the rounds on frozen base weights and counts T
"steps" per cycle so its curves share the x-axis.

Determinism: every random draw is keyed by ``fold_in(seed key, step/cycle/purpose)``; GEPA's RNG
and reply cache live in its JSON state; the data position is a counter. So a run resumed from a
checkpoint reproduces the uninterrupted run's metrics.

What the loop is built from (config checks, model loading, the local reflection LM, progress
bars) lives in ``fst_jax.run_setup``.

Multi-host: every process runs this loop in lockstep; each rollout batch (RL, GEPA, validation,
local reflection) is sampled, decoded and verified per host for that host's rows only
(``rows.RowShardedSampler`` / ``RowShardedTask``) and the results gathered, so every
process holds the same scores and RL batch (process 0 alone writes files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fst_jax import checkpoint as ckpt_lib
from fst_jax import (
    distributed,
    evaluation,
    host_memory,
    metrics,
    paths,
    rl,
    run_summary,
)
from fst_jax import gepa as gepa_lib
from fst_jax.gepa import lineage
from fst_jax.gepa_eval import SamplerEvaluator
from fst_jax.run_setup import build_parts, progress, task_names, validate_config
from fst_jax.run_state import RunState, restore_run, save_run
from fst_jax.run_summary import format_summary
from fst_jax.sampling.prompt_bank import spread_contexts
from fst_jax.tasks.stream import DataStream, anchor_set, cycle_plan, stream_cycles, train_split

__all__ = [
    "Controller",
    "DataStream",
    "cycle_plan",
    "format_summary",
    "stream_cycles",
    "validate_config",
]

log = logging.getLogger(__name__)

_TAG_RL, _TAG_GEPA, _TAG_EVAL, _TAG_REFLECT, _TAG_INIT = 1, 2, 3, 4, 5


def _fold(key: jax.Array, *ints: int) -> jax.Array:
    for i in ints:
        key = jax.random.fold_in(key, int(i) & 0x7FFFFFFF)
    return key


def _text_hash(obj: Any) -> int:
    return int(hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8], 16)


class Controller:
    """Owns the run's state and I/O; everything it calls is a pure function or a jitted step.

    ``model`` (config, params, tokenizer) and ``reflection_lm`` can be injected (tests); by
    default the model comes from ``config.model.spec`` and the reflection LM from its registry
    (``local`` = the frozen base policy sampled through our sampler).
    """

    def __init__(self, config: Any, workdir: str | Path, *, model=None, reflection_lm=None) -> None:
        self.config, self.workdir = config, paths.workdir_path(workdir)  # gs:// stays a URI
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.is_main = jax.process_index() == 0
        c = config
        self.key = jax.random.key(c.seed)
        # Mesh, tasks, model, trainer, sampler, prompt bank, reflector: every field of
        # `run_setup.RunParts` becomes an attribute (self.sampler, self.tasks, self.G, ...). The
        # local reflection LM's keys read self.key at call time (a resumed run's restored key).
        parts = build_parts(
            c, model=model, reflection_lm=reflection_lm,
            reflect_key_for=lambda conv: _fold(self.key, _TAG_REFLECT, _text_hash(conv)),
        )  # fmt: skip
        vars(self).update({f.name: getattr(parts, f.name) for f in dataclasses.fields(parts)})
        self.state = self.train_step.init(self.start_params)
        # Rollout reuse (fst_jax.rl.reuse): the cycle's store of GEPA rollouts, never persisted
        # (checkpoints fall on cycle ends, where it is empty).
        self.reuse = c.rl.get("reuse_gepa_rollouts", "off")
        self.store: rl.RolloutStore | None = None
        # Host-side run state: one object that serialises itself into the checkpoint.
        self.rs = RunState.new(self.tasks, self._seed_prompt(task_names(c)[0]), seed=c.seed,
                               minibatch_size=c.gepa.minibatch)  # fmt: skip
        flat = ckpt_lib.flatten_config(c.to_dict())
        self.checkpointer = ckpt_lib.Checkpointer(self.workdir, flat, max_to_keep=c.checkpoint.keep,
                                                  allow_foreign=c.resume == "force")  # fmt: skip
        restored = restore_run(self.checkpointer, self.workdir, self.state, self.key, self.tasks,
                               resume=c.resume, is_main=self.is_main)  # fmt: skip
        if restored is not None:
            self.state, self.key, self.rs = restored
        self.writer = metrics.MetricsWriter(
            self.workdir, resume_step=self.rs.step if restored else None, run_config=flat,
            wandb_project=c.metrics.wandb if "metrics" in c else "",
        )  # fmt: skip
        self.gepa_log = lineage.GepaLog(self.workdir, enabled=self.is_main)

    def __getattr__(self, name: str) -> Any:
        """Read access to the run state's fields (``ctl.step``, ``ctl.population``, ...)."""
        if name in RunState.__dataclass_fields__ and "rs" in self.__dict__:
            return getattr(self.rs, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ setup helpers

    def _seed_prompt(self, task_name: str) -> str:
        c = self.config.task
        if c.seed_prompt:
            return c.seed_prompt
        if c.stream:
            return c.agnostic_seed_prompt
        return self.tasks[task_name].seed_prompt

    def _save(self) -> None:
        offsets = dict(metrics_offset=self.writer.offset(), gepa_log_offset=self.gepa_log.offset())
        save_run(self.checkpointer, self.rs, self.state, self.key, **offsets)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Runs the remaining cycles; returns the final summary dict."""
        c, t0 = self.config, time.time()
        if self.rs.cycle == 0 and self.rs.step == 0:
            self.writer.write(0, {"run/mode": c.mode, "run/task": ",".join(task_names(c)),
                                  "run/model": str(c.model.spec), "run/config": json.dumps(c.to_dict(), sort_keys=True)})  # fmt: skip
            if c.eval.at_start:
                self.rs.first_eval = self._evaluate(final=False)
                host_memory.trim()
        bar = progress(
            total=c.num_cycles, initial=self.rs.cycle, desc="FST cycles", enabled=c.progress
        )
        while self.rs.cycle < c.num_cycles:
            task_name, n_steps = cycle_plan(c, self.rs.cycle)
            task, stream = self.tasks[task_name], self._stream(task_name)
            # 1) fast weights: a GEPA round on the frozen policy, then top-K into the bank.
            if c.mode in ("gepa", "fst", "fst_distill"):
                self._gepa_round(task_name, stream, n_steps)
                host_memory.trim()  # each phase's freed buffers back to the OS
            # 2) slow weights: T RL steps (fewer only where a stream stage ends mid-cycle) with
            # G rollouts per problem over the K contexts.
            for _ in range(n_steps):
                if c.mode == "gepa":  # frozen weights: consume the same data, keep the x-axis
                    stream.take(c.rl.batch_size)
                    self.rs.step += 1
                    continue
                self._rl_step(task, stream)
                host_memory.trim()
            self.store = None  # a cycle's GEPA rollouts train only that cycle's steps
            self.rs.positions[task_name] = stream.position
            self.rs.cycle += 1
            last = self.rs.cycle == c.num_cycles
            if last or self.rs.cycle % c.eval.every_cycles == 0:
                self.rs.last_eval = self._evaluate(final=last)
                host_memory.trim()
            if last or self.rs.cycle % c.checkpoint.every_cycles == 0:
                self._save()
            bar.update(1)
            bar.set_postfix_str(
                f"step {self.rs.step} val {self.rs.last_eval.get(f'val/mean@{c.eval.k}', 'n/a')}"
            )
        bar.close()
        self.sampler.close()
        for task in self.tasks.values():
            task.close()
        summary = run_summary.summarize(
            self.rs, workdir=self.workdir, mode=c.mode, k=c.eval.k, wall_s=time.time() - t0,
            checkpoints=self.checkpointer.all_steps(),
        )  # fmt: skip
        self.writer.close()
        self.gepa_log.close()
        if self.is_main and c.summary:
            summary["png"] = run_summary.plot(self.workdir, c.eval.k)
        return summary

    def _split(self, task_name: str) -> tuple[list[Any], list[Any]]:
        g = self.config.gepa
        return train_split(self.tasks[task_name].examples("train"), task_name, anchors=g.anchors,
                           held_out=g.disjoint_size or g.anchor_size, seed=self.config.seed)  # fmt: skip

    def _stream(self, task_name: str) -> DataStream:
        return DataStream(self._split(task_name)[0], self.config.seed, self.rs.positions[task_name])

    def _gepa_round(self, task_name: str, stream: DataStream, n_steps: int) -> None:
        c = self.config.gepa
        task = self.tasks[task_name]
        anchors = anchor_set(stream, self._split(task_name)[1], anchors=c.anchors,
                             size=c.anchor_size, cycle=self.rs.cycle, seed=self.config.seed)  # fmt: skip
        carried = len(self.rs.population.exported_ids) or len(self.rs.population.candidates)
        bar = progress(c.budget + carried * len(anchors), 0, f"GEPA round {self.rs.cycle}",
                        self.config.progress, unit="rollout")  # fmt: skip
        self.sampler.phase = "gepa"
        cycle = self.rs.cycle
        # Reuse: GEPA's whole-anchor-set rollouts are kept for this cycle's RL steps; the bound
        # is what one round can produce (every carried context + its budget on the anchors).
        store = None
        if self.reuse != "off":
            store = rl.RolloutStore(self.sampling, (carried + 1) * len(anchors) + c.budget)
        evaluate = SamplerEvaluator(
            population=self.rs.population, bank=self.bank, sampler=self.sampler, task=task,
            params=self.start_params if self.config.mode == "gepa" else self.state.params,
            examples={ex.id: ex for ex in anchors}, sampling=self.sampling,
            key_for=lambda call, lo: _fold(self.key, _TAG_GEPA, cycle, call, lo),
            on_evaluated=bar.update, store=store,
        )  # fmt: skip
        t0, lm_before = time.time(), dict(self.rs.population.counters)
        report = gepa_lib.run_round(
            self.rs.population, evaluate, self.reflector, {ex.id: ex.question for ex in anchors},
            c.budget, config=self.gepa_config, cycle=self.rs.cycle,
        )  # fmt: skip
        bar.close()
        top = gepa_lib.export_top_k(self.rs.population, self.K)
        self.rs.exported = [e.text for e in top]
        if store is not None:  # only the exported contexts' rollouts (fst_jax.rl.reuse)
            store.keep_contexts(self.rs.exported)
            self.store = store
        self.gepa_log.write(lineage.round_rows(
            report, self.rs.population, top, step=self.rs.step,
            acceptance=self.gepa_config.acceptance,
            usage=lineage.usage_delta(lm_before, self.rs.population.counters)))  # fmt: skip
        # How many of the problems RL trains on next have their gold answer in an exported context.
        upcoming = stream.upcoming(n_steps * self.config.rl.batch_size)
        leak, checked = evaluation.answer_leak(
            self.rs.exported, [ex.gold for ex in upcoming], self.config.gepa.leak_min_chars
        )
        # Lockstep check (one 32-byte all-gather): hosts that disagree would train on different
        # contexts; fail here, naming it, rather than diverge silently.
        distributed.assert_same_across_processes(
            self.rs.population.to_json(), "the GEPA population"
        )
        m = evaluate.round_metrics(report, self.rs.population, top, cycle=self.rs.cycle,
                                   leak=(leak, checked), seconds=time.time() - t0)  # fmt: skip
        self.writer.write(self.rs.step, m)

    def _rl_step(self, task: Any, stream: DataStream) -> None:
        c, G = self.config, self.G
        t0 = time.time()
        problems = stream.take(c.rl.batch_size)
        contexts = self.rs.exported[: self.K] if c.mode != "rl" else [self.rs.exported[0]]
        bank = self.bank.with_contexts(contexts)
        distill = c.mode == "fst_distill"
        self.sampler.phase = f"rl step {self.rs.step + 1}"
        # G rollouts per problem over the contexts (`spread_contexts`), reused GEPA rollouts
        # first when rl.reuse_gepa_rollouts is on; π_old = the sampler's (or, reused, GEPA's θ_c)
        # log-prob at the sampling temperature without top-k/top-p truncation, which is what the
        # train step computes (RLConfig.temperature): on-policy ρ = 1 (sampling/select.py).
        r = rl.collect_rollouts(
            sampler=self.sampler, task=task, bank=bank, contexts=contexts, problems=problems,
            spread=spread_contexts(G, len(contexts)), params=self.state.params,
            key=_fold(self.key, _TAG_RL, self.rs.step), sampling=self.sampling,
            prompt_idx=np.full(len(problems) * G, bank.no_context, np.int32) if distill else None,
            store=self.store, pad_id=self.pad_id, width_multiple=self.sampler.trim_to,
        )  # fmt: skip
        if self.reuse == "first_step":
            self.store = None  # later steps of the cycle sample everything
        roll = rl.train_rollouts(r, teacher_bank=bank if distill else None,
                                 ref_logps=self.ref_logps, ref_params=self.start_params)  # fmt: skip
        # The sampler's prepared copy of θ is stale once the update runs: free it (and the
        # memo's hold on θ) before the update's buffers are allocated rather than after.
        self.sampler.release_prepared()
        self.state, per_update, stats = rl.update_on_rollouts(
            self.train_step, self.state, roll, r.rewards, r.group_ids,
            advantage=None if distill else c.rl.advantage, aggregation=c.rl.aggregation,
            group_size=G, advantage_kwargs=self.advantage_kwargs,
            max_completion_len=c.sampling.max_new_tokens,  # token_sum_norm's budget
        )  # fmt: skip
        self.rs.step += 1
        m = rl.step_metrics(r, per_update, stats, num_contexts=len(contexts),
                            reuse=self.reuse != "off")  # fmt: skip
        m.update({"time/step_s": time.time() - t0, "data/position": stream.position})
        self.writer.write(self.rs.step, m)

    def _evaluate(self, final: bool) -> dict[str, Any]:
        """Validation of every task of the run (one for a plain run; the whole stream for a
        continual run, keys ``val/<task>/…``, each with its own running max)."""
        c = self.config
        names = task_names(c)
        params = self.start_params if c.mode == "gepa" else self.state.params
        self.sampler.phase = "eval"
        per_task = {}
        for i, name in enumerate(names):
            task = self.tasks[name]
            per_task[name] = evaluation.validate(
                sampler=self.sampler, params=params, base_params=self.base_params,
                bank=self.bank, best_context=self.rs.exported[0],
                seed_context=self._seed_prompt(name),
                examples=task.examples("validation")[: c.eval.num_examples], task=task,
                k=c.eval.k, kl_examples=c.eval.kl_examples,
                key=_fold(self.key, _TAG_EVAL, *([i] if len(names) > 1 else [])),  # every eval: same keys
                sampling=self.sampling,
                measure_kl=self.measure_kl,
                running_max=self.rs.task_running_max[name] if len(names) > 1 else self.rs.running_max,
                quadrants=final and c.eval.quadrants, row_multiple=self.row_multiple,
                init_params=self.init_params,
            )  # fmt: skip
        if len(names) == 1:
            m = per_task[names[0]]
        else:  # a stream: every task's record, their mean, the task being trained
            m = evaluation.stream_metrics(per_task, c.eval.k, self.rs.running_max)
            m["val/task"] = cycle_plan(c, max(self.rs.cycle - 1, 0))[0]
        self.writer.write(self.rs.step, m)
        return m
