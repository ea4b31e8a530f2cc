"""The OpenAI chat-completions wire format: request validation, error bodies, response objects.

Every field a client sends is checked here, on the event loop, before anything reaches the
sampler thread: a bad request costs a 4xx with the body the `openai` client parses
(``{"error": {"message", "type", "param", "code"}}``), never a sampler call. Fields the server
does not implement (tools, logprobs, ...) are refused by name rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4
# Accepted and ignored: they change nothing a sampler could do differently here.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "logprobs": "log-probabilities",
    "top_logprobs": "log-probabilities", "logit_bias": "logit_bias", "response_format":
    "structured output", "audio": "audio output", "modalities": "audio output",
    "prediction": "predicted outputs", "reasoning_effort": "reasoning effort",
    "web_search_options": "web search",
}  # fmt: skip


class APIError(Exception):
    """An error answered with an OpenAI-style body; `status` is the HTTP code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated request; `max_tokens` None = as many as the model's context leaves."""

    model: str
    messages: list[dict[str, str]]
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        raise bad(f"'{key}' must be a number, got {v!r}", key)
    if not lo <= v <= hi:
        raise bad(f"'{key}' = {v} is out of range; it must be in [{lo}, {hi}]", key)
    return float(v)


def _integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{key}' must be an integer, got {v!r}", key)
    if not lo <= v <= hi:
        raise bad(f"'{key}' = {v} is out of range; it must be in [{lo}, {hi}]", key)
    return v


def _content(m: Any, i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text is understood
        parts = []
        for p in c:
            if (
                not isinstance(p, dict)
                or p.get("type") != "text"
                or not isinstance(p.get("text"), str)
            ):
                raise bad(
                    f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) "
                    "are supported",
                    f"messages[{i}].content",
                )
            parts.append(p["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}]")


def parse_chat(body: Any, *, max_n: int) -> ChatRequest:
    """A JSON body → ChatRequest, or an APIError naming the first problem."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    for key, what in UNSUPPORTED.items():
        if body.get(key) not in (None, False, [], {}):
            raise bad(f"'{key}' is not supported by fst-serve ({what}); remove it", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required: one of the names GET /v1/models lists", "model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list of {role, content} objects", "messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(
                f"messages[{i}] needs a role in {sorted(ROLES)}; got {m!r:.80}", f"messages[{i}]"
            )
        messages.append({"role": ROLES[m["role"]], "content": _content(m, i)})
    if messages[-1]["role"] == "assistant":
        raise bad("the last message must not be the assistant's (nothing to reply to)", "messages")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise bad(f"'stop' takes 1..{MAX_STOP} non-empty strings", "stop")
    max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 1 << 20)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("'stream' must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    for key in ("frequency_penalty", "presence_penalty"):
        if _number(body, key, 0.0, -2.0, 2.0) != 0.0:
            raise bad(f"'{key}' is not supported by fst-serve; send 0 or leave it out", key)
    return ChatRequest(
        model=model,
        messages=messages,
        n=_integer(body, "n", 1, max_n) or 1,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_top_p(body),
        max_tokens=max_tokens,
        stop=stops,
        seed=_integer(body, "seed", -(1 << 63), (1 << 63) - 1),
        stream=bool(stream),
        include_usage=bool(opts.get("include_usage", False)),
    )


def _top_p(body: dict[str, Any]) -> float:
    p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if p == 0.0:
        raise bad("'top_p' must be > 0 (1 disables nucleus sampling)", "top_p")
    return p


@dataclasses.dataclass
class Choice:
    """One finished completion: its text (cut at a stop string), per-token text pieces, reason."""

    text: str
    pieces: list[str]
    finish_reason: str
    completion_tokens: int


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def chat_response(
    cid: str, model: str, choices: list[Choice], prompt_tokens: int
) -> dict[str, Any]:
    done = sum(c.completion_tokens for c in choices)
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fst_jax",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, done),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk(cid: str, model: str, created: int, choices: list[dict[str, Any]], **extra: Any) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fst_jax",
        "choices": choices,
        **extra,
    }
