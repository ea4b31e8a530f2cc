"""`validate_config`: every check an fst-train config must pass before any model loads.

Each check is a function registered with ``@config_check`` that raises `ConfigError(what, key,
value, fix)` — rendered as the one line ``<what> (<key>=<value>): <fix>``. They run in
registration order (cheap, local checks first; files, model spec and workdir last), and the first
failure stops the run within seconds, before any weights are read or any function compiled.
A new config knob adds its check here (or in its own module) with the decorator; nothing else
needs to change.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fst_jax import registry
from fst_jax.errors import ConfigError
from fst_jax.tasks.stream import task_names

MODES = ("rl", "gepa", "fst", "fst_distill")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class CheckContext:
    """What a check may need besides the config: the mesh's batch shards and the run dir."""

    num_batch_shards: int | None = None
    workdir: str | os.PathLike | None = None


Check = Callable[[Any, CheckContext], None]
_CHECKS: list[tuple[str, Check]] = []


def config_check(name: str) -> Callable[[Check], Check]:
    """Register `fn(config, ctx)` as a named check; it raises ConfigError for a bad config."""

    def deco(fn: Check) -> Check:
        if any(n == name for n, _ in _CHECKS):
            raise ValueError(f"config check {name!r} is already registered")
        _CHECKS.append((name, fn))
        return fn

    return deco


def list_config_checks() -> list[str]:
    return [n for n, _ in _CHECKS]


def validate_config(
    config: Any, num_batch_shards: int | None = None, *, workdir: str | os.PathLike | None = None
) -> None:
    """Runs every registered check; raises the first ConfigError (one line, names the fix)."""
    ctx = CheckContext(num_batch_shards, workdir)
    for _, check in _CHECKS:
        check(config, ctx)


# ----------------------------------------------------------------------------- helpers


def nearest(name: Any, choices: Sequence[str]) -> str:
    """`fst_jax.registry.nearest` as a message fragment ("did you mean 'x'? " or "")."""
    near = registry.nearest(name, choices)
    return f"did you mean {near!r}? " if near else ""


