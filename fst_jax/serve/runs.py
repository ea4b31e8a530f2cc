"""A run's products, read back: the slow weights of one checkpoint step and its exported contexts.

`load_run(workdir, step)` rebuilds the policy a checkpoint was trained from — which model spec,
dtype and layer layout come from the run's own config saved in the checkpoint — restores only
its params (the optimiser state is never read) and pairs the exported top-K context texts with
their population ids and anchor scores. `load_spec(spec)` is the same `ServedModel` for a plain
model (an HF dir such as an `fst-export` output, a GGUF file, the embedded default, or a test's
``random:<named config>`` spec). Workdirs may be local paths or URIs orbax reads (gs://...).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

CONTEXTS_FILE = "contexts.json"


class RunError(ValueError):
    """A workdir, step or model spec that cannot be served or exported; the message says why."""


@dataclasses.dataclass
class ServedModel:
    """Everything a server or exporter needs: weights, tokenizer and the Pareto contexts.

    `contexts[i]` = {"index": i, "id": population id or None, "text", "mean_score",
    "coverage", "on_front"}, best first (the order the run exported them in).
    """

    name: str
    config: Any  # fst_jax.models.ModelConfig
    params: Any
    tokenizer: Any
    contexts: list[dict[str, Any]]
    step: int | None = None
    source: str = ""

    @property
    def context_texts(self) -> list[str]:
        return [c["text"] for c in self.contexts]


def _model_skeleton(flat: dict[str, Any]) -> tuple[Any, Any, str]:
    """(ModelConfig, tokenizer, spec) of the run's policy, without reading its base weights."""
    from fst_jax.errors import ConfigError
    from fst_jax.models import EMBEDDED_NAME, get_config
    from fst_jax.models.embedded import CONFIG_NAME, embedded_checkpoint_dir
    from fst_jax.models.loading import is_embedded

    spec = str(flat.get("model.spec", ""))
    over = {
        k: flat[f"model.{k}"]
        for k in ("remat", "scan_layers", "param_dtype")
        if f"model.{k}" in flat and flat[f"model.{k}"] is not None
    }
    dtype = flat.get("model.dtype") or None
    if spec.startswith("random:"):
        from fst_jax.models.random_init import parse_random_spec, tiny_tokenizer

        try:
            name, extra = parse_random_spec(spec)
        except ConfigError as e:
            raise RunError(f"the run's model spec {spec!r}: {e}") from e
        cfg = get_config(name, **{**over, **({"dtype": dtype} if dtype else {}), **extra})
        return cfg, tiny_tokenizer(), spec
    from fst_jax.models.gguf_loader import config_from_gguf, open_gguf
    from fst_jax.models.hf import config_from_hf, read_hf_config
    from fst_jax.models.tokenizer import load_tokenizer_dir, tokenizer_from_gguf

    if dtype:
        over["dtype"] = dtype
    path = spec
    if is_embedded(spec):
        path, over["name"] = embedded_checkpoint_dir(), CONFIG_NAME
    if os.path.isdir(path):
        name = over.pop("name", os.path.basename(os.path.normpath(path)))
        return (
            config_from_hf(read_hf_config(path), name=name, **over),
            load_tokenizer_dir(path),
            spec,
        )
    if os.path.isfile(path):
        reader = open_gguf(path)
        name = over.pop("name", os.path.splitext(os.path.basename(path))[0])
        return config_from_gguf(reader, name=name, **over), tokenizer_from_gguf(reader), spec
    raise RunError(
        f"the run's base model {spec!r} is not readable here (needed for its architecture and "
        f"tokenizer); make it available at that path, or use {EMBEDDED_NAME!r} runs"
    )


def _contexts(host: dict[str, Any]) -> list[dict[str, Any]]:
    """The exported texts (rank order) with their population ids, anchor scores and coverage."""
    from fst_jax.gepa import PopulationState

    texts = list(host.get("exported") or [])
    pop = PopulationState.from_json(host["population"]) if host.get("population") else None
    means = pop.mean_scores() if pop is not None and pop.scores else {}
    cov = pop.coverage() if means else {}
    front: set[int] = set()
    if means:
        from fst_jax.gepa.population import remove_dominated

        front = set(remove_dominated(pop.front_sets(), means))
    ids = list(pop.exported_ids) if pop is not None else []
    out = []
    for i, text in enumerate(texts):
        cid = ids[i] if i < len(ids) and pop.candidates[ids[i]].text == text else None
        if cid is None and pop is not None:  # e.g. mode rl: the seed, never scored
            cid = next((c.id for c in pop.candidates if c.text == text), None)
        score = means.get(cid) if cid is not None else None
        out.append({
            "index": i, "id": cid, "text": text,
            "mean_score": None if score is None or not np.isfinite(score) else float(score),
            "coverage": cov.get(cid) if cid is not None else None,
            "on_front": cid in front,
        })  # fmt: skip
    return out


def load_run(
    workdir: str | os.PathLike, step: int | None = None, *, name: str | None = None
) -> ServedModel:
    """The policy and Pareto contexts of checkpoint `step` (default: latest) of an fst-train run."""
    from fst_jax.checkpoint import CheckpointError, read_meta, restore_params
    from fst_jax.models import param_shapes

    try:
        step, meta = read_meta(workdir, step)
    except (CheckpointError, ValueError) as e:  # ValueError: a workdir URI typo (paths)
        raise RunError(str(e)) from e
    flat = meta.get("config") or {}
    if "model.spec" not in flat:
        raise RunError(f"checkpoint step {step} in {workdir} has no saved run config (model.spec)")
    config, tokenizer, spec = _model_skeleton(flat)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev), param_shapes(config)
    )
    try:
        params, _ = restore_params(workdir, abstract, step, keys=("train", "params"))
    except CheckpointError as e:
        raise RunError(str(e)) from e
    except Exception as e:  # orbax raises many types for missing/mismatched items
        raise RunError(
            f"could not restore the params of step {step} from {workdir} "
            f"({type(e).__name__}: {e}); the checkpoint does not match the model its saved "
            "config names"
        ) from e
    run = name or os.path.basename(str(workdir).rstrip("/")) or "run"
    return ServedModel(
        name=f"{run}@{step}", config=config, params=params, tokenizer=tokenizer,
        contexts=_contexts(meta.get("host") or {}), step=step, source=f"{workdir} ({spec})",
    )  # fmt: skip


def load_spec(spec: str, *, name: str | None = None, seed: int = 0) -> ServedModel:
    """A plain model: HF dir (its contexts.json, if any, gives the contexts), GGUF file, the
    embedded default, or ``random:<named config>[,field=value...]`` (random init, tiny tokenizer)."""
    from fst_jax.run_setup import ConfigError

    if spec.startswith("random:"):
        config, tokenizer, _ = _model_skeleton({"model.spec": spec})
        from fst_jax.models import init_params

        params = init_params(config, jax.random.key(seed))
    else:
        from fst_jax.models import load

        try:
            config, params, tokenizer = load(spec)
        except (ConfigError, ValueError) as e:
            raise RunError(str(e)) from e
    contexts: list[dict[str, Any]] = []
    cpath = os.path.join(spec, CONTEXTS_FILE)
    if os.path.isfile(cpath):
        with open(cpath) as f:
            contexts = list(json.load(f)["contexts"])
    label = spec if spec.startswith("random:") else os.path.basename(os.path.normpath(spec))
    return ServedModel(name=name or label, config=config, params=params, tokenizer=tokenizer,
                       contexts=contexts, source=spec)  # fmt: skip
