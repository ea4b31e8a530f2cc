"""Workdirs as URIs: gs://... on an offline fake object store (fsspec's in-memory filesystem
registered as the gs:// implementation, which is what epath reaches gs:// through).

Oracles: records read back from the store equal what was written; a TensorBoard event file read
back with an independent TFRecord parser has the scalars; resume truncation cuts the object;
the plot is a PNG in the store; nothing is ever written to a local folder named after the URI
(the old bug: Path("gs://b/r") is the local folder "gs:/b/r"); unservable schemes are errors.
"""

import json
import os
import struct
from typing import ClassVar

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry
from tensorboardX.proto.event_pb2 import Event

from fst_jax import metrics, paths
from fst_jax.analysis import plots

RUN = "gs://bucket/runs/fst1"


class FakeGCS(MemoryFileSystem):
    """An in-memory object store answering gs:// paths (its own store, not fsspec's memory://)."""

    protocol = ("gs",)
    store: ClassVar[dict] = {}
    pseudo_dirs: ClassVar[list] = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        path = path[len("gs://") :] if path.startswith("gs://") else path
        path = path.strip("/")
        return "/" + path if path else ""


@pytest.fixture
def fake_gs(monkeypatch, tmp_path):
    import fsspec
    from etils.epath import backend

    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    for name in ("gs", "gcs"):  # epath asks fsspec for "gcs"
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)  # a mangled URI would show up here as a folder "gs:"
    yield FakeGCS()
    assert not os.path.exists(tmp_path / "gs:"), "a gs:// workdir was written to a local folder"
    for name in ("gs", "gcs"):
        _registry.pop(name, None)
    backend.fsspec_backend._get_filesystem.cache_clear()


def _tb_scalars(files: list[bytes]) -> dict[str, list[tuple[int, float]]]:
    """Independent TFRecord reader: length(u64) crc(u32) payload crc(u32) per Event proto."""
    out: dict[str, list[tuple[int, float]]] = {}
    for data in files:
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_metrics_tensorboard_resume_and_plot_on_gs(fake_gs):
    with metrics.MetricsWriter(RUN, enabled=True) as w:
        for step in (1, 2, 3):
            w.write(step, {"train/loss": np.float32(1.0 / step), "val/mean@4": 0.1 * step})
            if step == 2:
                offset = w.offset()
        # Uploaded after every record, not only at close: a preempted VM loses nothing written.
        assert len(fake_gs.cat(f"{RUN}/metrics.jsonl").splitlines()) == 3
    recs = metrics.read_metrics(RUN)
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[2]["train/loss"] == pytest.approx(1 / 3)
    events = [fake_gs.cat(p) for p in fake_gs.find(f"{RUN}/tensorboard")]
    assert events and _tb_scalars(events)["train/loss"] == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(1 / 3)),
    ]
    # Resume after the step-2 checkpoint: cut the object back, append step 3 again.
    metrics.truncate_jsonl(f"{RUN}/metrics.jsonl", offset)
    with metrics.MetricsWriter(RUN, enabled=True, tensorboard=False) as w:
        w.write(3, {"train/loss": 0.25})
    lines = fake_gs.cat(f"{RUN}/metrics.jsonl").decode().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert json.loads(lines[2])["train/loss"] == 0.25
    with pytest.raises(ValueError, match=r"has \d+ bytes but the checkpoint recorded"):
        metrics.truncate_jsonl(f"{RUN}/metrics.jsonl", 10**6)
    # The run's plot, written straight into the store.
    runs = plots.load_runs([RUN])
    assert list(runs) == ["run:fst1"]
    plots.plot_kl_vs_reward(runs, f"{RUN}/kl_vs_reward.png")
    assert fake_gs.cat(f"{RUN}/kl_vs_reward.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpointer_hands_orbax_the_uri(fake_gs, monkeypatch):
    """orbax gets the gs:// URI itself (it serves gs:// through tensorstore's GCS driver and
    google-cloud-storage, which an offline fake cannot stand in for: recorded, not run)."""
    from fst_jax import checkpoint

    seen = []

    class Recorder:
        def __init__(self, directory, **kw):
            seen.append(directory)

        def latest_step(self):
            return None

    import importlib.util

    if importlib.util.find_spec("google.cloud.storage") is None:
        with pytest.raises(checkpoint.CheckpointError, match="need google-cloud-storage"):
            checkpoint.Checkpointer(RUN, {"a": 1})
        monkeypatch.setattr(checkpoint.paths, "require_checkpoint_support", lambda p: None)
    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Recorder)
    fake_gs.pipe(f"{RUN}/checkpoints/3.orbax-checkpoint-tmp-1/x", b"half-written")
    fake_gs.pipe(f"{RUN}/checkpoints/2/x", b"complete")
    ck = checkpoint.Checkpointer(RUN, {"a": 1})
    assert [str(d) for d in seen] == [f"{RUN}/checkpoints"] and str(ck.directory) == str(seen[0])
    # The crash leftovers are removed in the store; the finished step stays.
    assert fake_gs.exists(f"{RUN}/checkpoints/2/x")
    assert not fake_gs.exists(f"{RUN}/checkpoints/3.orbax-checkpoint-tmp-1/x")


def test_uri_validation(tmp_path):
    p = paths.workdir_path("runs/x")
    assert str(p) == os.path.abspath("runs/x")
    assert str(paths.workdir_path(f"file://{tmp_path}/r")) == f"{tmp_path}/r"
    with pytest.raises(ValueError, match="lost a slash; write gs://bucket/run"):
        paths.workdir_path("gs:/bucket/run")
    with pytest.raises(ValueError, match="the ftp:// scheme cannot be served"):
        paths.workdir_path("ftp://host/run")
    _registry.pop("s3", None)
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="s3:// needs the s3fs package"):
            paths.workdir_path("s3://bucket/run")
    with pytest.raises(ValueError, match="cannot be served"):
        metrics.MetricsWriter("hdfs://nn/run", enabled=True)


def test_fst_train_config_check_refuses_bad_workdir_uris(tmp_path, monkeypatch):
    """fst-train's config checks run before any model loads: a mangled or unservable workdir
    URI is a ConfigError there, and no local folder named after it is created."""
    import importlib.util
    from pathlib import Path

    from fst_jax import run_setup

    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "cfg_default", repo / "experiments/configs/default.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    with pytest.raises(run_setup.ConfigError, match="lost a slash"):
        run_setup.validate_config(c, 1, workdir="gs:/bucket/run")
    with pytest.raises(run_setup.ConfigError, match="cannot be served"):
        run_setup.validate_config(c, 1, workdir="ftp://host/run")
    assert not (tmp_path / "gs:").exists()
