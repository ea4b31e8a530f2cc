"""Reflective mutation: the meta-prompt, reply extraction, reflection-LM backends and their registry.

A reflection LM turns (current context, examples with rollouts and verifier feedback) into an
edited context. Backends are chosen by name (`openai`, `local`, `rule`). The `Reflector` owns the policy
around a backend: a request-keyed reply cache kept in the population state (a resumed run never
pays twice; bounded in entries and characters per entry), content checks (empty / unfenced /
truncated / over-long / identical replies are retried with a corrective follow-up, then the
proposal is skipped and counted), and multi-host lockstep (only the leader calls the LM; the
outcome is broadcast). A backend reports every failure of a call as `ReflectionLMError(reason)`
(the `openai` backend maps all of its own, see `openai_lm`); that is a counted skip
(`lm_<reason>`), never an exception out of the round.
A reply is data: it is only ever parsed as text, never executed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fst_jax.gepa.lm import LMReply, LocalReflectionLM, ReflectionLM, ReflectionLMError
from fst_jax.gepa.multihost import Lockstep
from fst_jax.registry import Registry

FENCE = "```"
PLACEHOLDERS = ("<curr_param>", "<side_info>", "<edit_request>")
EDIT_MODES = ("incremental", "rewrite")


def _prompt_file(name: str) -> str:
    return (
        importlib.resources.files("fst_jax.gepa")
        .joinpath("prompts", name)
        .read_text(encoding="utf-8")
    )


def load_template(path: str | None = None) -> str:
    """The meta-prompt template: our packaged `prompts/reflection.md`, or a user file."""
    if path is None:
        text = _prompt_file("reflection.md")
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ValueError(
            f"reflection template {path or 'reflection.md'} lacks placeholder(s) {missing}; it must contain "
            f"{', '.join(PLACEHOLDERS)} (see fst_jax/gepa/prompts/reflection.md)."
        )
    return text


def _render_value(value: Any, level: int) -> str:
    if isinstance(value, Mapping):
        return (
            "".join(
                f"{'#' * level} {k}\n{_render_value(v, min(level + 1, 6))}"
                for k, v in value.items()
            )
            or "\n"
        )
    if isinstance(value, list | tuple):
        parts = [
            f"{'#' * level} Item {i + 1}\n{_render_value(v, min(level + 1, 6))}"
            for i, v in enumerate(value)
        ]
        return "".join(parts) or "\n"
    return f"{str(value).strip()}\n\n"


def render_records(records: Sequence[Mapping[str, Any]]) -> str:
    """Examples as Markdown (`# Example n`, `## <key>`, nested headers), as GEPA renders them."""
    out = []
    for n, rec in enumerate(records, 1):
        out.append(
            f"# Example {n}\n" + "".join(f"## {k}\n{_render_value(v, 3)}" for k, v in rec.items())
        )
    return "\n\n".join(out)


def render_meta_prompt(
    current: str,
    records: Sequence[Mapping[str, Any]],
    *,
    edit_mode: str = "incremental",
    template: str | None = None,
) -> str:
    if edit_mode not in EDIT_MODES:
        raise ValueError(f"edit_mode must be one of {EDIT_MODES}, got {edit_mode!r}.")
    template = template if template is not None else load_template()
    edit = _prompt_file(f"edit_{edit_mode}.md").strip()
    # Substitute the examples last so text inside them is never mistaken for a placeholder.
    return (
        template.replace("<edit_request>", edit)
        .replace("<curr_param>", current)
        .replace("<side_info>", render_records(records))
    )


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_LANG_TAG = re.compile(r"^[^\s`]*\n")


def extract_context(
    reply: str | None, *, require_fence: bool = True
) -> tuple[str | None, str | None]:
    """(new context, None) or (None, fault) where fault is 'empty' or 'unfenced'.

    Takes the text between the first and the last ``` (so fences inside the context survive),
    drops a language tag on the opening line, and ignores <think> sections. With
    `require_fence=False` (small local models rarely fence) an unfenced reply is taken whole, as
    the `gepa` package's fallback does.
    """
    if reply is None or not reply.strip():
        return None, "empty"
    text = _THINK.sub("", reply)
    start, end = text.find(FENCE), text.rfind(FENCE)
    if start < 0 or end <= start:
        if require_fence:
            return None, "unfenced"
        body = text.strip()
        if body.startswith(FENCE):  # an opening fence that was never closed
            body = body[len(FENCE) :]
            m = _LANG_TAG.match(body)
            body = body[m.end() :] if m else body
        body = body.removesuffix(FENCE)
    else:
        body = text[start + len(FENCE) : end]
        m = _LANG_TAG.match(body)
        if m:
            body = body[m.end() :]
    body = body.strip()
    return (body, None) if body else (None, "empty")


# ---------------------------------------------------------------------------------------------
# Backends.


_REGISTRY: Registry[Callable[..., ReflectionLM]] = Registry("reflection LM")


def register_reflection_lm(
    name: str,
) -> Callable[[Callable[..., ReflectionLM]], Callable[..., ReflectionLM]]:
    return _REGISTRY.register(name)


def get_reflection_lm(name: str, **kwargs: Any) -> ReflectionLM:
    """Build a registered backend by name (`openai`, `local`, or one you registered)."""
    return _REGISTRY.get(name)(**kwargs)


def list_reflection_lms() -> list[str]:
    return _REGISTRY.names()


@register_reflection_lm("openai")
def _make_openai(**kwargs: Any) -> ReflectionLM:
    """An OpenAI-compatible endpoint (`openai_lm`; imported on use, it pulls in the client)."""
    from fst_jax.gepa.openai_lm import OpenAIReflectionLM

    return OpenAIReflectionLM(**kwargs)


@register_reflection_lm("local")
def _make_local(
    generate: Callable[..., list[str]] | None = None, *, name: str = "local", **sampler_kwargs: Any
):
    """`local` by name wraps a `generate` callable; a model-backed one is built above this
    package (GEPA stays free of JAX): `fst_jax.chat.local_reflection_lm(spec=...)`."""
    if generate is None:
        raise TypeError(
            "get_reflection_lm('local') needs generate=<callable(conversations) -> replies>; for "
            "a local model use fst_jax.chat.local_reflection_lm(spec='smollm2-135m-instruct', "
            f"...) (got {sorted(sampler_kwargs)})"
        )
    return LocalReflectionLM(generate, name=name)


@register_reflection_lm("rule")
def _make_rule(**kwargs: Any) -> ReflectionLM:
    """Deterministic rule-based stand-in for a strong reflector (`rule_lm`): format rule + one
    worked example, both copied from the request's feedback. Never the paper's setting."""
    from fst_jax.gepa.rule_lm import RuleReflectionLM

    return RuleReflectionLM(**kwargs)


# ---------------------------------------------------------------------------------------------
# The Reflector: cache + content policy + lockstep around a backend.


@dataclasses.dataclass(frozen=True)
class ProposalOutcome:
    text: str | None
    skip_reason: str | None
    attempts: int
    cache_hits: int
    raw_replies: tuple[str, ...] = ()


def request_key(fingerprint: str, messages: Sequence[Mapping[str, str]], salt: str = "") -> str:
    """Cache key of one request. `salt` names the request's place in the run (round, iteration), so
    asking the same question at a later iteration samples afresh, while replaying it hits the cache."""
    blob = json.dumps(
        [fingerprint, salt, [dict(m) for m in messages]], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_USAGE_KEYS = ("requests", "retries", "prompt_tokens", "completion_tokens")


class Reflector:
    """Proposes an edited context for a parent from its reflective records."""

    def __init__(
        self,
        lm: ReflectionLM | None,
        *,
        edit_mode: str = "incremental",
        template: str | None = None,
        max_context_chars: int = 8000,
        content_retries: int = 1,
        lockstep: Lockstep | None = None,
        cache_path: str | None = None,
        require_fence: bool = True,
        max_cache_entries: int = 1024,
        max_cached_reply_chars: int | None = None,
    ) -> None:
        self.lockstep = lockstep or Lockstep()
        if lm is None and self.lockstep.is_leader:
            raise ValueError("process 0 needs a reflection LM; pass one (see get_reflection_lm).")
        if content_retries < 0 or max_context_chars < 1 or max_cache_entries < 1:
            raise ValueError(
                "content_retries must be >= 0, max_context_chars >= 1 and max_cache_entries >= 1."
            )
        # Bounds on the reply cache that lives in the population state (and so in every
        # checkpoint): at most `max_cache_entries` entries, none longer than this many characters.
        self.max_cache_entries = max_cache_entries
        self.max_cached_reply_chars = max_cached_reply_chars or max_context_chars + 2000
        if edit_mode not in EDIT_MODES:
            raise ValueError(f"edit_mode must be one of {EDIT_MODES}, got {edit_mode!r}.")
        self.lm = lm
        self.edit_mode = edit_mode
        self.template = template if template is not None else load_template()
        self.max_context_chars = max_context_chars
        self.content_retries = content_retries
        self.require_fence = require_fence
        self._retry_note = _prompt_file("retry.md").strip()
        # Optional write-through JSONL copy of the reply cache (leader only): survives a crash that
        # loses the in-memory state between checkpoints, so a restarted run replays for free.
        self.cache_path = cache_path
        self._file_cache: dict[str, dict[str, Any]] = {}
        if cache_path is not None and getattr(lm, "collective", False):
            raise ValueError(
                "cache_path is for remote reflection LMs; a collective (local sampler) backend must make the "
                "same calls on every process, so it can only use the in-state cache. Drop cache_path."
            )
        if cache_path is not None and self.lockstep.is_leader and os.path.exists(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        try:
                            rec = json.loads(line)
                            self._file_cache[rec["key"]] = rec["entry"]
                        except (ValueError, KeyError, TypeError):
                            continue  # a line cut by a crash mid-write: that reply is re-asked
                self._file_cache = _bounded(self._file_cache, self.max_cache_entries)

    def _remember(self, key: str, entry: dict[str, Any]) -> None:
        self._file_cache[key] = entry
        self._file_cache = _bounded(self._file_cache, self.max_cache_entries)
        if self.cache_path is not None:
            with open(self.cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "entry": entry}, ensure_ascii=False) + "\n")

    def _check(self, entry: Mapping[str, Any], parent: str) -> tuple[str | None, str | None]:
        if entry.get("fault"):  # stored verdict of a clipped, rejected reply (see _entry)
            return None, str(entry["fault"])
        if entry.get("finish_reason") == "length":  # cut at the reply cap: never a whole context
            return None, "truncated"
        text, fault = extract_context(entry.get("text"), require_fence=self.require_fence)
        if fault is None and len(text) > self.max_context_chars:
            fault = "too_long"
        if fault is None and text.strip() == parent.strip():
            fault = "identical"
        return (text, None) if fault is None else (None, fault)

    def _entry(self, reply: LMReply, parent: str, state_round: int) -> dict[str, Any]:
        """The cache entry of a reply, at most `max_cached_reply_chars` long and replayable: a
        usable reply keeps its text, or just its fenced context when the reply is longer; a
        rejected one keeps its verdict and a clipped text (the corrective follow-up quotes that
        same clipped text, so a replay builds the same next request)."""
        entry: dict[str, Any] = {
            "text": reply.text,
            "finish_reason": reply.finish_reason,
            "round": int(state_round),
        }
        text, fault = self._check(entry, parent)
        cap = self.max_cached_reply_chars
        if fault is None and len(reply.text or "") > cap:
            entry["text"] = f"{FENCE}\n{text}\n{FENCE}"
        elif fault is not None:
            entry["fault"] = fault
            if reply.text is not None and len(reply.text) > cap:
                entry["text"] = reply.text[:cap] + "\n[... reply clipped ...]"
        return entry

    def _leader_propose(
        self, cache: Mapping[str, Any], state_round: int, salt: str, parent: str, records
    ):
        messages = [
            {
                "role": "user",
                "content": render_meta_prompt(
                    parent, records, edit_mode=self.edit_mode, template=self.template
                ),
            }
        ]
        new_cache: dict[str, dict[str, Any]] = {}
        before = dict(self.lm.usage)
        hits, raws, fault, text = 0, [], None, None
        attempts = 0
        for _ in range(self.content_retries + 1):
            attempts += 1
            key = request_key(self.lm.fingerprint(), messages, salt)
            entry = cache.get(key) or new_cache.get(key) or self._file_cache.get(key)
            if entry is not None:
                hits += 1
            else:
                try:
                    reply = self.lm.complete(messages)
                except ReflectionLMError as e:
                    fault = f"lm_{e.reason}"
                    break
                if not isinstance(reply, LMReply) or not (
                    reply.text is None or isinstance(reply.text, str)
                ):  # a backend that breaks its contract is a bug, not a fault of one proposal
                    raise TypeError(f"complete() returned {reply!r:.200}, not an LMReply")
                entry = self._entry(reply, parent, state_round)
                self._remember(key, entry)
            new_cache[key] = entry
            raws.append(entry.get("text") or "")
            text, fault = self._check(entry, parent)
            if fault is None:
                break
            why = _FAULT_WORDS.get(fault, "the reply could not be used").format(
                limit=self.max_context_chars
            )
            note = self._retry_note.replace("<reason>", why)
            messages = [
                *messages,
                {"role": "assistant", "content": entry.get("text") or ""},
                {"role": "user", "content": note},
            ]
        # Every counter the backend keeps (requests, retries, tokens, fault_<reason>) as a delta.
        usage = {
            k: self.lm.usage.get(k, 0) - before.get(k, 0) for k in {*_USAGE_KEYS, *self.lm.usage}
        }
        usage = {k: v for k, v in sorted(usage.items()) if v or k in _USAGE_KEYS}
        usage["cache_hits"] = hits
        outcome = {
            "text": text,
            "skip_reason": fault,
            "attempts": attempts,
            "cache_hits": hits,
            "raw": raws,
        }
        return {"outcome": outcome, "new_cache": new_cache, "usage": usage}

    def propose(
        self, state: Any, parent: str, records: Sequence[Mapping[str, Any]], *, salt: str = ""
    ) -> ProposalOutcome:
        """Lockstep-safe: every process returns the same outcome and applies the same state update."""
        # A collective backend (sharded local sampler) must run on every process; others only on 0.
        runs_here = self.lockstep.is_leader or getattr(self.lm, "collective", False)
        payload = (
            self._leader_propose(state.lm_cache, state.rounds, salt, parent, records)
            if runs_here
            else None
        )
        payload = self.lockstep.broadcast(payload if self.lockstep.is_leader else None)
        state.lm_cache.update(payload["new_cache"])
        state.lm_cache = _bounded(state.lm_cache, self.max_cache_entries)
        for k, v in payload["usage"].items():
            state.bump(f"lm_{k}", int(v))
        o = payload["outcome"]
        return ProposalOutcome(
            o["text"], o["skip_reason"], o["attempts"], o["cache_hits"], tuple(o["raw"])
        )


def _bounded(cache: dict[str, Any], n: int) -> dict[str, Any]:
    """The newest `n` entries (insertion order, the same on every process)."""
    return cache if len(cache) <= n else dict(list(cache.items())[-n:])


_FAULT_WORDS = {
    "empty": "the reply was empty",
    "unfenced": "the new context was not inside a ``` block",
    "truncated": "the reply was cut off at the length limit",
    "too_long": "the new context was longer than the {limit}-character limit",
    "identical": "the new context was identical to the current one",
}
