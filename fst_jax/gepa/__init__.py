"""GEPA fast weights: a persistent Pareto population of contexts evolved by reflective mutation.

Never imports JAX at module level: candidates are scored through an evaluation callback the
controller implements with the sampler (see `round.py` for its exact contract).

Typical wiring (the controller owns the sampler and the checkpoint):

    state = PopulationState.new([task.seed_prompt], seed=cfg.seed)
    lm = get_reflection_lm("openai", model="gpt-5.2", base_url=None, api_key_env="OPENAI_API_KEY")
    # or fst_jax.chat.local_reflection_lm(cfg, base_params, tok): the frozen policy, no network
    reflector = Reflector(lm, lockstep=jax_lockstep())
    for cycle in ...:
        report = run_round(state, evaluate, reflector, {ex.id: ex.question for ex in anchors}, budget)
        contexts = [c.text for c in export_top_k(state, K)]   # -> the sampler's prompt bank
        checkpoint["gepa"] = state.to_json()                   # PopulationState.from_json to resume
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
