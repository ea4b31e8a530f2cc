"""What a reflection-LM backend is: the reply type, the typed failure, the protocol the
Reflector needs, and the `local` wrapper around a `generate(conversations)` callable.

A leaf module (no fst_jax imports) so backends (`openai_lm`, `fst_jax.chat`) and the registry in
`reflection` can all depend on it without depending on each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol


class ReflectionLMError(RuntimeError):
    """A transient backend failure that outlived the retry policy; the proposal is skipped."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class LMReply:
    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ReflectionLM(Protocol):
    """What the Reflector needs from a backend."""

    usage: dict[str, int]

    def fingerprint(self) -> str:
        """Identity of the model and decoding settings; part of every cache key."""
        ...

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        """One chat completion; raises ReflectionLMError once retries are exhausted."""
        ...


class LocalReflectionLM:
    """Wraps `generate(conversations) -> replies`, e.g. fst_jax's sampler on a frozen local model.

    `collective=True` marks a generate that every process of a multi-host run must call (a
    sharded jitted sampler); `tokenizer` (optional) enables token usage accounting.
    """

    def __init__(
        self,
        generate: Callable[[list[list[dict[str, str]]]], list[str]],
        *,
        name: str = "local",
        collective: bool = False,
        tokenizer: Any = None,
    ) -> None:
        if not callable(generate):
            raise TypeError(
                "LocalReflectionLM needs a callable generate(list of chat message lists) -> list[str]."
            )
        self.generate = generate
        self.name = name
        self.collective = collective
        self.tokenizer = tokenizer
        self.usage: dict[str, int] = {
            "requests": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }

    def fingerprint(self) -> str:
        return f"local:{self.name}"

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        self.usage["requests"] += 1
        replies = self.generate([messages])
        if not isinstance(replies, list | tuple) or len(replies) != 1:
            raise TypeError(
                f"generate() must return one reply per conversation; got {replies!r:.200}."
            )
        reply = replies[0]
        if self.tokenizer is not None:
            prompt = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            self.usage["prompt_tokens"] += len(
                self.tokenizer.encode(prompt, add_special_tokens=False)
            )
            self.usage["completion_tokens"] += len(
                self.tokenizer.encode(reply or "", add_special_tokens=False)
            )
        return LMReply(text=reply, finish_reason=None)
