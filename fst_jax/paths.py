"""Workdirs are paths or URIs: a local folder, or gs:// (s3://, az://) for pods whose VMs are
disposable — through `etils.epath`, the path library orbax uses too.

A `pathlib.Path` would turn `gs://bucket/run` into the local folder `gs:/bucket/run` and the run's
checkpoints would die with the VM; `workdir_path` keeps the URI, and refuses a scheme nothing can
serve instead of writing somewhere else. Object stores cannot append: `StagedFile` keeps a local
copy of an append-only file (metrics.jsonl, TensorBoard events) and uploads it whole on `sync`;
`JsonlLog` is the run's append-only JSONL files (metrics.jsonl, gepa_log.jsonl) on top of it,
with the byte offset a checkpoint stores and `truncate_jsonl` cuts back to on resume.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from etils import epath

# URI schemes epath serves, and the fsspec package each needs (unless TensorFlow's gfile is there).
REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}
_FSSPEC_NAME = {"gs": "gcs", "s3": "s3", "az": "az"}  # the protocol epath asks fsspec for
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def _servable(scheme: str) -> str | None:
    """None when `scheme://` can be read and written here, else what to install."""
    if importlib.util.find_spec("tensorflow") is not None and scheme == "gs":
        return None
    try:
        import fsspec

        fsspec.get_filesystem_class(_FSSPEC_NAME[scheme])
        return None
    except (ImportError, ValueError):
        return REMOTE_SCHEMES[scheme]


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """An epath for a workdir: URIs stay URIs (gs://bucket/run), local paths become absolute.

    Raises ValueError for a scheme that cannot be served (unknown, or its filesystem package is
    missing) and for a URI whose '//' was lost (gs:/bucket): never a local folder in their place.
    """
    s = os.fspath(workdir)
    scheme, sep, rest = s.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        scheme = scheme.lower()
        if scheme == "file":
            return epath.Path(os.path.abspath(rest))
        if scheme not in REMOTE_SCHEMES:
            raise ValueError(
                f"workdir {s!r}: the {scheme}:// scheme cannot be served (supported: local paths, "
                f"file://, {', '.join(f'{k}://' for k in REMOTE_SCHEMES)}); use one of those"
            )
        missing = _servable(scheme)
        if missing:
            raise ValueError(
                f"workdir {s!r}: {scheme}:// needs the {missing} package (pip install {missing}; "
                "`pip install 'fst_jax[tpu]'` includes gcsfs)"
            )
        return epath.Path(s)
    m = _MANGLED.match(s)
    if m and m.group(1).lower() in (*REMOTE_SCHEMES, "file"):
        raise ValueError(
            f"workdir {s!r} looks like a URI that lost a slash; write {m.group(1)}://{s[m.end() :]}"
        )
    return epath.Path(os.path.abspath(s))


def require_checkpoint_support(path: str | os.PathLike) -> None:
    """orbax lists and commits gs:// checkpoints through google-cloud-storage: say so up front
    rather than at the first checkpoint."""
    if (
        os.fspath(path).startswith("gs://")
        and importlib.util.find_spec("google.cloud.storage") is None
    ):
        raise ValueError(
            f"checkpoints at {os.fspath(path)} need google-cloud-storage (orbax's GCS support): "
            "pip install google-cloud-storage, or `pip install 'fst_jax[tpu]'`"
        )


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


class StagedFile:
    """A local working copy of `target` (a remote object or a local file).

    Local targets are used directly. Remote ones are downloaded once (if they exist) into a
    temporary folder, written locally, and uploaded whole by `sync()` — object stores have no
    append. What `sync` has not uploaded is lost with the VM; callers sync after every record.
    """

    def __init__(self, target: epath.Path) -> None:
        self.target = target
        self.remote = is_remote(target)
        if not self.remote:
            self.local = str(target)
            return
        self._dir = tempfile.mkdtemp(prefix="fst_stage_")
        self.local = os.path.join(self._dir, target.name)
        if target.exists():
            with open(self.local, "wb") as f:
                f.write(target.read_bytes())

    def sync(self) -> None:
        if self.remote and os.path.exists(self.local):
            with open(self.local, "rb") as f:
                self.target.write_bytes(f.read())

    def cleanup(self) -> None:
        if self.remote:
            shutil.rmtree(self._dir, ignore_errors=True)


class StagedDir:
    """A local folder mirrored to a remote `target` folder on `sync()` (TensorBoard events: the
    writer needs a local file it can append to). Local targets are used directly."""

    def __init__(self, target: epath.Path) -> None:
        self.target = target
        self.remote = is_remote(target)
        self.local = tempfile.mkdtemp(prefix="fst_stage_") if self.remote else str(target)
        self._sizes: dict[str, int] = {}

    def sync(self) -> None:
        if not self.remote:
            return
        for root, _, files in os.walk(self.local):
            for name in files:
                src = os.path.join(root, name)
                rel = os.path.relpath(src, self.local)
                size = os.path.getsize(src)
                if self._sizes.get(rel) == size:
                    continue
                dst = self.target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(src, "rb") as f:
                    dst.write_bytes(f.read())
                self._sizes[rel] = size

    def cleanup(self) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


class JsonlLog:
    """An append-only JSONL file of a run (one JSON object a line), written through a
    `StagedFile` and synced after every batch of rows, so a URI workdir loses nothing written.

    `offset()` is the bytes written so far: checkpoints store it and, on resume,
    `truncate_jsonl` cuts rows written after the checkpoint, so a resumed run's file equals an
    uninterrupted run's. `lazy`: the file is created on the first row (a log that may stay
    empty leaves no file behind). `ensure_ascii` as in `json.dumps`.
    """

    def __init__(self, path: epath.Path, *, lazy: bool = False, ensure_ascii: bool = True) -> None:
        self.path = path
        self.ensure_ascii = ensure_ascii
        self._stage: StagedFile | None = StagedFile(path)
        self._file: Any = None
        if not lazy:
            self._open()

    def _open(self) -> Any:
        if self._stage is None:
            raise ValueError(f"{self.path} was closed; open a new JsonlLog to write more rows")
        if self._file is None:
            self._file = open(self._stage.local, "a", encoding="utf-8")  # noqa: SIM115 - held
        return self._file

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        f = self._open()
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=self.ensure_ascii) + "\n")
        f.flush()
        self._stage.sync()

    def offset(self) -> int:
        """Bytes written so far (what a checkpoint stores)."""
        if self._file is not None:
            self._file.flush()
            return self._file.tell()
        local = self._stage.local if self._stage is not None else None
        return os.path.getsize(local) if local and os.path.exists(local) else 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._stage is not None:
            self._stage.sync()
            self._stage.cleanup()
            self._stage = None


def make_writable_dir(path: str | os.PathLike) -> None:
    """Creates the local directory `path` (and its parents) and proves a file can be written
    there, so a bad path fails at start-up rather than at the first save. Raises OSError."""
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".fst_write_probe_{os.getpid()}")
    with open(probe, "wb") as f:
        f.write(b"ok")
    os.remove(probe)


def truncate_jsonl(path: str | os.PathLike, offset: int) -> None:
    """Cuts an append-only JSONL file back to `offset` bytes (the rows written after a
    checkpoint get redone on resume)."""
    path = workdir_path(path)
    if not path.exists():
        if offset:
            raise FileNotFoundError(
                f"{path} is missing but the checkpoint says {offset} bytes of it were written; "
                "restore the file or start a fresh --workdir"
            )
        return
    size = path.stat().length
    if size < offset:
        raise ValueError(
            f"{path} has {size} bytes but the checkpoint recorded {offset}; the file was "
            "truncated or replaced. Restore it or start a fresh --workdir"
        )
    if is_remote(path):  # objects are rewritten whole
        path.write_bytes(path.read_bytes()[:offset])
        return
    with open(path, "r+b") as f:
        f.truncate(offset)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a JSONL file (optionally .gz), or of a .json file holding a list of rows;
    local path or URI. The one reader for run logs (metrics.jsonl, gepa_log.jsonl) and task /
    SFT data files: a missing file, a line that is not JSON or a row that is not an object is an
    error naming the file, the line and the fix."""
    p = path if isinstance(path, epath.Path) else workdir_path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; check the path")
    raw = p.read_bytes()
    text = (gzip.decompress(raw) if p.name.endswith(".gz") else raw).decode("utf-8")
    if p.name.endswith((".json", ".json.gz")) or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{p}: not valid JSON ({e}); a .json data file holds one list of row objects"
            ) from e
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list of rows, got {type(data).__name__}")
        numbered = [(f"row {n}", row) for n, row in enumerate(data, 1)]
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{p}, line {n}: not valid JSON ({e}); each line must be one JSON object: "
                    "fix or delete that line"
                ) from e
    for where, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(
                f"{p}, {where}: expected a JSON object, got {type(row).__name__}; "
                'each row must be one {"field": value, ...} object'
            )
    return [row for _, row in numbered]
