"""Workdirs are paths or URIs: a local folder, or gs:// (s3://, az://) for pods whose VMs are
disposable — through `etils.epath`, the path library orbax uses too.

A `pathlib.Path` would turn `gs://bucket/run` into the local folder `gs:/bucket/run` and the run's
checkpoints would die with the VM; `workdir_path` keeps the URI, and refuses a scheme nothing can
serve instead of writing somewhere else. Object stores cannot append: `StagedFile` keeps a local
copy of an append-only file (metrics.jsonl, TensorBoard events) and uploads it whole on `sync`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile

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
