"""Optional Weights & Biases mirror of the metrics (``--config.metrics.wandb=<project>``).

Off by default: ``metrics.jsonl`` stays the source of truth and TensorBoard the built-in viewer;
W&B is for teams that already track runs there. Only process 0 logs. The run id is stored in
``<workdir>/wandb_run_id`` so a resumed fst-train continues the same W&B run (``resume="allow"``);
W&B itself ignores steps at or below the last one it saw, so the few steps replayed after a
restore are not drawn twice. Offline machines: ``WANDB_MODE=offline`` (then ``wandb sync``).
Install with ``pip install "fst_jax[wandb]"``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from fst_jax.errors import ConfigError

RUN_ID_FILE = "wandb_run_id"


def require_wandb(project: str) -> Any:
    """The `wandb` module, or a ConfigError saying how to get it (checked before any work)."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "metrics.wandb is set but the wandb package is not installed", "metrics.wandb",
            project, 'pip install "fst_jax[wandb]" (or wandb), or leave metrics.wandb empty',
        ) from None  # fmt: skip
    return wandb


class WandbWriter:
    """Scalars of each metrics record → ``wandb.log(..., step=step)`` in one W&B run."""

    def __init__(
        self, project: str, workdir: str | os.PathLike, config: Mapping[str, Any] | None = None
    ) -> None:
        from fst_jax import paths

        wandb = require_wandb(project)
        remote = paths.is_remote(workdir)  # gs://...: W&B keeps its local files in ./wandb
        workdir = paths.workdir_path(workdir)
        id_file = workdir / RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project, id=run_id, resume="allow", name=workdir.name,
            dir=None if remote else str(workdir),
            config=dict(config or {}),
        )  # fmt: skip

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        scalars = {
            k: float(v)
            for k, v in record.items()
            if k not in ("step", "time") and isinstance(v, bool | int | float)
        }
        if scalars:
            self.run.log(scalars, step=int(step))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
