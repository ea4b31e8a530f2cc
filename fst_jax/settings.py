"""Frozen settings dataclasses built from an fst-train config node, field by field.

The loss, advantage and GEPA settings are dataclasses (or keyword arguments) whose every field
is meant to be an ablation knob. Copying fields by hand into their constructors let new fields
go unreachable from ``--config.x.y``; here each field is read from the config under its own name
(or a documented alias), and a field with no config key is an error naming the key to add to
``experiments/configs/fst_base.py``. So adding a field to `LossConfig` or `GepaConfig` without
exposing it fails loudly (and a test checks every field is reachable).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fst_jax.config_checks import (
    CheckContext,
    config_check,
    require_enum,
    require_int,
    task_names,
)
from fst_jax.errors import ConfigError

# dataclass field -> config key, where the config's historical name differs.
LOSS_ALIASES = {"name": "loss"}
GEPA_ALIASES = {"minibatch_size": "minibatch", "rescore_budget": "rescore"}
ADVANTAGE_PREFIX = "advantage_"  # rl.advantage_<keyword> -> the estimator's keyword argument


def _carry(v: Any) -> str | int:
    """``gepa.carry``: 'exported', 'all', or a number of exported candidates (flags give str)."""
    return int(v) if isinstance(v, int) or str(v).isdigit() else str(v)


def _none_if_zero(v: Any) -> Any:
    return None if v in (0, 0.0, None) else v


CONVERTERS: dict[str, Callable[[Any], Any]] = {"carry": _carry}


def build(
    cls: type,
    node: Mapping[str, Any],
    where: str,
    *,
    aliases: Mapping[str, str] | None = None,
    **fixed: Any,
) -> Any:
    """``cls(**{field: node[alias or field]})``; `fixed` fields are set by the caller instead.

    `where` is the config path of `node` (e.g. ``config.rl``), used in errors.
    """
    aliases = aliases or {}
    kwargs = dict(fixed)
    for f in dataclasses.fields(cls):
        if f.name in fixed:
            continue
        key = aliases.get(f.name, f.name)
        if key not in node:
            raise ConfigError(
                f"{cls.__name__}.{f.name} has no config key {where}.{key}; add it to "
                "experiments/configs/fst_base.py so it can be set with "
                f"--config.{where.removeprefix('config.')}.{key}"
            )
        kwargs[f.name] = CONVERTERS.get(f.name, lambda v: v)(node[key])
    try:
        return cls(**kwargs)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def advantage_kwargs(node: Mapping[str, Any], estimator: str) -> dict[str, Any]:
    """The estimator's keyword arguments from ``rl.advantage_<name>`` keys (e.g. advantage_std)."""
    from fst_jax.rl import get_advantage

    out = {}
    for p in inspect.signature(get_advantage(estimator)).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        key = ADVANTAGE_PREFIX + p.name
        if key not in node:
            raise ConfigError(
                f"advantage {estimator!r} takes {p.name}= but config.rl has no key {key}; add it "
                "to experiments/configs/fst_base.py"
            )
        out[p.name] = node[key]
    return out


def loss_config(rl_node: Mapping[str, Any], mode: str) -> Any:
    from fst_jax.rl import LossConfig

    fixed = {"name": "fst_distill"} if mode == "fst_distill" else {}
    if "clip_low" in rl_node:
        fixed["clip_low"] = _none_if_zero(rl_node["clip_low"])
    return build(LossConfig, rl_node, "config.rl", aliases=LOSS_ALIASES, **fixed)


def gepa_config(gepa_node: Mapping[str, Any]) -> Any:
    from fst_jax.gepa import GepaConfig

    return build(GepaConfig, gepa_node, "config.gepa", aliases=GEPA_ALIASES)


def rl_config(config: Any) -> Any:
    """The train step's settings: loss from `loss_config`, optimizer/execution from config.rl."""
    from fst_jax import rl

    r = config.rl
    return build(
        rl.RLConfig, r, "config.rl",
        aliases={"learning_rate": "lr", "num_microbatches": "micro_batches",
                 "max_grad_norm": "grad_clip"},
        loss=loss_config(r, config.mode),
        max_grad_norm=_none_if_zero(r.grad_clip),
        temperature=float(config.sampling.temperature),
    )  # fmt: skip


@config_check("method")
def check_method_config(config: Any, ctx: CheckContext) -> None:
    """Config checks for the method's own knobs (run by `validate_config`): stream stage
    lengths, GEPA anchor source, updates per batch, and every settings dataclass builds."""
    c, num_batch_shards = config, ctx.num_batch_shards
    for key, lo in (("rl.updates_per_batch", 1), ("rl.logit_chunk", 1), ("gepa.disjoint_size", 0),
                    ("gepa.max_consecutive_skips", 0), ("gepa.max_rollout_chars", 1),
                    ("gepa.leak_min_chars", 1)):  # fmt: skip
        require_int(c, key, lo)
    require_enum(c, "gepa.anchors", ("lookahead", "disjoint"), "GEPA anchor source")
    names, t = task_names(c), c.rl.steps_per_cycle
    if len(names) > 1 and c.task.switch_every >= 1:
        want = len(names) * -(-c.task.switch_every // t)
        if c.num_cycles != want:
            raise ConfigError(
                f"a stream of {len(names)} tasks × task.switch_every={c.task.switch_every} RL "
                f"steps in cycles of rl.steps_per_cycle={t} takes exactly {want} cycles (a "
                "stage's last cycle is shorter when T does not divide switch_every)",
                "num_cycles", c.num_cycles, f"set --config.num_cycles={want}",
            )  # fmt: skip
    g = c.gepa
    if g.anchors == "disjoint" and 0 < g.disjoint_size < g.anchor_size:
        raise ConfigError("the held-out anchor slice is smaller than one anchor set",
                          "gepa.disjoint_size", g.disjoint_size,
                          f"use 0 (= gepa.anchor_size) or >= gepa.anchor_size={g.anchor_size}")  # fmt: skip
    u, b = c.rl.updates_per_batch, c.rl.batch_size
    if b % u:
        ok = max(d for d in range(1, b + 1) if b % d == 0 and d <= u)
        raise ConfigError(f"updates per batch must divide rl.batch_size={b} (whole problems per "
                          "update)", "rl.updates_per_batch", u,
                          f"e.g. --config.rl.updates_per_batch={ok}")  # fmt: skip
    rows = b // u * c.rl.group_size
    if num_batch_shards and u > 1 and rows % (num_batch_shards * c.rl.micro_batches):
        raise ConfigError(
            f"each of the {u} mini-batches has {rows} rows, which cannot be split into "
            f"{c.rl.micro_batches} micro-batches over {num_batch_shards} data×fsdp shards",
            "rl.updates_per_batch", u, "lower rl.updates_per_batch or raise rl.batch_size",
        )  # fmt: skip
    rl_config(c)  # every loss / optimizer field builds (and validates) from the config
    gepa_config(c.gepa)
    if c.mode != "fst_distill":
        advantage_kwargs(c.rl, c.rl.advantage)
