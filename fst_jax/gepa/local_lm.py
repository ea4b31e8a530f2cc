"""The `local` reflection LM on fst_jax's own sampler: no network, by default the frozen base policy.

This is the one place in `fst_jax.gepa` that reaches JAX, and only lazily (through
`fst_jax.sampling`), so the GEPA core stays importable and testable without a model.

Small instruct models rarely produce the fenced block the meta-prompt asks for (SmolLM2-135M
answers a bare "```" and stops), so the reply is *prefilled*: the chat-templated prompt ends with
`assistant_prefix` (default an opening fence) and the model writes the context inside it. A reply
that stopped on EOS without closing the fence is closed for it; one cut at `max_new_tokens` is
reported as truncated (finish_reason "length"), like an API backend would.

The sampler call is a (possibly sharded) jitted computation, so on a multi-host mesh every
process must make it: the backend is `collective`, and the Reflector runs it on all processes
while still broadcasting process 0's outcome so every state ends identical.
"""

from __future__ import annotations

from typing import Any

from fst_jax.gepa.reflection import FENCE, LMReply, LocalReflectionLM


class SamplerReflectionLM(LocalReflectionLM):
    """Chat replies from `fst_jax.sampling.Sampler` with an assistant-turn prefix."""

    def __init__(
        self,
        config: Any,
        params: Any,
        tokenizer: Any,
        sampling: Any,
        *,
        seed: int,
        prefix: str,
        name: str,
    ):
        import jax
        import numpy as np

        from fst_jax.sampling import Sampler, raw_bank

        self._jax, self._np = jax, np
        self.sampler = Sampler(config, tokenizer)
        self.bank = raw_bank(tokenizer)
        self.params, self.sampling, self.prefix = params, sampling, prefix
        self.base_key = jax.random.PRNGKey(seed)
        super().__init__(
            self._generate, name=f"{name}:{config.name}:{sampling}:{prefix!r}", collective=True
        )
        self._tok = tokenizer

    def _generate(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        return [r.text for r in self._sample(conversations)]

    def _sample(self, conversations: list[list[dict[str, str]]]) -> list[LMReply]:
        tok = self._tok
        rows, prompt_tokens = [], []
        for conv in conversations:
            text = (
                tok.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)
                + self.prefix
            )
            rows.append(list(tok.encode(text, add_special_tokens=False)))
            prompt_tokens.append(len(rows[-1]))
        key = self._jax.random.fold_in(self.base_key, self.usage["requests"])
        idx = self._np.full((len(rows),), self.bank.no_context, self._np.int32)
        out = self.sampler.sample(
            self.params, self.bank, idx, self.sampler.pad_tasks(rows), key, self.sampling
        )
        finished = self._jax.device_get(out.finished)
        lengths = self._jax.device_get(out.completion_lengths)
        replies = []
        for i, completion in enumerate(out.texts):
            body = self.prefix + completion
            if (
                self.prefix.startswith(FENCE)
                and bool(finished[i])
                and body.rstrip().count(FENCE) < 2
            ):
                body = body.rstrip() + "\n" + FENCE  # stopped cleanly inside the prefilled fence
            replies.append(
                LMReply(
                    body,
                    "stop" if bool(finished[i]) else "length",
                    prompt_tokens[i],
                    int(lengths[i]),
                )
            )
        return replies

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        (reply,) = self._sample([messages])
        self.usage["requests"] += 1
        self.usage["prompt_tokens"] += reply.prompt_tokens
        self.usage["completion_tokens"] += reply.completion_tokens
        return reply


def local_reflection_lm_from_sampler(
    config: Any = None,
    params: Any = None,
    tokenizer: Any = None,
    *,
    spec: str | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    top_p: float = 0.95,
    greedy: bool = False,
    assistant_prefix: str = FENCE + "\n",
    seed: int = 0,
    name: str = "local",
) -> SamplerReflectionLM:
    """The `local` backend. Pass the model as (config, params, tokenizer) — e.g. the frozen base
    policy the controller already holds — or as `spec` for `fst_jax.models.load` (e.g.
    "smollm2-135m-instruct"). Request n samples with key fold_in(PRNGKey(seed), n); replays
    after a restore come from the reply cache.
    """
    from fst_jax.sampling import SamplingParams

    if spec is not None:
        if params is not None:
            raise ValueError("pass either spec or (config, params, tokenizer), not both.")
        from fst_jax.models import load

        config, params, tokenizer = load(spec)
    if config is None or params is None or tokenizer is None:
        raise ValueError(
            "the local reflection LM needs a model: pass config, params and tokenizer (e.g. the frozen "
            "base policy) or spec='smollm2-135m-instruct'."
        )
    sampling = SamplingParams(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, greedy=greedy
    )
    return SamplerReflectionLM(
        config, params, tokenizer, sampling, seed=seed, prefix=assistant_prefix, name=name
    )
