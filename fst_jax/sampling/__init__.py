"""Sampling: the prompt bank (population table) and the jitted KV-cache sampler.

Public API:
  build_bank(tokenizer, contexts, *, max_prompts, max_len, mode="system") -> PromptBank
  SamplingParams(temperature, top_k, top_p, max_new_tokens, greedy, stop_token_ids)
  Sampler(config, tokenizer).sample(params, bank, prompt_idx, tasks, key, sampling) -> Rollouts
  Sampler(...).sample_stream(..., chunk=16) -> SampleStream: per-chunk tokens, then .result()
  generate_chat(config, params, tokenizer, conversations, sampling, key) -> list[str]
  ContextCache: contexts' keys/values across calls (`Sampler(context_cache=slots)`)
"""

from fst_jax.sampling.context_cache import ContextCache
from fst_jax.sampling.engine import compose_prompts, num_compilations
from fst_jax.sampling.prompt_bank import (
    ChatLayout,
    PromptBank,
    build_bank,
    raw_bank,
    tokenizer_fingerprint,
)
from fst_jax.sampling.sampler import (
    Rollouts,
    Sampler,
    TaskTokens,
    cast_params_for_sampling,
    generate_chat,
)
from fst_jax.sampling.select import SamplingParams, select_tokens
from fst_jax.sampling.stream import SampleStream, StreamChunk

__all__ = [
    "ChatLayout",
    "ContextCache",
    "PromptBank",
    "Rollouts",
    "SampleStream",
    "Sampler",
    "SamplingParams",
    "StreamChunk",
    "TaskTokens",
    "build_bank",
    "cast_params_for_sampling",
    "compose_prompts",
    "generate_chat",
    "num_compilations",
    "raw_bank",
    "select_tokens",
    "tokenizer_fingerprint",
]
