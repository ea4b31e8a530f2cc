"""The SFT loop (``fst-train --config.mode=sft``): token cross-entropy on assistant turns.

Why a separate loop on the same machinery: a supervised warm start needs no sampler, rewards or
GEPA, but it must train, shard, checkpoint, resume and export exactly like the RL modes so that
an ``fst``/``rl`` run can start from it with ``--config.init_from=<this workdir>``. So the step is
`rl.make_train_step` with the registered ``sft`` loss (−log π on the assistant-token mask,
`token_mean` weights), the checkpoint has the controller's layout (``train`` = TrainState), and
metrics go through the same `MetricsWriter`.

Resume is exact: the batch of step s is a pure function of (seed, s) (`data.BatchPlan`), the
train state is restored from the checkpoint and metrics written after it are cut off.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fst_jax import checkpoint as ckpt_lib
from fst_jax import metrics, paths, rl, sharding
from fst_jax.run_setup import ConfigError, load_model
from fst_jax.sft import data as sft_data

log = logging.getLogger(__name__)


def _check(c: Any, row_multiple: int) -> Any:
    if "sft" not in c:
        raise ConfigError(
            "config.mode=sft needs a config.sft section: build the config with "
            "experiments/configs/fst_base.py's base_config() (e.g. "
            "--config=experiments/configs/sft_context_following.py)"
        )
    s = c.sft
    if min(s.steps, s.batch_size, s.micro_batches, s.max_len, s.eval_every, s.val_rows) < 1:
        raise ConfigError(
            "sft.steps, batch_size, micro_batches, max_len, eval_every and val_rows must be >= 1"
        )
    if s.batch_size % (s.micro_batches * row_multiple):
        raise ConfigError(
            f"sft.batch_size={s.batch_size} must be a multiple of sft.micro_batches × data shards "
            f"= {s.micro_batches * row_multiple}"
        )
    buckets = _buckets(s)
    if max(buckets) < s.max_len:
        raise ConfigError(f"sft.length_buckets {buckets} must reach sft.max_len={s.max_len}")
    if c.resume not in ("auto", "force", "never"):
        raise ConfigError(f"config.resume={c.resume!r}; use auto, force or never")
    return s


def _buckets(s: Any) -> list[int]:
    try:
        return sorted(int(x) for x in str(s.length_buckets).split(",") if x.strip())
    except ValueError:
        raise ConfigError(
            f"sft.length_buckets={s.length_buckets!r}: comma-separated ints"
        ) from None


class SFTRun:
    """State and I/O of one SFT run; `run()` trains the remaining steps and returns a summary."""

    def __init__(self, config: Any, workdir: str | Path, *, model: Any = None) -> None:
        try:  # gs:// stays a URI; a scheme that cannot be served is an error, never a local dir
            self.workdir = paths.workdir_path(workdir)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.config = config
        self.workdir.mkdir(parents=True, exist_ok=True)
        c = config
        self.mesh = sharding.mesh_from_config(c)
        self.row_multiple = sharding.batch_shard_count(self.mesh)
        s = self.s = _check(c, self.row_multiple)
        self.buckets = _buckets(s)
        self.model_config, params, self.tokenizer = model or load_model(c)
        self.pad_id = int(
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        kw = dict(s.data_kwargs)
        load = lambda data, split, extra: sft_data.load_conversations(  # noqa: E731
            data, split, kwargs={**kw, **extra}, messages_field=s.messages_field,
            val_fraction=s.val_fraction, hf_split=s.hf_split,
        )  # fmt: skip
        try:
            train = load(s.data, "train", {})
            gen = s.data in sft_data.list_generators()
            val = (
                load(s.val_data, "train", {})
                if s.val_data
                else load(s.data, "validation", {"n": s.val_rows} if gen else {})
            )
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.train = sft_data.encode_all(self.tokenizer, train, s.max_len)
        self.val = sft_data.encode_all(self.tokenizer, val[: s.val_rows], s.max_len)
        if not len(self.train):
            raise ConfigError(f"sft.data={s.data!r} gives no train rows within max_len")
        self.plan = sft_data.BatchPlan(self.train.lengths, s.batch_size, c.seed, s.window)
        rl_cfg = rl.RLConfig(
            loss=rl.LossConfig(name="sft"), learning_rate=s.lr, warmup_steps=s.warmup_steps,
            b1=s.b1, b2=s.b2, weight_decay=s.weight_decay, max_grad_norm=s.grad_clip or None,
            num_microbatches=s.micro_batches,
        )  # fmt: skip
        self.train_step = rl.make_train_step(self.model_config, self.mesh, rl_cfg)
        self._val_fn = self._make_val_fn(rl_cfg)
        if c.init_from:  # continue from another run's weights (e.g. an earlier SFT)
            step = None if c.init_from_step < 0 else c.init_from_step
            params, _ = ckpt_lib.restore_params(
                c.init_from, ckpt_lib.abstract_like(params), step, keys=("train", "params")
            )
        self.state = self.train_step.init(params)
        self.step, self.first_val, self.last_val = 0, None, None
        self.checkpointer = ckpt_lib.Checkpointer(
            self.workdir, ckpt_lib.flatten_config(c.to_dict()), max_to_keep=c.checkpoint.keep,
            allow_foreign=c.resume == "force",
        )  # fmt: skip
        resume_step = self._maybe_restore()
        self.writer = metrics.MetricsWriter(self.workdir, resume_step=resume_step)

    def _make_val_fn(self, rl_cfg: rl.RLConfig):
        from fst_jax.rl.train_step import microbatch_loss

        p_shard = sharding.param_shardings(self.model_config, self.mesh)
        b_shard = sharding.batch_sharding(self.mesh)

        def fn(params, batch):
            loss, aux = microbatch_loss(self.model_config, rl_cfg, params, batch)
            return loss, aux["train_tokens"]

        rep = sharding.replicated(self.mesh)
        return jax.jit(fn, in_shardings=(p_shard, b_shard), out_shardings=(rep, rep))

    def _maybe_restore(self) -> int | None:
        latest = self.checkpointer.latest_step()
        path = self.workdir / metrics.METRICS_FILE
        if latest is None:
            if jax.process_index() == 0 and path.exists() and path.stat().length:
                metrics.truncate_jsonl(path, 0)  # died before its first checkpoint: redo
            return None
        if self.config.resume == "never":
            raise ConfigError(
                f"{self.checkpointer.directory} already holds checkpoints (latest step {latest}) "
                "and config.resume=never; use a fresh --workdir or --config.resume=auto"
            )
        restored, meta = self.checkpointer.restore(ckpt_lib.abstract_like({"train": self.state}))
        self.state = restored["train"]
        h = meta["host"]
        self.step, self.first_val, self.last_val = h["step"], h["first_val"], h["last_val"]
        if jax.process_index() == 0:
            metrics.truncate_jsonl(path, h["metrics_offset"])
        log.info("resumed SFT from %s at step %d", self.checkpointer.directory, self.step)
        return self.step

    def _save(self) -> None:
        host = dict(step=self.step, first_val=self.first_val, last_val=self.last_val,
                    metrics_offset=self.writer.offset(), mode="sft")  # fmt: skip
        self.checkpointer.save(self.step, {"train": self.state}, {"host": host})

    def validation_loss(self, params: Any = None) -> float:
        """Mean NLL per assistant token over the validation rows (length-sorted batches)."""
        params = self.state.params if params is None else params
        if not len(self.val):
            return float("nan")
        order = np.argsort(self.val.lengths, kind="stable")
        B = self.s.batch_size
        total, count = 0.0, 0.0
        for lo in range(0, len(order), B):
            batch = sft_data.make_batch(self.val, order[lo : lo + B], B, self.buckets,
                                        self.pad_id, weight="sum")  # fmt: skip
            loss, n = self._val_fn(params, batch)
            total, count = total + float(loss), count + float(n)
        return total / max(count, 1.0)

    def run(self) -> dict[str, Any]:
        s, t0 = self.s, time.time()
        if self.step == 0:
            self.writer.write(0, {"run/mode": "sft", "run/data": str(s.data),
                                  "run/model": str(self.config.model.spec),
                                  "data/train_rows": len(self.train), "data/val_rows": len(self.val),
                                  "data/dropped_too_long": self.train.dropped + self.val.dropped})  # fmt: skip
            self.first_val = self.last_val = self.validation_loss()
            self.writer.write(0, {"val/loss": self.first_val})
        while self.step < s.steps:
            ts = time.time()
            rows = self.plan.rows(self.step)
            batch = sft_data.make_batch(self.train, rows, s.batch_size, self.buckets, self.pad_id)
            self.state, dev = self.train_step(self.state, batch)
            tm = rl.host_metrics(dev)
            self.step += 1
            m = {
                "train/loss": tm["loss"], "train/grad_norm": tm["grad_norm"],
                "train/update_norm": tm["update_norm"], "train/learning_rate": tm["learning_rate"],
                "train/tokens": tm["train_tokens"], "train/skipped": tm["skipped"],
                "train/pad_frac": float(1.0 - (batch.positions >= 0).mean()),
                "train/seq_len": int(batch.tokens.shape[1]),
                "data/epoch": self.plan.epoch_of(self.step), "time/step_s": time.time() - ts,
            }  # fmt: skip
            if self.step % s.eval_every == 0 or self.step == s.steps:
                self.last_val = self.validation_loss()
                m["val/loss"] = self.last_val
            self.writer.write(self.step, m)
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                self._save()
            if self.step % 10 == 0 or self.step == s.steps:
                log.info("SFT step %d/%d loss %.4f val %.4f (%.1f s/step)", self.step, s.steps,
                         tm["loss"], self.last_val, time.time() - ts)  # fmt: skip
        export = None
        if s.export:
            from fst_jax.models import save_hf

            target = self.workdir / "export"
            staged = paths.StagedDir(target)  # save_hf writes local files; uploaded if remote
            save_hf(staged.local, self.model_config, self.state.params, self.tokenizer)
            staged.sync()
            staged.cleanup()
            export = str(target)
        self.writer.close()
        return {
            "workdir": str(self.workdir), "mode": "sft", "steps": self.step,
            "wall_s": round(time.time() - t0, 1), "val_loss_start": self.first_val,
            "val_loss_end": self.last_val, "train_rows": len(self.train),
            "val_rows": len(self.val), "dropped_too_long": self.train.dropped + self.val.dropped,
            "checkpoints": self.checkpointer.all_steps(), "export": export,
        }  # fmt: skip


def run(config: Any, workdir: str | Path, *, model: Any = None) -> dict[str, Any]:
    """Train (or resume) an SFT run in `workdir`; returns the summary dict."""
    return SFTRun(config, workdir, model=model).run()


def format_summary(s: dict[str, Any]) -> str:
    f = lambda x: "n/a" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))  # noqa: E731
    lines = [
        "=" * 72,
        f"fst-train summary  mode=sft  steps={s['steps']}  wall={s['wall_s']}s",
        f"  val loss (NLL/assistant token)  start {f(s['val_loss_start'])}  ->  end {f(s['val_loss_end'])}",
        f"  data            {s['train_rows']} train / {s['val_rows']} validation conversations"
        f" ({s['dropped_too_long']} skipped as longer than sft.max_len)",
        f"  checkpoints     {s['checkpoints']} in {s['workdir']}/checkpoints"
        f"  (start RL from it: --config.init_from={s['workdir']})",
        f"  metrics         {s['workdir']}/metrics.jsonl",
    ]
    if s.get("export"):
        lines.append(f"  HF export       {s['export']}  (--config.model.spec={s['export']})")
    lines.append("=" * 72)
    return "\n".join(lines)


__all__ = ["SFTRun", "format_summary", "run"]
