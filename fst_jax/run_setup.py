"""What the controller builds from an fst-train config before its loop runs.

`fst_jax.controller` is the FST loop; this module keeps the parts around it that only turn a
config into objects, so the loop reads top to bottom: the config checks that fail before any
device work (`validate_config`, `ConfigError`, `MODES`), the policy model (`load_model`, including
``random:<named config>[,field=value...]`` specs from `fst_jax.models.random_init`), the `local`
reflection LM on the run's own sampler (`make_reflection_lm`, built by `fst_jax.chat`), and the
progress bars (`progress`, `ProgressSampler`). The checks live in `fst_jax.config_checks`.
Nothing here holds run state; the controller owns the RNG keys and passes them in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from fst_jax import gepa as gepa_lib
from fst_jax import sampling
from fst_jax import settings as _settings  # noqa: F401  (registers the "method" config check)
from fst_jax.config_checks import MODES, config_check, task_names, validate_config
from fst_jax.errors import ConfigError

__all__ = ["MODES", "ConfigError", "config_check", "task_names", "validate_config"]


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
