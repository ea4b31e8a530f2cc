"""Local chat generation: the ONE path from chat messages to replies on fst_jax's own sampler.

Everything that talks to a local model in chat form goes through `generate_replies`: the `local`
reflection LM of a run (the controller's frozen base policy on the run's sampler), the standalone
`local_reflection_lm(spec=...)` of notebooks, and the greedy demo

    python -m fst_jax.chat --model smollm2-135m-instruct --prompt "What is 17+25?"

It sits above both `fst_jax.sampling` (which it calls) and `fst_jax.gepa` (whose backend
interface it implements), so the GEPA core never imports JAX or the sampler.

Small instruct models rarely open the fenced block the GEPA meta-prompt asks for (SmolLM2-135M
answers a bare "```" and stops), so reflection replies are *prefilled*: the chat-templated prompt
ends with `prefix` (an opening fence) and the model writes the context inside it. A reply that
stopped on EOS inside the fence is closed for it; one cut at `max_new_tokens` is reported as
finish_reason "length", as an API backend would, and the Reflector counts it as truncated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from fst_jax.gepa.reflection import FENCE, LMReply, LocalReflectionLM, ReflectionLMError
from fst_jax.sampling import Sampler, SamplingParams, raw_bank

FENCE_PREFIX = FENCE + "\n"  # the opening fence prefilled into a reflection reply
Conversation = Sequence[dict[str, str]]


def encode_chats(tokenizer: Any, conversations: Sequence[Conversation], prefix: str = "") -> list:
    """Chat-templated prompt token rows (generation prompt added, then `prefix`)."""
    if not conversations:
        raise ValueError("no conversations given")
    rows = []
    for i, conv in enumerate(conversations):
        if not conv or not all(isinstance(m, dict) and "role" in m for m in conv):
            raise ValueError(f"conversation {i} must be a non-empty list of {{'role', 'content'}}")
        text = tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)
        rows.append(list(tokenizer.encode(text + prefix, add_special_tokens=False)))
    return rows


def generate_replies(
    sampler: Any,
    params: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    sampling: SamplingParams,
    key: jax.Array,
    *,
    prefix: str = "",
    max_positions: int | None = None,
    bank: Any = None,
    sample_kwargs: dict[str, Any] | None = None,
) -> list[LMReply]:
    """One sampler call for a batch of chats → one `LMReply` each (text includes `prefix`).

    `max_positions` (the model's context) turns a prompt that cannot fit with its reply budget
    into a `ReflectionLMError("context_overflow")` instead of an XLA shape error; the sampler pads
    each prompt to its length bucket, so the bucket is what must fit. `sample_kwargs` go to
    ``sampler.sample`` (a run's row-sharded sampler takes ``arrays=False``: texts only).
    """
    rows = encode_chats(tokenizer, conversations, prefix)
    if max_positions is not None:
        for row in rows:
            n = len(row)
            bucket = next((b for b in sampler.task_buckets if b >= n), n)
            if bucket + sampling.max_new_tokens > max_positions:
                raise ReflectionLMError(
                    "context_overflow",
                    f"chat prompt of {n} tokens (bucket {bucket}) + {sampling.max_new_tokens} new "
                    f"tokens exceeds the local model's {max_positions} positions",
                )
    bank = raw_bank(tokenizer) if bank is None else bank  # no context: the chat alone
    idx = np.full((len(rows),), bank.no_context, np.int32)
    out = sampler.sample(params, bank, idx, sampler.pad_tasks(rows), key, sampling,
                         **(sample_kwargs or {}))  # fmt: skip
    finished = np.asarray(jax.device_get(out.finished))
    lengths = np.asarray(jax.device_get(out.completion_lengths))
    replies = []
    for i, completion in enumerate(out.texts):
        body, done = prefix + completion, bool(finished[i])
        if prefix.startswith(FENCE) and done and body.rstrip().count(FENCE) < 2:
            body = body.rstrip() + "\n" + FENCE  # stopped on EOS inside the prefilled fence
        replies.append(LMReply(body, "stop" if done else "length", len(rows[i]), int(lengths[i])))
    return replies


class SamplerReflectionLM(LocalReflectionLM):
    """The `local` reflection LM: chat replies from a `Sampler` on fixed (frozen) params.

    Request n of a batch of conversations is sampled under ``key_for(conversations)``; the
    sampler call is a (possibly sharded) jitted computation, so the backend is `collective` and
    the Reflector runs it on every process of a multi-host run.
    """

    def __init__(
        self,
        sampler: Any,
        params: Any,
        tokenizer: Any,
        sampling: SamplingParams,
        *,
        key_for: Callable[[list[list[dict[str, str]]]], jax.Array],
        max_positions: int,
        prefix: str = FENCE_PREFIX,
        name: str = "local",
        sample_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.sampler, self.params, self._tok = sampler, params, tokenizer
        self.sample_kwargs = sample_kwargs
        self.sampling, self.prefix, self.key_for = sampling, prefix, key_for
        self.max_positions, self.bank = max_positions, raw_bank(tokenizer)
        super().__init__(self._texts, name=name, collective=True)

    def _replies(self, conversations: list[list[dict[str, str]]]) -> list[LMReply]:
        return generate_replies(
            self.sampler, self.params, self._tok, conversations, self.sampling,
            self.key_for(conversations), prefix=self.prefix, max_positions=self.max_positions, bank=self.bank,
            sample_kwargs=self.sample_kwargs,
        )  # fmt: skip

    def _texts(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        return [r.text for r in self._replies(conversations)]

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        (reply,) = self._replies([messages])
        self.usage["requests"] += 1
        self.usage["prompt_tokens"] += reply.prompt_tokens
        self.usage["completion_tokens"] += reply.completion_tokens
        return reply


def local_reflection_lm(
    config: Any = None,
    params: Any = None,
    tokenizer: Any = None,
    *,
    spec: str | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    top_p: float = 0.95,
    greedy: bool = False,
    assistant_prefix: str = FENCE_PREFIX,
    seed: int = 0,
    name: str = "local",
) -> SamplerReflectionLM:
    """A standalone `local` reflection LM (notebooks, tests): pass the model as (config, params,
    tokenizer), or `spec` for `fst_jax.models.load` (e.g. "smollm2-135m-instruct"). Request n is
    sampled with key fold_in(PRNGKey(seed), n); replays after a restore come from the reply cache.
    """
    if spec is not None:
        if params is not None:
            raise ValueError("pass either spec or (config, params, tokenizer), not both.")
        from fst_jax.models import load

        config, params, tokenizer = load(spec)
    if config is None or params is None or tokenizer is None:
        raise ValueError(
            "the local reflection LM needs a model: pass config, params and tokenizer (e.g. the "
            "frozen base policy) or spec='smollm2-135m-instruct'."
        )
    sampling = SamplingParams(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, greedy=greedy
    )
    base = jax.random.PRNGKey(seed)
    lm = SamplerReflectionLM(
        Sampler(config, tokenizer), params, tokenizer, sampling,
        key_for=lambda _: jax.random.fold_in(base, lm.usage["requests"]),
        max_positions=config.max_position_embeddings, prefix=assistant_prefix,
        name=f"{name}:{config.name}:{sampling}:{assistant_prefix!r}",
    )  # fmt: skip
    return lm


def greedy_tokens(
    config: Any,
    params: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    stop_ids: Sequence[int] | None = None,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts; each ends at (and includes) the first stop id
    (default: the tokenizer's EOS)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_tokens needs at least one prompt, and no empty prompt")
    sampler = Sampler(config, tokenizer)
    sp = SamplingParams(
        greedy=True, max_new_tokens=max_new_tokens,
        stop_token_ids=tuple(stop_ids or ()), ignore_eos=stop_ids is not None,
    )  # fmt: skip
    bank = raw_bank(tokenizer)
    idx = np.full((len(prompts),), bank.no_context, np.int32)
    out = sampler.sample(params, bank, idx, sampler.pad_tasks(prompts), jax.random.PRNGKey(0), sp)
    lengths = np.asarray(jax.device_get(out.completion_lengths))
    return [out.completion_tokens[i, : lengths[i]].tolist() for i in range(len(prompts))]


def chat_completion(
    config: Any, params: Any, tokenizer: Any, user_text: str, max_new_tokens: int = 64
) -> str:
    """One user turn rendered with the tokenizer's chat template → greedy reply text."""
    sp = SamplingParams(greedy=True, max_new_tokens=max_new_tokens)
    (reply,) = generate_replies(
        Sampler(config, tokenizer), params, tokenizer, [[{"role": "user", "content": user_text}]],
        sp, jax.random.PRNGKey(0), max_positions=config.max_position_embeddings,
    )  # fmt: skip
    return reply.text


def main(argv: Sequence[str] | None = None) -> None:
    from absl import app, flags

    flags.DEFINE_string("model", "smollm2-135m-instruct", "HF dir, .gguf file or model name")
    flags.DEFINE_string("prompt", "What is 17+25? Answer with a number.", "user message")
    flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "params + compute dtype")

    def run(_: Any) -> None:
        from fst_jax.models import load

        f = flags.FLAGS
        config, params, tokenizer = load(f.model, dtype=f.dtype)
        print(chat_completion(config, params, tokenizer, f.prompt, f.max_new_tokens))

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