def get(config: Any, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def has(config: Any, key: str) -> bool:
    try:
        get(config, key)
    except (KeyError, AttributeError):
        return False
    return True


def require_enum(config: Any, key: str, choices: Sequence[str], what: str = "") -> None:
    v = get(config, key)
    if v not in choices:
        raise ConfigError(
            f"unknown {what or key.rsplit('.', 1)[-1]}",
            key,
            v,
            f"{nearest(v, choices)}use one of {', '.join(map(str, choices))}",
        )


def require_int(config: Any, key: str, lo: int, hi: int | None = None, allow: Sequence = ()):
    v = get(config, key)
    if v in allow and not isinstance(v, bool):
        return
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError("not an integer", key, v, f"set --config.{key} to an int")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        raise ConfigError("out of range", key, v, f"must be {rng}{extra}")


def require_float(config: Any, key: str, lo: float, hi: float = math.inf, *, open_lo=False,
                  open_hi=False) -> None:  # fmt: skip
    v = get(config, key)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ConfigError("not a finite number", key, v, f"set --config.{key} to a number")
    bad = (v <= lo if open_lo else v < lo) or (v >= hi if open_hi else v > hi)
    if bad:
        lo_s = f"{'>' if open_lo else '>='} {lo}"
        hi_s = "" if hi == math.inf else f" and {'<' if open_hi else '<='} {hi}"
        raise ConfigError("out of range", key, v, f"must be {lo_s}{hi_s}")


def readable_file(path: str, key: str, what: str = "data file") -> None:
    """A file that exists, can be read and holds at least one non-blank line / byte."""
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise ConfigError(f"{what} not found", key, path, "check the path (relative to the cwd)")
    if p.is_dir():
        return
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise ConfigError(f"{what} is not readable ({e.strerror})", key, path,
                          "fix its permissions") from None  # fmt: skip
    if not head.strip():
        raise ConfigError(f"{what} is empty", key, path, "point it at a file with rows")


# ----------------------------------------------------------------------------- the checks


@config_check("names")
def _names(c: Any, ctx: CheckContext) -> None:
    require_enum(c, "mode", MODES)
    require_enum(c, "resume", ("auto", "force", "never"))
    require_enum(c, "sampling.context_in", ("system", "user"))
    require_enum(c, "model.dtype", DTYPES)
    require_enum(c, "model.param_dtype", DTYPES)
    require_enum(c, "model.remat", ("none", "layer", "dots"))
    from fst_jax import gepa, rl
    from fst_jax.gepa.reflection import EDIT_MODES
    from fst_jax.rl.advantages import AGGREGATIONS

    require_enum(c, "gepa.edit", EDIT_MODES, "GEPA edit mode")
    require_enum(c, "gepa.rescore", ("separate", "shared"), "GEPA rescore budget")
    require_enum(c, "gepa.reflection_lm", gepa.list_reflection_lms(), "reflection LM")
    if c.mode != "fst_distill":
        require_enum(c, "rl.loss", rl.list_losses(), "RL loss")
        if c.rl.loss == "sft":  # registered for mode=sft; on sampled rollouts it is not RL
            raise ConfigError("the sft loss is the supervised warm start's", "rl.loss", "sft",
                              "use an RL loss (cispo, grpo, dr_grpo) or --config.mode=sft")  # fmt: skip
        require_enum(c, "rl.advantage", rl.list_advantages(), "advantage estimator")
    require_enum(c, "rl.aggregation", AGGREGATIONS, "loss aggregation")


@config_check("ranges")
def _ranges(c: Any, ctx: CheckContext) -> None:
    for key, lo in (
        ("num_cycles", 1), ("seed", 0), ("rl.steps_per_cycle", 1),
        ("rl.batch_size", 1), ("rl.group_size", 1), ("rl.micro_batches", 1),
        ("rl.microbatch_tokens", 0),
        ("rl.warmup_steps", 0), ("gepa.k", 1), ("gepa.budget", 0), ("gepa.anchor_size", 1),
        ("gepa.minibatch", 1), ("gepa.max_pool", 1), ("gepa.reflection_max_tokens", 1),
        ("sampling.max_new_tokens", 1), ("sampling.max_context_len", 1), ("sampling.top_k", 0),
        ("sampling.context_cache_slots", 0),
        ("eval.every_cycles", 1), ("eval.num_examples", 1), ("eval.k", 1),
        ("eval.kl_examples", 0), ("checkpoint.every_cycles", 1), ("checkpoint.keep", 1),
        ("task.switch_every", 0),
        ("gepa.reflection_max_retries", 0), ("gepa.reflection_content_retries", 0),
        ("gepa.reflection_max_reply_chars", 1), ("gepa.max_context_chars", 1),
        ("gepa.reply_cache_entries", 1), ("init_from_step", -1),
    ):  # fmt: skip
        if has(c, key):
            require_int(c, key, lo)
    for axis in ("mesh.data", "mesh.fsdp", "mesh.tensor"):  # -1: fill the remaining devices
        require_int(c, axis, 1, allow=(-1,))
    require_int(c, "mesh.devices", 1, allow=(-1, 0))
    require_float(c, "rl.tau", 0.0, open_lo=True)  # CISPO's IS-weight cap: 0 zeroes every update
    require_float(c, "rl.lr", 0.0, open_lo=True)
    require_float(c, "rl.b1", 0.0, 1.0, open_hi=True)
    require_float(c, "rl.b2", 0.0, 1.0, open_hi=True)
    for key in ("rl.kl_coef", "rl.grad_clip", "rl.weight_decay", "sampling.temperature",
                "gepa.reflection_temperature", "gepa.reflection_backoff_s",
                "gepa.reflection_backoff_max_s"):  # fmt: skip
        if has(c, key):
            require_float(c, key, 0.0)
    require_float(c, "sampling.top_p", 0.0, 1.0, open_lo=True)
    if has(c, "gepa.reflection_timeout_s"):
        require_float(c, "gepa.reflection_timeout_s", 0.0, open_lo=True)


@config_check("shapes")
def _shapes(c: Any, ctx: CheckContext) -> None:
    g, k = c.rl.group_size, c.gepa.k
    if c.mode in ("fst", "fst_distill") and g % k:
        ok = max(d for d in range(1, g + 1) if g % d == 0 and d <= k)
        raise ConfigError(f"gepa.k={k} contexts must divide rl.group_size={g} (G/K rollouts per "
                          "context)", "gepa.k", k, f"e.g. --config.gepa.k={ok}")  # fmt: skip
    if k + 2 > c.gepa.max_pool:
        raise ConfigError("the prompt bank is too small for K exported + 2 proposals",
                          "gepa.max_pool", c.gepa.max_pool, f"must be >= gepa.k + 2 = {k + 2}")  # fmt: skip
    rows, shards, mb = c.rl.batch_size * g, ctx.num_batch_shards, c.rl.micro_batches
    if shards and rows % (shards * mb):
        raise ConfigError(
            f"rl.batch_size × rl.group_size = {rows} rows cannot be split into {mb} micro-batches "
            f"over {shards} data×fsdp shards", "rl.batch_size", c.rl.batch_size,
            f"use a row count that is a multiple of {shards * mb}",
        )  # fmt: skip
    if c.gepa.minibatch > c.gepa.anchor_size:
        raise ConfigError(f"gepa.minibatch={c.gepa.minibatch} exceeds gepa.anchor_size",
                          "gepa.anchor_size", c.gepa.anchor_size,
                          f"raise it to >= {c.gepa.minibatch} or lower gepa.minibatch")  # fmt: skip
    if c.task.stream and c.task.switch_every < 1:
        raise ConfigError("task.stream is set but task.switch_every < 1", "task.switch_every",
                          c.task.switch_every, "set the RL steps per task (>= 1)")  # fmt: skip


@config_check("tasks")
def _tasks(c: Any, ctx: CheckContext) -> None:
    from fst_jax.tasks import base, list_tasks

    key = "task.stream" if c.task.stream else "task.name"
    known = list_tasks()
    kwargs = dict(c.task.kwargs)
    for name in task_names(c):
        if name.endswith(".jsonl") or os.sep in name:  # a saved subset file
            readable_file(name, key, "task subset file")
            continue
        if name not in known:
            raise ConfigError("unknown task", key, name,
                              f"{nearest(name, known)}available: {', '.join(known)}")  # fmt: skip
        params = inspect.signature(base._REGISTRY.get(name).__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        names = [p for p in params if p != "self"]
        for kw in kwargs:
            if kw not in params and not takes_any:
                raise ConfigError(f"task {name!r} takes no argument {kw!r}", f"task.kwargs.{kw}",
                                  kwargs[kw], f"{nearest(kw, names)}it takes {', '.join(names)}")  # fmt: skip
    for kw in ("path", "data_path", "train_path", "validation_path", "test_path"):
        if kwargs.get(kw):
            readable_file(str(kwargs[kw]), f"task.kwargs.{kw}")
    if kwargs.get("tfds_dir") and not os.path.isdir(os.path.expanduser(kwargs["tfds_dir"])):
        raise ConfigError("TFDS data dir not found", "task.kwargs.tfds_dir", kwargs["tfds_dir"],
                          "prepare the dataset there first (see fst_jax/tasks/README.md)")  # fmt: skip
    from fst_jax.tasks import get_task

    for name in task_names(c):  # constructors are cheap (data loads lazily); they check enums
        try:
            task = get_task(name, **kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
            msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
            named = [k for k in kwargs if k in msg] or [k for k in kwargs if repr(kwargs[k]) in msg]
            key, value = (
                (f"task.kwargs.{named[0]}", kwargs[named[0]]) if named else ("task.kwargs", kwargs)
            )
            raise ConfigError(f"task {name!r} rejects its arguments", key, value, msg) from None
        if hasattr(task, "close"):
            task.close()


@config_check("model")
def _model(c: Any, ctx: CheckContext) -> None:
    spec = str(c.model.spec)
    fix = ("pass an HF checkpoint dir (config.json + *.safetensors), a .gguf file, "
           "a Hub id (owner/name[@revision]), 'smollm2-135m-instruct' or "
           "'random:<named config>'")  # fmt: skip
    if spec.startswith("random:"):
        from fst_jax.models.random_init import parse_random_spec

        parse_random_spec(spec)
        return
    from fst_jax.models.hub import is_hub_id
    from fst_jax.models.loading import is_embedded

    if is_embedded(spec) or is_hub_id(spec):
        return  # resolved (and its errors reported) when the model loads
    p = Path(os.path.expanduser(spec))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError("model dir has no config.json", "model.spec", spec, fix)
        if not list(p.glob("*.safetensors")):
            raise ConfigError("model dir has no *.safetensors weights", "model.spec", spec, fix)
        return
    if p.is_file():
        if p.suffix != ".gguf":
            raise ConfigError("model file is not a .gguf", "model.spec", spec, fix)
        readable_file(spec, "model.spec", "model file")
        return
    raise ConfigError("model not found: no such directory, file or embedded name", "model.spec",
                      spec, fix)  # fmt: skip


@config_check("metrics")
def _metrics(c: Any, ctx: CheckContext) -> None:
    project = c.metrics.wandb if "metrics" in c else ""
    if project:
        from fst_jax.wandb_writer import require_wandb

        require_wandb(str(project))


@config_check("reflection_lm")
def _reflection(c: Any, ctx: CheckContext) -> None:
    g = c.gepa
    if c.mode not in ("gepa", "fst", "fst_distill") or g.reflection_lm != "openai":
        return
    if not g.reflection_model:
        raise ConfigError("no reflection model named", "gepa.reflection_model", g.reflection_model,
                          "set the endpoint's model name, e.g. gpt-5.2")  # fmt: skip
    url = str(g.reflection_base_url)
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError("reflection base URL is not http(s)", "gepa.reflection_base_url", url,
                          "e.g. http://localhost:8000/v1")  # fmt: skip
    if not url and not os.environ.get(g.reflection_api_key_env):
        raise ConfigError(
            "API key environment variable is not set", "gepa.reflection_api_key_env",
            g.reflection_api_key_env, f"export {g.reflection_api_key_env}=<key>, or use "
            "--config.gepa.reflection_lm=local (no endpoint needed)",
        )  # fmt: skip


@config_check("init_from")
def _init_from(c: Any, ctx: CheckContext) -> None:
    if c.init_from and "://" not in str(c.init_from) and not os.path.isdir(c.init_from):
        raise ConfigError("init_from run dir not found", "init_from", c.init_from,
                          "give the workdir of a finished run (it holds checkpoints/)")  # fmt: skip


@config_check("workdir")
def _workdir(c: Any, ctx: CheckContext) -> None:
    w = ctx.workdir
    if w is None:
        return
    from fst_jax import paths

    try:  # unservable schemes, a URI that lost a slash, gs:// without its client libraries
        paths.workdir_path(w)
        paths.require_checkpoint_support(w)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if "://" in str(w):  # remote (gs://...): nothing to probe locally
        return
    p = Path(os.path.expanduser(str(w)))
    if p.exists() and not p.is_dir():
        raise ConfigError("workdir is a file, not a directory", "--workdir", str(w),
                          "pass a directory path (it is created if missing)")  # fmt: skip
    try:
        paths.make_writable_dir(p)
    except OSError as e:
        raise ConfigError(f"workdir is not writable ({e.strerror})", "--workdir", str(w),
                          "choose a directory you can write to") from None  # fmt: skip


@config_check("compile_cache")
def _compile_cache(c: Any, ctx: CheckContext) -> None:
    """The compile cache directory can be created and written (``""`` = off)."""
    from fst_jax import compile_cache

    compile_cache.prepare(compile_cache.from_config(c))


@config_check("reuse_gepa_rollouts")
def _reuse(c: Any, ctx: CheckContext) -> None:
    """GEPA's rollouts can stand in for RL's only when both sample the same distribution (the
    same policy θ_c, prompts and sampling settings) and RL samples under the exported contexts."""
    if not has(c, "rl.reuse_gepa_rollouts"):
        return
    from fst_jax.rl.reuse import REUSE_MODES

    require_enum(c, "rl.reuse_gepa_rollouts", REUSE_MODES, "rollout reuse mode")
    if c.rl.reuse_gepa_rollouts == "off":
        return
    if c.mode != "fst":
        why = {"fst_distill": "it samples the student without context",
               "rl": "it runs no GEPA round", "gepa": "it trains no weights"}.get(c.mode, "")  # fmt: skip
        raise ConfigError(f"rollout reuse needs mode fst ({why})", "rl.reuse_gepa_rollouts",
                          c.rl.reuse_gepa_rollouts, "use --config.mode=fst or "
                          "--config.rl.reuse_gepa_rollouts=off")  # fmt: skip
    if c.gepa.anchors == "disjoint":
        raise ConfigError("rollout reuse needs GEPA's anchors to be RL's next problems",
                          "gepa.anchors", c.gepa.anchors, "use --config.gepa.anchors=lookahead or "
                          "--config.rl.reuse_gepa_rollouts=off")  # fmt: skip
    gepa_sp, rl_sp = sampling_settings(c, "gepa"), sampling_settings(c, "rl")
    for field, a in gepa_sp.items():
        if a != rl_sp[field]:
            raise ConfigError(
                f"rollout reuse needs GEPA's evaluation sampling {field} ({a}) to equal RL's "
                f"({rl_sp[field]})", "rl.reuse_gepa_rollouts", c.rl.reuse_gepa_rollouts,
                "sample both with the same settings or --config.rl.reuse_gepa_rollouts=off",
            )  # fmt: skip


def sampling_settings(c: Any, purpose: str) -> dict[str, Any]:
    """The settings that fix a rollout's distribution for `purpose` ("gepa" evaluations or
    "rl" steps). Both read ``config.sampling`` today (the controller passes one SamplingParams to
    both); a separate GEPA sampling node would be read here, and reuse would then refuse a
    mismatch instead of training on rollouts from another distribution."""
    if purpose not in ("gepa", "rl"):
        raise ValueError(f"purpose={purpose!r}; use 'gepa' or 'rl'")
    s = c.sampling
    return {"temperature": float(s.temperature), "top_p": float(s.top_p), "top_k": int(s.top_k),
            "max_new_tokens": int(s.max_new_tokens)}  # fmt: skip
