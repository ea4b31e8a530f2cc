"""The `openai` reflection LM: any OpenAI-compatible chat endpoint through the `openai` client.

Retries are ours (the client's own are disabled) so every retry is counted: 429, 5xx, timeouts
and dropped connections back off exponentially (`backoff_base · 2^attempt`, capped, with
deterministic jitter-free delays for reproducibility) up to `max_retries`, then the proposal is
skipped. Client errors that retrying cannot fix (bad key, unknown model, malformed request) raise
at once with the fix, since they are configuration mistakes, not faults of one proposal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import openai

from fst_jax.gepa.reflection import LMReply, ReflectionLMError, register_reflection_lm

_RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


def _reason(e: Exception) -> str:
    if isinstance(e, openai.APITimeoutError):
        return "timeout"
    if isinstance(e, openai.APIConnectionError):
        return "connection"
    if isinstance(e, openai.RateLimitError):
        return "rate_limited"
    status = getattr(e, "status_code", None)
    return f"http_{status}" if status else "server_error"


class OpenAIReflectionLM:
    """Chat completions against `base_url` (OpenAI, vLLM, llama.cpp server, ...)."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_tokens: int = 4096,
        temperature: float | None = None,
        extra_body: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ValueError(
                "OpenAIReflectionLM needs a model name, e.g. model='gpt-5.2' or your server's alias."
            )
        if max_retries < 0 or timeout <= 0 or max_tokens < 1:
            raise ValueError("max_retries must be >= 0, timeout > 0 and max_tokens >= 1.")
        api_key = os.environ.get(api_key_env)
        if api_key is None:
            if base_url is None:
                raise ValueError(
                    f"environment variable {api_key_env} is not set; export your API key there, or pass "
                    "api_key_env='NAME' naming the variable that holds it."
                )
            api_key = "unused"  # local OpenAI-compatible servers usually ignore the key
        self.model, self.base_url = model, base_url
        self.max_retries, self.backoff_base, self.backoff_max = (
            max_retries,
            backoff_base,
            backoff_max,
        )
        self.max_tokens, self.temperature, self.extra_body = max_tokens, temperature, extra_body
        self._sleep = sleep
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self.usage: dict[str, int] = {
            "requests": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self.faults: dict[str, int] = {}

    def fingerprint(self) -> str:
        return f"openai:{self.base_url or 'api.openai.com'}:{self.model}:{self.max_tokens}:{self.temperature}"

    def _delay(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * (2**attempt))

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
        }
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        for attempt in range(self.max_retries + 1):
            self.usage["requests"] += 1
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except _RETRYABLE as e:
                reason = _reason(e)
                self.faults[reason] = self.faults.get(reason, 0) + 1
                if attempt == self.max_retries:
                    raise ReflectionLMError(
                        reason, f"reflection LM failed after {attempt + 1} attempts: {e}"
                    ) from e
                self.usage["retries"] += 1
                self._sleep(self._delay(attempt))
                continue
            except openai.APIStatusError as e:
                raise RuntimeError(
                    f"reflection LM request was refused with HTTP {e.status_code} ({e.message}); check the model "
                    f"name {self.model!r}, base_url {self.base_url!r} and the API key variable. Retrying cannot fix this."
                ) from e
            if resp.usage is not None:
                self.usage["prompt_tokens"] += int(resp.usage.prompt_tokens or 0)
                self.usage["completion_tokens"] += int(resp.usage.completion_tokens or 0)
            if not resp.choices:
                return LMReply(text=None, finish_reason=None)
            choice = resp.choices[0]
            return LMReply(text=choice.message.content, finish_reason=choice.finish_reason)
        raise AssertionError("unreachable")


@register_reflection_lm("openai")
def _make_openai(**kwargs: Any) -> OpenAIReflectionLM:
    return OpenAIReflectionLM(**kwargs)
