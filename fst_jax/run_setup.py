"""What the controller builds from an fst-train config before its loop runs.

`fst_jax.controller` is the FST loop; this module keeps the parts around it that only turn a
config into objects, so the loop reads top to bottom: the config checks that fail before any
device work (`validate_config`, `ConfigError`, `MODES`), the policy model (`load_model`, including
``random:<named config>[,field=value...]`` specs from `fst_jax.models.random_init`), the `local`
reflection LM on the run's own sampler (`make_reflection_lm`, built by `fst_jax.chat`), and the
progress bars (`progress`, `ProgressSampler`), and `build_parts`, which assembles all of them
into the `RunParts` the controller's loop runs on. The checks live in `fst_jax.config_checks`.
Nothing here holds run state; the controller owns the RNG keys and passes them in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from fst_jax import gepa as gepa_lib
from fst_jax import sampling
from fst_jax import settings as _settings  # also registers the "method" config check
from fst_jax.config_checks import MODES, config_check, task_names, validate_config
from fst_jax.errors import ConfigError

__all__ = [
    "MODES",
    "ConfigError",
    "RunParts",
    "build_parts",
    "config_check",
    "task_names",
    "validate_config",
]


def load_model(config: Any) -> tuple[Any, Any, Any]:
    """``random:<named config>[,field=value...]`` → random init + the tiny tokenizer (tests; the
    fields override the named config, e.g. a longer ``max_position_embeddings`` so the local
    reflection prompt fits); else models.load."""
    spec = str(config.model.spec)
    overrides = dict(
        dtype=config.model.dtype, param_dtype=config.model.param_dtype,
        remat=config.model.remat, scan_layers=config.model.scan_layers,
    )  # fmt: skip
    if spec.startswith("random:"):
        from fst_jax.models.random_init import random_model

        return random_model(spec, config.seed, **overrides)
    from fst_jax.models import CheckpointError, load

    dtype = overrides.pop("dtype")
    try:
        mcfg, params, tok = load(spec, **{k: v for k, v in overrides.items() if k != "param_dtype"})
    except (CheckpointError, OSError, EOFError) as e:  # missing, truncated or corrupt files
        msg = " ".join(str(e).split())[:400]
        raise ConfigError(
            f"cannot load the model: {type(e).__name__}: {msg}", "model.spec", spec,
            "re-download or re-export the checkpoint, or point model.spec at a complete one",
        ) from e  # fmt: skip
    return dataclasses.replace(mcfg, dtype=dtype, param_dtype=config.model.param_dtype), params, tok


_REMOTE_KEYS = {
    "reflection_timeout_s": "timeout",
    "reflection_max_retries": "max_retries",
    "reflection_backoff_s": "backoff_base",
    "reflection_backoff_max_s": "backoff_max",
    "reflection_max_reply_chars": "max_reply_chars",
}
_REFLECTOR_KEYS = {
    "reflection_content_retries": "content_retries",
    "max_context_chars": "max_context_chars",
    "reply_cache_entries": "max_cache_entries",
}


def reflector_kwargs(c: Any) -> dict[str, Any]:
    """`gepa.Reflector` keyword arguments from ``config.gepa`` (`c`): content retries, the
    context-length cap and the reply-cache bound."""
    return {arg: c[key] for key, arg in _REFLECTOR_KEYS.items() if key in c}


def make_reflection_lm(
    c: Any,
    *,
    sampler: Any,
    tokenizer: Any,
    model_config: Any,
    params: Any,
    key_for: Callable[[list[list[dict[str, str]]]], jax.Array],
) -> Any:
    """The reflection LM named by ``config.gepa`` (`c`): a remote backend from the registry (on
    process 0 only; None elsewhere, its text is broadcast), or ``local`` = the frozen policy
    `params` sampled through the run's `sampler`, each batch of conversations under the key
    ``key_for(conversations)``.
    """
    if jax.process_index() != 0 and c.reflection_lm != "local":
        return None  # only process 0 calls a remote reflection LM (its text is broadcast)
    if c.reflection_lm != "local":
        kw = dict(model=c.reflection_model, api_key_env=c.reflection_api_key_env,
                  max_tokens=c.reflection_max_tokens)  # fmt: skip
        for key, arg in _REMOTE_KEYS.items():  # the retry policy (configs predating it: defaults)
            if key in c:
                kw[arg] = c[key]
        if c.reflection_base_url:
            kw["base_url"] = c.reflection_base_url
        return gepa_lib.get_reflection_lm(c.reflection_lm, **kw)
    from fst_jax.chat import SamplerReflectionLM

    sp = sampling.SamplingParams(temperature=c.reflection_temperature,
                                 max_new_tokens=c.reflection_max_tokens)  # fmt: skip
    # name "local": the reply-cache key of runs (and checkpoints) written before this module
    return SamplerReflectionLM(sampler, params, tokenizer, sp, key_for=key_for, name="local",
                               max_positions=model_config.max_position_embeddings,
                               sample_kwargs={"arrays": False})  # fmt: skip


def make_trainer(c: Any, model_config: Any, mesh: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(train step, KL measure, reference log-probs fn or None, advantage kwargs) from the
    config, wrapped for global inputs on a multi-host mesh."""
    from fst_jax import rl, settings

    rl_cfg = settings.rl_config(c)
    adv = {} if c.mode == "fst_distill" else settings.advantage_kwargs(c.rl, c.rl.advantage)
    train_step = rl.make_train_step(model_config, mesh, rl_cfg)
    measure_kl = rl.make_measure_kl(model_config, mesh)
    ref_logps = (
        rl.make_logps_fn(model_config, mesh, temperature=rl_cfg.temperature)
        if c.rl.kl_coef
        else None
    )
    if jax.process_count() > 1:  # multi-host (issue 8): host batches → global arrays
        train_step.jitted, ref_logps, measure_kl = globalize_trainer(
            mesh, train_step.jitted, ref_logps, measure_kl
        )
    return train_step, measure_kl, ref_logps, adv


