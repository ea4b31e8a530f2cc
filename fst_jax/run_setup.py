"""What the controller builds from an fst-train config before its loop runs.

`fst_jax.controller` is the FST loop; this module keeps the parts around it that only turn a
config into objects, so the loop reads top to bottom: the config checks that fail before any
device work (`validate_config`, `ConfigError`, `MODES`), the policy model (`load_model`, including
the tests' ``random:<named config>[,field=value...]`` specs), the `local` reflection LM on the
run's own sampler (`make_reflection_lm`), and the progress bars (`progress`, `ProgressSampler`).
Nothing here holds run state; the controller owns the RNG keys and passes them in.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fst_jax import gepa as gepa_lib
from fst_jax import sampling

MODES = ("rl", "gepa", "fst", "fst_distill")
FENCE = "```\n"  # opening fence prefilled into the local reflection LM's reply


class ConfigError(ValueError):
    """An fst-train config that cannot run; the message says what to change."""


def _nearest(name: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {near[0]!r}?" if near else ""


def task_names(config: Any) -> list[str]:
    stream = [s.strip() for s in str(config.task.stream).split(",") if s.strip()]
    return stream or [config.task.name]


def validate_config(config: Any, num_batch_shards: int | None = None) -> None:
    """Checks a config before any device work; raises ConfigError naming the fix."""
    from fst_jax.tasks import list_tasks

    if config.mode not in MODES:
        raise ConfigError(
            f"config.mode={config.mode!r} is not one of {MODES}.{_nearest(config.mode, MODES)}"
        )
    known = list_tasks()
    for name in task_names(config):
        if name not in known:
            raise ConfigError(
                f"unknown task {name!r}; available: {', '.join(known)}.{_nearest(name, known)}"
            )
    if config.task.stream and config.task.switch_every < 1:
        raise ConfigError(
            "config.task.stream is set but task.switch_every < 1; set the RL steps per task"
        )
    g, k, b, t = (
        config.rl.group_size,
        config.gepa.k,
        config.rl.batch_size,
        config.rl.steps_per_cycle,
    )
    if min(g, b, t, config.num_cycles) < 1 or k < 1:
        raise ConfigError(
            f"rl.group_size={g}, gepa.k={k}, rl.batch_size={b}, rl.steps_per_cycle={t} and "
            f"num_cycles={config.num_cycles} must all be >= 1"
        )
    uses_pop = config.mode in ("fst", "fst_distill")
    if uses_pop and g % k:
        raise ConfigError(
            f"gepa.k={k} contexts must divide rl.group_size={g} (G/K rollouts per context); "
            f"e.g. --config.gepa.k={max(d for d in range(1, g + 1) if g % d == 0 and d <= k)}"
        )
    if k + 2 > config.gepa.max_pool:
        raise ConfigError(f"gepa.max_pool={config.gepa.max_pool} must be >= gepa.k + 2 = {k + 2}")
    rows = b * g
    if num_batch_shards and rows % (num_batch_shards * config.rl.micro_batches):
        raise ConfigError(
            f"rl.batch_size × rl.group_size = {rows} rows cannot be split into "
            f"{config.rl.micro_batches} micro-batches over {num_batch_shards} data×fsdp shards; "
            f"use a row count that is a multiple of {num_batch_shards * config.rl.micro_batches}"
        )
    if config.gepa.minibatch > config.gepa.anchor_size:
        raise ConfigError(
            f"gepa.minibatch={config.gepa.minibatch} exceeds gepa.anchor_size={config.gepa.anchor_size}"
        )
    if config.resume not in ("auto", "force", "never"):
        raise ConfigError(f"config.resume={config.resume!r}; use auto, force or never")
    if config.eval.k < 1 or config.eval.num_examples < 1:
        raise ConfigError("eval.k and eval.num_examples must be >= 1")


def _random_spec_fields(name: str, fields: list[str]) -> dict[str, Any]:
    """``field=value`` items of a ``random:`` spec → ModelConfig overrides (typed like the field)."""
    from fst_jax.models import ModelConfig

    types_ = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)
              if f.name != "name" and str(f.type) in ("int", "float", "bool", "str")}  # fmt: skip
    out: dict[str, Any] = {}
    for item in fields:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in types_:
            raise ConfigError(
                f"model spec 'random:{name},...': {item!r} is not field=value of a ModelConfig "
                f"field.{_nearest(key, list(types_))} e.g. random:{name},max_position_embeddings=4096"
            )
        t, raw = types_[key], raw.strip()
        bools = {"true": True, "1": True, "false": False, "0": False}
        try:
            out[key] = {"int": int, "float": float, "str": str, "bool": bools.__getitem__}[t](
                raw.lower() if t == "bool" else raw
            )
        except (ValueError, KeyError):
            raise ConfigError(f"model spec field {key}={raw!r} is not a valid {t}") from None
    return out


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
        from fst_jax.models import get_config, init_params, named_configs
        from fst_jax.models.testing import tiny_tokenizer

        name, *fields = (p.strip() for p in spec.split(":", 1)[1].split(","))
        if name not in named_configs():
            raise ConfigError(
                f"unknown model config {name!r}.{_nearest(name, list(named_configs()))}"
            )
        mcfg = get_config(name, **{**overrides, **_random_spec_fields(name, fields)})
        params = init_params(mcfg, jax.random.key(config.seed))
        return mcfg, params, tiny_tokenizer()
    from fst_jax.models import load

    dtype = overrides.pop("dtype")
    mcfg, params, tok = load(spec, **{k: v for k, v in overrides.items() if k != "param_dtype"})
    return dataclasses.replace(mcfg, dtype=dtype, param_dtype=config.model.param_dtype), params, tok


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
        if c.reflection_base_url:
            kw["base_url"] = c.reflection_base_url
        return gepa_lib.get_reflection_lm(c.reflection_lm, **kw)
    sp = sampling.SamplingParams(temperature=c.reflection_temperature,
                                 max_new_tokens=c.reflection_max_tokens)  # fmt: skip
    limit = model_config.max_position_embeddings - c.reflection_max_tokens

    raw = sampling.raw_bank(tokenizer)

    def generate(conversations: list[list[dict[str, str]]]) -> list[str]:
        # The reply is prefilled with an opening fence: small local models rarely open one
        # themselves, and GEPA's extraction reads the text inside the fence.
        rows = []
        for conv in conversations:
            text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            rows.append(tokenizer.encode(text + FENCE, add_special_tokens=False))
            n = len(rows[-1])
            bucket = next((b for b in sampler.task_buckets if b >= n), n)
            if bucket > limit:  # the sampler pads the prompt to its bucket
                raise gepa_lib.ReflectionLMError(
                    "context_overflow",
                    f"reflection prompt of {n} tokens (bucket {bucket}) + {c.reflection_max_tokens} "
                    f"new tokens exceeds the local model's {model_config.max_position_embeddings}",
                )
        key = key_for(conversations)
        idx = np.full((len(rows),), raw.no_context, np.int32)
        out = sampler.sample(params, raw, idx, sampler.pad_tasks(rows), key, sp, arrays=False)
        replies = []
        for done, text in zip(out.finished, out.texts):
            body = FENCE + text
            if bool(done) and body.rstrip().count(FENCE) < 2:
                # Stopped on EOS inside the prefilled fence: close it (as gepa.local_lm does);
                # a reply cut at max_new_tokens stays unclosed and is counted as truncated.
                body = body.rstrip() + "\n" + FENCE
            replies.append(body)
        return replies

    if jax.process_count() > 1:  # a jitted sampler on the global mesh: every process calls it
        return gepa_lib.LocalReflectionLM(generate, name="local", collective=True)
    return gepa_lib.get_reflection_lm("local", generate=generate)


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
