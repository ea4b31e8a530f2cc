"""``fst-train``: the absl app that runs the FST controller.

    fst-train                                   # embedded default: FST, SmolLM2-135M, CPU
    fst-train --config=experiments/configs/paper_codeio.py --config.model.spec=/ckpt/Qwen3-8B \
              --workdir=gs://bucket/runs/codeio-fst
    fst-train --config.mode=rl --config.rl.lr=1e-5 --workdir=runs/rl
    fst-train --config=experiments/configs/sft_context_following.py --workdir=runs/sft  # warm start

``--config.x.y=value`` overrides any key (unknown keys fail with the nearest existing name);
``--workdir`` holds metrics.jsonl, TensorBoard events, checkpoints and the KL-vs-reward PNG.
Re-running with the same workdir resumes from its latest checkpoint. Compiled XLA programs are
kept on disk (``--config.compile_cache_dir``, default ``auto`` = ~/.cache/fst_jax/xla_compile_cache;
``""`` = off), so a re-run skips most compilation. On pods (or with
``--coordinator_address/--num_processes/--process_id``) ``jax.distributed`` is initialised first.

Bad input (a config value, a missing model or data file, an unwritable workdir, a missing API key)
is reported before any model loads as ONE line, ``fst-train: error: <what> (<key>=<value>):
<fix>``, with exit code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parents[1]
_CONFIGS_IN_REPO = Path("experiments") / "configs"


def config_dir() -> Path:
    """The shipped configs: experiments/configs/ of a clone (editable install), else the
    `fst_jax.configs` package that a plain ``pip install .`` installs from that same folder."""
    if (_REPO / _CONFIGS_IN_REPO / "default.py").is_file():
        return _REPO / _CONFIGS_IN_REPO
    import importlib.util

    spec = importlib.util.find_spec("fst_jax.configs")
    if spec is None or not spec.submodule_search_locations:
        return _REPO / _CONFIGS_IN_REPO  # missing: main() says so and asks for --config=<file>
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_config_arg(value: str) -> str:
    """``--config`` value → a file path. An existing path is kept; otherwise a shipped config is
    found by name (``paper_codeio``, ``paper_codeio.py``) or by its repo path
    (``experiments/configs/paper_codeio.py``), so the README's commands work from any directory
    and from a non-editable install. A ``:arg`` suffix is kept."""
    path, sep, arg = value.partition(":")
    if not path or Path(path).expanduser().exists():
        return value
    name = Path(path).name
    shipped = config_dir() / (name if name.endswith(".py") else name + ".py")
    in_repo_form = Path(path).parent in (Path("."), _CONFIGS_IN_REPO)
    return f"{shipped}{sep}{arg}" if in_repo_form and shipped.is_file() else value


DEFAULT_CONFIG = config_dir() / "default.py"

_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/fst-default", "Run directory: metrics, checkpoints, TensorBoard, plots."
)
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
_PID = flags.DEFINE_integer("process_id", None, "This process's rank (multi-process).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback behind an `fst-train: error:` line.")

EXIT_USAGE = 2


def _fail(message: str, exc: BaseException | None = None) -> None:
    """Prints the one-line error (plus the traceback under --debug) and exits 2."""
    if exc is not None and ("--debug" in sys.argv or "--debug=true" in sys.argv):
        traceback.print_exception(exc)
    print(f"fst-train: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _flag_message(e: BaseException) -> str:
    """A readable line from what absl / ml_collections raise for a bad flag."""
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...))
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    unknown = re.search(r"'?([\w]+)'?\s*Did you mean \"(\w+)\" instead", text)
    if unknown:
        bad, good = unknown.groups()
        given = [a for a in sys.argv[1:] if re.match(rf"--config(\.\w+)*\.{bad}(=|$)", a)]
        flag = given[0] if given else bad
        path = flag.split("=", 1)[0].removeprefix("--config.").rsplit(".", 1)[0]
        near = f"{path}.{good}" if "." in flag.split("=", 1)[0].removeprefix("--config.") else good
        return f"unknown config key ({flag}): did you mean --config.{near}?"
    if isinstance(e, KeyError):  # a key the config does not have, and no near one
        text = text.strip("'\"")
        given = [
            a for a in sys.argv[1:] if re.match(rf"--config(\.\w+)*\.{re.escape(text)}(=|$)", a)
        ]
        if given:
            parent = given[0].split("=", 1)[0].removeprefix("--config.").rsplit(".", 1)[0]
            return (f"unknown config key ({given[0]}): {parent} has no key {text!r}; new keys "
                    "go in a config file (experiments/configs/), flags only override")  # fmt: skip
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({e.filename}, line {e.lineno})"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines)[:500] or type(e).__name__


try:  # parses --config.x=y overrides now, at import: a bad key fails here
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        default=str(DEFAULT_CONFIG),
        help_string="ml_collections config file, or a shipped config's name "
        "(experiments/configs/<name>.py[:arg] or <name>[:arg]).",
        lock_config=True,
    )
except (AttributeError, KeyError, TypeError, ValueError) as _e:
    _fail(_flag_message(_e), _e)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a one-line error instead of a traceback for a bad flag."""
    argv = [
        f"--config={resolve_config_arg(a.split('=', 1)[1])}" if a.startswith("--config=") else a
        for a in argv
    ]
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"bad flag: {_flag_message(e)} (see fst-train --helpshort)", e)
    except (AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError) as e:
        given = next((a for a in argv[1:] if a.startswith("--config=")), "--config=<default>")
        _fail(f"cannot load the config file ({given}): {_flag_message(e)}", e)
    raise AssertionError("unreachable")


def _init_distributed() -> None:
    from fst_jax import distributed

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
    from fst_jax.errors import UserError

    try:
        config = _CONFIG.value
        config.mode  # noqa: B018  (a config file that failed to load raises on first access)
    except Exception as e:
        given = next((a for a in sys.argv[1:] if a.startswith("--config=")), "--config=<default>")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        _fail(f"cannot load the config file ({given}): {lines[-1] if lines else type(e).__name__}: "
              "check the path and run the file with python to see its error", e)  # fmt: skip
    from fst_jax import compile_cache

    try:
        if config.mode == "sft":  # supervised warm start: its own loop and checks (fst_jax.sft)
            from fst_jax import sft

            compile_cache.enable(compile_cache.from_config(config))
            summary, fmt = sft.run(config, _WORKDIR.value), sft.format_summary
        else:
            # Every name, range, file and path first: seconds, before any weights load.
            controller.validate_config(config, workdir=_WORKDIR.value)
            # Before the first compile: later runs read the executables back from disk.
            compile_cache.enable(compile_cache.from_config(config))
            ctl = controller.Controller(config, _WORKDIR.value)
            summary, fmt = ctl.run(), controller.format_summary
    except UserError as e:
        if _DEBUG.value:
            traceback.print_exc()
        _fail(str(e))
    import jax

    if jax.process_index() == 0:
        print(fmt(summary), flush=True)


def run() -> None:
    """Console-script entry point (setup.py: fst-train = fst_jax.main:run)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before jax starts XLA's thread pool: at most 2 glibc malloc arenas unless MALLOC_ARENA_MAX
    # is set (one arena per XLA thread kept GiBs of freed buffers resident; fst_jax.host_memory).
    from fst_jax import host_memory

    host_memory.configure_malloc()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