def starting_params(c: Any, params: Any) -> tuple[Any, Any]:
    """(weights the run starts from, init_params): `params` and None, or for the plasticity probe
    (``init_from``) another run's weights twice (they are also val/kl_to_init's reference)."""
    if not c.init_from:
        return params, None
    from fst_jax import checkpoint as ckpt_lib

    step = None if c.init_from_step < 0 else c.init_from_step
    init, _ = ckpt_lib.restore_params(
        c.init_from, ckpt_lib.abstract_like(params), step, keys=("train", "params")
    )
    return init, init


def make_sampling(c: Any, model_config: Any, tokenizer: Any, rows: Any) -> tuple[Any, Any, Any]:
    """(row-sharded sampler with a progress bar, SamplingParams, empty prompt bank)."""
    from fst_jax.rows import RowShardedSampler
    from fst_jax.sampling.sampler import DEFAULT_CONTEXT_SLOTS

    # configs written before the key (resumed runs) keep the sampler's default
    slots = c.sampling.get("context_cache_slots", DEFAULT_CONTEXT_SLOTS)
    inner = sampling.Sampler(model_config, tokenizer, context_cache=slots)
    sampler = ProgressSampler(RowShardedSampler(inner, rows), enabled=c.progress)
    sp = sampling.SamplingParams(
        temperature=c.sampling.temperature, top_k=c.sampling.top_k, top_p=c.sampling.top_p,
        max_new_tokens=c.sampling.max_new_tokens,
    )  # fmt: skip
    bank = sampling.build_bank(
        tokenizer, [], max_prompts=c.gepa.max_pool, max_len=c.sampling.max_context_len,
        mode=c.sampling.context_in,
    )  # fmt: skip
    return sampler, sp, bank


def warn_gepa_budget(g: Any) -> None:
    """Logs `gepa.round.budget_warning` for ``config.gepa`` (a budget too small to iterate)."""
    import logging

    from fst_jax.gepa.round import budget_warning

    rescore = g.k * g.anchor_size if g.rescore == "shared" else 0
    warning = budget_warning(g.budget, g.anchor_size, g.minibatch, rescore)
    if warning:
        logging.getLogger("fst_jax.controller").warning(warning)


def globalize_trainer(mesh: Any, train_jitted: Any, ref_logps: Any, measure_kl: Any):
    """Multi-host: every host builds the same numpy batch, but the trainer's jitted functions
    (explicit in_shardings) need global arrays, so they convert at this boundary. Returns the
    wrapped (train step, reference log-probs or None, KL measure)."""
    import types

    from fst_jax import distributed, sharding

    bs = sharding.batch_sharding(mesh)
    train_jitted = distributed.with_global_inputs(train_jitted, bs)
    if ref_logps is not None:
        ref_logps = distributed.with_global_inputs(ref_logps, bs, gather_outputs=True)

    def global_measure_kl(params: Any, base_params: Any, batch: Any) -> Any:
        g = distributed.host_to_global((batch.tokens, batch.positions, batch.completion_mask), bs)
        return measure_kl(params, base_params, types.SimpleNamespace(
            tokens=g[0], positions=g[1], completion_mask=g[2]))  # fmt: skip

    return train_jitted, ref_logps, global_measure_kl


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


def progress(total: int | None, initial: int, desc: str, enabled: bool, unit: str = "cycle") -> Any:
    """A tqdm bar on process 0 when `enabled`; elsewhere a no-op bar, so callers never branch."""
    if not enabled or jax.process_index() != 0:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


