"""JSONL metrics: records, TensorBoard mirror, resume truncation, bad input."""

import json
import struct

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from fst_jax import metrics


def _tb_scalars(logdir):
    """Independent TFRecord reader: length(u64) crc(u32) payload crc(u32) per Event proto."""
    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_jsonl_and_tensorboard_agree(tmp_path):
    with metrics.MetricsWriter(tmp_path, enabled=True) as w:
        w.write(1, {"train/loss": np.float32(0.5), "rollout/reward_mean": 0.25})
        w.write(2, {"train/loss": 0.25, "gepa/pool_size": 3, "gepa/best_text": "be exact"})
        w.write(2, {"train/grad_norm": float("nan")})
    recs = metrics.read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 2]
    assert recs[0]["train/loss"] == 0.5 and recs[1]["gepa/best_text"] == "be exact"
    assert recs[2]["train/grad_norm"] == "nan"  # visible, not dropped
    steps, vals = metrics.series(recs, "train/loss")
    assert steps.tolist() == [1, 2] and vals.tolist() == [0.5, 0.25]
    tb = _tb_scalars(tmp_path / metrics.TB_DIR)
    assert tb["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert tb["gepa/pool_size"] == [(2, 3.0)] and "gepa/best_text" not in tb


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics.MetricsWriter(tmp_path, enabled=False)
    rec = w.write(3, {"train/loss": 1.0})
    assert rec["train/loss"] == 1.0 and w.offset() == 0
    assert not (tmp_path / metrics.METRICS_FILE).exists()


def test_truncate_to_checkpoint_offset(tmp_path):
    w = metrics.MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    w.write(1, {"train/loss": 1.0})
    off = w.offset()
    w.write(2, {"train/loss": 2.0})
    w.close()
    metrics.truncate_jsonl(tmp_path / metrics.METRICS_FILE, off)
    w = metrics.MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    w.write(2, {"train/loss": 3.0})
    w.close()
    assert [r["train/loss"] for r in metrics.read_metrics(tmp_path)] == [1.0, 3.0]
    with pytest.raises(ValueError, match="truncated or replaced"):
        metrics.truncate_jsonl(tmp_path / metrics.METRICS_FILE, 10**6)


def test_bad_inputs(tmp_path):
    w = metrics.MetricsWriter(tmp_path, enabled=True, tensorboard=False)
    with pytest.raises(ValueError, match="group prefix"):
        w.write(1, {"loss": 1.0})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        w.write(1, {"train/x": object()})
    w.close()
    (tmp_path / metrics.METRICS_FILE).write_text(json.dumps({"step": 1}) + "\n{oops\n")
    with pytest.raises(
        ValueError, match=r"metrics.jsonl, line 2: not valid JSON .*fix or delete that line"
    ):
        metrics.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="fst-train"):
        metrics.read_metrics(tmp_path / "nowhere")


class _FakeWandb:
    """Records what `wandb.init` / `run.log` / `run.finish` receive (wandb's public API)."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step):
                fake.logged.append((step, dict(data)))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_mirror_is_off_by_default_and_resumes_one_run(tmp_path, monkeypatch):
    import sys

    from fst_jax.errors import ConfigError
    from fst_jax.wandb_writer import RUN_ID_FILE

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with metrics.MetricsWriter(tmp_path, enabled=True, tensorboard=False) as w:
        w.write(1, {"train/loss": 1.0})
    assert fake.inits == [] and not (tmp_path / RUN_ID_FILE).exists()  # off by default
    cfg = {"rl.lr": 1e-5}
    with metrics.MetricsWriter(tmp_path, enabled=True, tensorboard=False, wandb_project="fst",
                       run_config=cfg) as w:  # fmt: skip
        w.write(
            2, {"train/loss": 0.5, "train/clip_frac": 0.25, "gepa/best": "ctx", "eval/ok": True}
        )
    with metrics.MetricsWriter(tmp_path, enabled=True, tensorboard=False, wandb_project="fst",
                       resume_step=2) as w:  # fmt: skip
        w.write(3, {"train/loss": 0.25})
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    assert [i["id"] for i in fake.inits] == [run_id, run_id]  # the resumed writer continues it
    assert fake.inits[0]["project"] == "fst" and fake.inits[0]["resume"] == "allow"
    assert fake.inits[0]["config"] == cfg and fake.inits[0]["dir"] == str(tmp_path)
    assert fake.logged == [
        (2, {"train/loss": 0.5, "train/clip_frac": 0.25, "eval/ok": 1.0}),  # scalars only
        (3, {"train/loss": 0.25}),
    ]
    assert fake.finished == 2
    assert len(metrics.read_metrics(tmp_path)) == 3  # the JSONL still holds everything
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match=r"metrics\.wandb.*pip install"):
        metrics.MetricsWriter(tmp_path / "b", enabled=True, tensorboard=False, wandb_project="fst")
