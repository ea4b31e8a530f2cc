"""The `openai` reflection LM: any OpenAI-compatible chat endpoint through the `openai` client.

Every way a request can fail ends as a typed, counted outcome, never as an exception out of the
GEPA round: a reply (`LMReply`) or a `ReflectionLMError(reason)` that the Reflector turns into a
skipped proposal. Reasons:

  transient, retried with backoff then skipped: ``timeout``, ``connection``, ``rate_limited``
  (429), ``http_408/409/425/5xx``, and 200 answers that are not a chat completion —
  ``bad_json`` (a truncated or otherwise unparseable JSON body), ``not_json`` (an HTML error
  page from a proxy), ``not_completion`` (JSON without ``choices[0].message``);
  permanent, skipped at once: other ``http_4xx`` (bad key, unknown model, malformed request —
  logged with the fix, since retrying cannot help), ``reply_too_long`` (a reply above
  ``max_reply_chars``: its text is not kept, so one rambling answer cannot bloat state).

We read the raw HTTP body and parse it ourselves, so a proxy's HTML page or a cut JSON body is a
reason, not a crash inside the client. Retries use tenacity (the client's own are off so each
one is counted): exponential backoff ``backoff_base · 2^attempt`` capped at ``backoff_max``,
or the server's ``Retry-After`` when it sends one (capped the same way). Counts go to
``usage`` (``requests``, ``retries``, tokens) and ``usage['fault_<reason>']``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import openai
import tenacity

from fst_jax.gepa.lm import LMReply, ReflectionLMError

log = logging.getLogger(__name__)

RETRIED_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx


class _Fault(Exception):
    """One failed attempt: `reason` names it, `retry` says whether another attempt may help."""

    def __init__(self, reason: str, message: str, retry: bool, retry_after: float | None = None):
        super().__init__(message)
        self.reason, self.retry, self.retry_after = reason, retry, retry_after


def _retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header; None when absent/garbled."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        when = email.utils.parsedate_to_datetime(raw) if raw.strip() else None
        return None if when is None else max(0.0, when.timestamp() - time.time())


def _status_fault(e: openai.APIStatusError) -> _Fault:
    code = int(e.status_code)
    reason = "rate_limited" if code == 429 else f"http_{code}"
    retry = code in RETRIED_STATUS or code >= 500
    headers = getattr(getattr(e, "response", None), "headers", None)
    return _Fault(reason, f"HTTP {code}: {str(e.message)[:200]}", retry, _retry_after(headers))


def parse_completion(body: str, max_reply_chars: int) -> LMReply:
    """A chat-completion JSON body → LMReply; raises _Fault naming what is wrong with it."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        looks_json = body.lstrip()[:1] in ("{", "[")
        reason = "bad_json" if looks_json else "not_json"
        return_msg = f"200 body is not {'complete ' if looks_json else ''}JSON: {body[:120]!r}"
        raise _Fault(reason, return_msg, retry=True) from None
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content")
        finish = choice.get("finish_reason")
        if not (text is None or isinstance(text, str)) or not (
            finish is None or isinstance(finish, str)
        ):
            raise TypeError("content / finish_reason of the wrong type")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise _Fault(
            "not_completion", f"200 JSON is not a chat completion ({e!r}): {body[:120]!r}", True
        ) from None
    if text is not None and len(text) > max_reply_chars:
        raise _Fault(
            "reply_too_long",
            f"reply of {len(text)} characters exceeds max_reply_chars={max_reply_chars}",
            retry=False,
        )
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def _int(v: Any) -> int:
        return int(v) if isinstance(v, int | float) else 0

    return LMReply(
        text=text,
        finish_reason=finish,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
    )


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
        max_reply_chars: int = 200_000,
        temperature: float | None = None,
        extra_body: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ValueError(
                "OpenAIReflectionLM needs a model name, e.g. model='gpt-5.2' or your server's alias."
            )
        if max_retries < 0 or timeout <= 0 or max_tokens < 1 or max_reply_chars < 1:
            raise ValueError(
                "max_retries must be >= 0, timeout > 0, max_tokens >= 1 and max_reply_chars >= 1."
            )
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff_base and backoff_max must be >= 0 seconds.")
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
        self.max_reply_chars = max_reply_chars
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

    @property
    def faults(self) -> dict[str, int]:
        """Failed attempts by reason (also in `usage` as ``fault_<reason>``)."""
        return {k[6:]: v for k, v in self.usage.items() if k.startswith("fault_")}

    def fingerprint(self) -> str:
        return f"openai:{self.base_url or 'api.openai.com'}:{self.model}:{self.max_tokens}:{self.temperature}"

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry `attempt` (0-based): the server's Retry-After when given."""
        if retry_after is not None:
            return min(self.backoff_max, retry_after)
        return min(self.backoff_max, self.backoff_base * (2**attempt))

    def _attempt(self, kwargs: dict[str, Any]) -> LMReply:
        self.usage["requests"] += 1
        try:
            return self._attempt_once(kwargs)
        except _Fault as e:
            key = f"fault_{e.reason}"
            self.usage[key] = self.usage.get(key, 0) + 1
            raise

    def _attempt_once(self, kwargs: dict[str, Any]) -> LMReply:
        try:
            raw = self.client.chat.completions.with_raw_response.create(**kwargs)
            body = raw.text
        except openai.APITimeoutError as e:
            raise _Fault("timeout", str(e), retry=True) from None
        except openai.APIConnectionError as e:
            raise _Fault("connection", f"{e}: {e.__cause__!r}"[:300], retry=True) from None
        except openai.APIStatusError as e:
            raise _status_fault(e) from None
        except Exception as e:  # anything else the client raises is one failed attempt, too
            raise _Fault(
                f"client_{type(e).__name__}", f"{type(e).__name__}: {e}"[:300], True
            ) from None
        reply = parse_completion(body, self.max_reply_chars)
        self.usage["prompt_tokens"] += reply.prompt_tokens
        self.usage["completion_tokens"] += reply.completion_tokens
        return reply

    def _count_retry(self, rs: tenacity.RetryCallState) -> None:
        self.usage["retries"] += 1

    def _wait(self, rs: tenacity.RetryCallState) -> float:
        e = rs.outcome.exception() if rs.outcome is not None else None
        return self._delay(rs.attempt_number - 1, getattr(e, "retry_after", None))

    def complete(self, messages: list[dict[str, str]]) -> LMReply:
        """One chat completion; raises only ReflectionLMError (its `reason` says why)."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
        }
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, _Fault) and e.retry),
            wait=self._wait,
            before_sleep=self._count_retry,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, kwargs)
        except _Fault as e:
            if e.reason.startswith("http_4"):
                log.warning(
                    "reflection LM refused the request (%s); check the model name %r, base_url %r "
                    "and the API key in the variable named by gepa.reflection_api_key_env. The "
                    "proposal is skipped; retrying cannot fix this.",
                    e,
                    self.model,
                    self.base_url,
                )
            raise ReflectionLMError(e.reason, f"reflection LM: {e}") from None
