"""Greedy completion with the KV cache: one jitted prefill + `lax.while_loop` decode.

A small, exact reference generator (and the README demo):

    python -m fst_jax.models.generate --model smollm2-135m-instruct --prompt "What is 17+25?"

The full sampler (temperature, top-k/p, prompt bank, log-probs) lives in `fst_jax.sampling`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fst_jax.models.config import ModelConfig
from fst_jax.models.decoder import default_positions, forward, init_cache

_BUCKET = 64  # prompt lengths are padded to a multiple of this, so new lengths rarely recompile


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def _greedy(
    config: ModelConfig,
    params: Any,
    tokens: jax.Array,  # [B, L] right-padded prompts
    lengths: jax.Array,  # [B]
    eos_id: jax.Array,  # scalar int32; -1 = never stop early
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array]:
    b, length = tokens.shape
    cache = init_cache(config, b, length + max_new_tokens)
    logits, cache = forward(config, params, tokens, default_positions(tokens, lengths), cache)
    first = jnp.argmax(logits[jnp.arange(b), lengths - 1], axis=-1).astype(jnp.int32)
    out = jnp.zeros((b, max_new_tokens), jnp.int32)
    n_out = jnp.zeros((b,), jnp.int32)

    def cond(state):
        i, _, _, done, _, _ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, out, tok, done, n_out, cache = state
        out = out.at[:, i].set(jnp.where(done, 0, tok))
        n_out = n_out + (~done).astype(jnp.int32)
        done = done | (tok == eos_id)
        logits, cache = forward(config, params, tok[:, None], (lengths + i)[:, None], cache)
        tok = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        return i + 1, out, tok, done, n_out, cache

    state = (jnp.int32(0), out, first, jnp.zeros((b,), bool), n_out, cache)
    _, out, _, _, n_out, _ = jax.lax.while_loop(cond, body, state)
    return out, n_out


def greedy_generate(
    config: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    eos_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts; each ends at (and includes) `eos_id` if emitted."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate needs at least one prompt, and no empty prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; must be >= 1")
    longest = max(len(p) for p in prompts)
    width = -(-longest // _BUCKET) * _BUCKET
    if width + max_new_tokens > config.max_position_embeddings:
        raise ValueError(
            f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_position_embeddings={config.max_position_embeddings}; shorten the prompt."
        )
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    eos = jnp.int32(-1 if eos_id is None else eos_id)
    out, n_out = jax.device_get(_greedy(config, params, tokens, lengths, eos, max_new_tokens))
    return [out[i, : n_out[i]].tolist() for i in range(len(prompts))]


def chat_completion(
    config: ModelConfig, params: Any, tokenizer: Any, user_text: str, max_new_tokens: int = 64
) -> str:
    """One user turn rendered with the tokenizer's chat template → greedy reply text."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    (reply,) = greedy_generate(config, params, [ids], max_new_tokens, tokenizer.eos_token_id)
    return tokenizer.decode(reply, skip_special_tokens=True)


def main(argv: Sequence[str] | None = None) -> None:
    from absl import app, flags

    flags.DEFINE_string("model", "smollm2-135m-instruct", "HF dir, .gguf file or model name")
    flags.DEFINE_string("prompt", "What is 17+25? Answer with a number.", "user message")
    flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "params + compute dtype")

    def run(_: Any) -> None:
        from fst_jax.models.loading import load

        f = flags.FLAGS
        config, params, tokenizer = load(f.model, dtype=f.dtype)
        print(chat_completion(config, params, tokenizer, f.prompt, f.max_new_tokens))

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