class ProgressSampler:
    """The sampler plus a tqdm bar counting rollouts, labelled with the current phase."""

    def __init__(self, sampler: sampling.Sampler, enabled: bool) -> None:
        self._sampler, self.phase = sampler, ""
        self._bar = progress(None, 0, "sampling", enabled, unit="rollout")

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        self._bar.set_postfix_str(self.phase)
        out = self._sampler.sample(*args, **kwargs)
        self._bar.update(len(out.texts))
        return out

    def close(self) -> None:
        self._bar.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)


@dataclasses.dataclass
class RunParts:
    """Everything the FST loop runs on that a config determines: built once, never checkpointed
    (a resumed run rebuilds the same parts from the same config)."""

    mesh: Any
    row_multiple: int  # rollout batches are split over this many batch shards
    rows: Any  # the batch sharding every rollout batch is split by
    tasks: dict[str, Any]  # name → RowShardedTask, every task of the run (a stream: several)
    model_config: Any
    tokenizer: Any
    base_params: Any  # π_base: val/kl_to_base, quadrants, the local reflection LM (frozen)
    start_params: Any  # the weights the run starts from (in-loss KL reference, mode gepa)
    init_params: Any  # another run's weights for the plasticity probe, or None
    train_step: Any
    measure_kl: Any
    ref_logps: Any  # reference log-probs fn for the in-loss KL penalty, or None
    advantage_kwargs: dict[str, Any]
    sampler: Any  # ProgressSampler(RowShardedSampler(Sampler))
    sampling: Any  # SamplingParams of rollouts and evaluation
    bank: Any  # the empty prompt bank the exported contexts go into
    reflector: Any  # gepa.Reflector
    gepa_config: Any
    pad_id: int  # the sampler's pad token (tokenizer pad, else EOS): reused rows pad with it
    T: int  # rl.steps_per_cycle
    G: int  # rl.group_size
    K: int  # gepa.k


def build_parts(
    c: Any,
    *,
    model: tuple[Any, Any, Any] | None = None,
    reflection_lm: Any = None,
    reflect_key_for: Callable[[list[list[dict[str, str]]]], jax.Array],
) -> RunParts:
    """The `RunParts` of config `c`, in the order that fails fastest: the mesh and the config
    checks before any task or model is loaded. ``model`` (config, params, tokenizer) and
    ``reflection_lm`` may be injected (tests); by default they come from ``model.spec`` and the
    reflection-LM registry. ``reflect_key_for(conversations)`` keys the local reflection LM's
    draws (the controller's, so a resumed run's restored key is used)."""
    from fst_jax import sharding
    from fst_jax.rows import RowShardedTask
    from fst_jax.tasks import get_task

    mesh = sharding.mesh_from_config(c)
    row_multiple = sharding.batch_shard_count(mesh)
    validate_config(c, row_multiple)
    # Every rollout batch is split over the mesh's batch shards: each process samples,
    # decodes and verifies only its rows; scores and arrays are gathered (issue 8).
    rows = sharding.batch_sharding(mesh)
    tasks = {n: RowShardedTask(get_task(n, **dict(c.task.kwargs)), rows) for n in task_names(c)}
    model_config, params, tokenizer = model or load_model(c)
    # Loss, advantage and GEPA settings come from the config (`fst_jax.settings`).
    train_step, measure_kl, ref_logps, advantage_kwargs = make_trainer(c, model_config, mesh)
    start_params, init_params = starting_params(c, params)
    sampler, sp, bank = make_sampling(c, model_config, tokenizer, rows)
    reflector = gepa_lib.Reflector(
        reflection_lm or make_reflection_lm(
            c.gepa, sampler=sampler, tokenizer=tokenizer, model_config=model_config,
            params=params, key_for=reflect_key_for,
        ),
        edit_mode=c.gepa.edit, **reflector_kwargs(c.gepa),
        lockstep=gepa_lib.jax_lockstep() if jax.process_count() > 1 else None,
    )  # fmt: skip
    t = tokenizer
    pad_id = int(t.pad_token_id if t.pad_token_id is not None else t.eos_token_id)
    if c.mode in ("gepa", "fst", "fst_distill") and jax.process_index() == 0:
        warn_gepa_budget(c.gepa)
    return RunParts(
        mesh=mesh, row_multiple=row_multiple, rows=rows, tasks=tasks, model_config=model_config,
        tokenizer=tokenizer, base_params=params, start_params=start_params,
        init_params=init_params, train_step=train_step, measure_kl=measure_kl,
        ref_logps=ref_logps, advantage_kwargs=advantage_kwargs, sampler=sampler, sampling=sp,
        bank=bank, reflector=reflector, gepa_config=_settings.gepa_config(c.gepa), pad_id=pad_id,
        T=c.rl.steps_per_cycle, G=c.rl.group_size, K=c.gepa.k,
    )  # fmt: skip
