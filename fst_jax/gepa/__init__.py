"""GEPA fast weights: a persistent Pareto population of contexts evolved by reflective mutation.

Never imports JAX at module level: candidates are scored through an evaluation callback the
controller implements with the sampler (see `round.py` for its exact contract).
"""

from fst_jax.gepa.multihost import Lockstep, jax_lockstep
from fst_jax.gepa.population import (
    Candidate,
    ExportedContext,
    MinibatchSampler,
    PopulationState,
    build_fronts,
    export_top_k,
    remove_dominated,
    selection_weights,
)
from fst_jax.gepa.reflection import (
    LMReply,
    LocalReflectionLM,
    ProposalOutcome,
    ReflectionLM,
    ReflectionLMError,
    Reflector,
    extract_context,
    get_reflection_lm,
    list_reflection_lms,
    load_template,
    register_reflection_lm,
    render_meta_prompt,
)
from fst_jax.gepa.round import (
    EvaluateFn,
    GepaConfig,
    IterationRecord,
    RoundReport,
    reflective_records,
    run_round,
)

__all__ = [
    "Candidate",
    "EvaluateFn",
    "ExportedContext",
    "GepaConfig",
    "IterationRecord",
    "LMReply",
    "LocalReflectionLM",
    "Lockstep",
    "MinibatchSampler",
    "PopulationState",
    "ProposalOutcome",
    "ReflectionLM",
    "ReflectionLMError",
    "Reflector",
    "RoundReport",
    "build_fronts",
    "export_top_k",
    "extract_context",
    "get_reflection_lm",
    "jax_lockstep",
    "list_reflection_lms",
    "load_template",
    "reflective_records",
    "register_reflection_lm",
    "remove_dominated",
    "render_meta_prompt",
    "run_round",
    "selection_weights",
]
