"""``fst-train``: the absl app that runs the FST controller.

    fst-train                                   # embedded default: FST, SmolLM2-135M, CPU
    fst-train --config=experiments/configs/paper_codeio.py --config.model.spec=/ckpt/Qwen3-8B \
              --workdir=gs://bucket/runs/codeio-fst
    fst-train --config.mode=rl --config.rl.lr=1e-5 --workdir=runs/rl

``--config.x.y=value`` overrides any key (unknown keys fail with the nearest existing name);
``--workdir`` holds metrics.jsonl, TensorBoard events, checkpoints and the KL-vs-reward PNG.
Re-running with the same workdir resumes from its latest checkpoint. On pods (or with
``--coordinator_address/--num_processes/--process_id``) ``jax.distributed`` is initialised first.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = _REPO / "experiments" / "configs" / "default.py"

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    default=str(DEFAULT_CONFIG),
    help_string="ml_collections config file (experiments/configs/<name>.py[:arg]).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/fst-default", "Run directory: metrics, checkpoints, TensorBoard, plots."
)
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PID = flags.DEFINE_integer("process_id", None, "This process's rank (multi-process).")


def _init_distributed() -> None:
    try:
        from fst_jax import distributed
    except ImportError:  # single-host install without the scale-out module
        return
    info = distributed.maybe_initialize(_COORD.value, _NPROC.value, _PID.value)
    if info.initialized:
        logging.info("jax.distributed: process %d of %d", info.process_id, info.num_processes)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value forms")
    if not DEFAULT_CONFIG.exists() and _CONFIG.value is None:
        raise app.UsageError(f"{DEFAULT_CONFIG} is missing; pass --config=<file>")
    _init_distributed()  # before anything touches a JAX device
    # Our progress/info lines; library chatter (orbax save events, absl INFO) stays at WARNING.
    from absl import logging as absl_logging

    from fst_jax import controller

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fst-train %(levelname)s %(message)s"))
    fst_log = logging.getLogger("fst_jax")
    fst_log.setLevel(logging.INFO)
    fst_log.addHandler(handler)
    fst_log.propagate = False
    config = _CONFIG.value
    try:
        ctl = controller.Controller(config, _WORKDIR.value)
        summary = ctl.run()
    except (controller.ConfigError, controller.ckpt_lib.CheckpointError) as e:
        print(f"fst-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    import jax

    if jax.process_index() == 0:
        print(controller.format_summary(summary), flush=True)


def run() -> None:
    """Console-script entry point (setup.py: fst-train = fst_jax.main:run)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)


if __name__ == "__main__":
    run()
