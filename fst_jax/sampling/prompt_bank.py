"""The prompt bank: the fast weights (a population of context texts) as a device table.

A rollout row's prompt is three token segments glued on device (see `engine.compose_prompts`):

    prefix[prompt_idx]  = the chat template rendered up to where the task text starts, with the
                          row's context in the system turn (mode "system", default) or prepended
                          to the user turn (mode "user"); one row of the table [P_max + 1, Lp]
    task                = the user-turn text, tokenised once per task on the host
    suffix              = the template's constant tail (user close + assistant open)

The table is tokenised once per population update, from the template's own rendering, so the
composed ids equal `tokenizer.encode(apply_chat_template(...))` of the full conversation (checked
in tests, and the one text boundary that is tokenised separately — prefix|task — is probed for
every task before use). Its shape never changes: updating the population rewrites contents, so
nothing recompiles. The last row (`bank.no_context`) renders the template with no system message
(OOD evaluation "without prompt"); unfilled slots are rejected by `validate_indices`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

MODES = ("system", "user")
_TASK_SENTINEL = "FSTJAXTASKSENTINEL"
_PROBE_TEXT = "Hello, world! 12345 <|im_end|> \n\t naïve"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash identifying a tokenizer's vocabulary, specials and chat template."""
    h = hashlib.sha1()
    for part in (
        type(tokenizer).__name__,
        len(tokenizer),
        getattr(tokenizer, "chat_template", None),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.encode(_PROBE_TEXT, add_special_tokens=False),
    ):
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _snippet(text: str, n: int = 48) -> str:
    return repr(text[:n] + ("..." if len(text) > n else ""))


class ChatLayout:
    """How one tokenizer's chat template splits into prefix / task / suffix token segments."""

    def __init__(self, tokenizer: Any, mode: str = "system", separator: str = "\n\n") -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; use 'system' (context in the system turn) or 'user'")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "The tokenizer has no chat template; load an instruct model's tokenizer or set "
                "tokenizer.chat_template before building a prompt bank"
            )
        self.tokenizer = tokenizer
        self.mode = mode
        self.separator = separator
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self._sentinel_ids = self._encode(_TASK_SENTINEL)
        prefix, self.suffix_text = self._split(None)
        self.no_context_ids = self._prefix_ids(prefix, "the no-context prompt")
        self.suffix_ids = self._suffix_ids(self.suffix_text)
        # Texts that end a prefix right before the task; each task is probed against them.
        self._probes = [(prefix, self.no_context_ids)]
        if mode == "user":
            probe = self._split("Context.")[0]
            self._probes.append((probe, self._prefix_ids(probe, "a user-turn context")))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _split(self, context: str | None) -> tuple[str, str]:
        """Render with a sentinel task; return (text before the task, text after it)."""
        if context is None:
            messages = [{"role": "user", "content": _TASK_SENTINEL}]
        elif self.mode == "system":
            messages = [
                {"role": "system", "content": context},
                {"role": "user", "content": _TASK_SENTINEL},
            ]
        else:
            messages = [{"role": "user", "content": context + self.separator + _TASK_SENTINEL}]
        text = self._render(messages)
        if text.count(_TASK_SENTINEL) != 1:
            raise ValueError(
                "The chat template does not render the user content verbatim exactly once; "
                "this layout cannot split it into prefix/task/suffix segments"
            )
        before, after = text.split(_TASK_SENTINEL)
        return before, after

    def _prefix_ids(self, before: str, what: str) -> list[int]:
        """Ids of the text before the task, tokenised as followed by text (as in the template)."""
        ids, n = self._encode(before + _TASK_SENTINEL), len(self._sentinel_ids)
        if ids[len(ids) - n :] != self._sentinel_ids:
            raise ValueError(
                f"The template text before the task in {what} merges with the task's first "
                "characters when tokenised (it probably ends with a space); strip it"
            )
        return ids[: len(ids) - n]

    def _suffix_ids(self, after: str) -> list[int]:
        ids, n = self._encode(_TASK_SENTINEL + after), len(self._sentinel_ids)
        if ids[:n] != self._sentinel_ids:
            raise ValueError(
                "The chat template's text after the user turn merges with the task's last "
                "characters when tokenised; this template cannot be split into segments"
            )
        return ids[n:]

    def encode_context(self, context: str | None) -> list[int]:
        """Token ids of the template up to the task, with `context` (None = no context)."""
        if context is None:
            return list(self.no_context_ids)
        before, after = self._split(context)
        if after != self.suffix_text:
            raise ValueError(
                f"The chat template renders a different tail after the user turn for context "
                f"{_snippet(context)}; the prompt bank needs a content-independent tail"
            )
        return self._prefix_ids(before, f"context {_snippet(context)}")

    def encode_task(self, task: str) -> list[int]:
        """Token ids of one task's user-turn text; errors if it would tokenise differently in situ.

        Checked against the no-context prefix (and, in mode "user", a context prefix): the full
        rendering's ids must equal prefix ids + task ids + suffix ids.
        """
        if not isinstance(task, str) or not task:
            raise ValueError(
                f"Empty or non-string task {task!r}: every row needs a non-empty user-turn text"
            )
        ids = self._encode(task)
        # (No sentinel in front here: it can merge with the task's first characters, e.g.
        # "...SENTINEL" + "Lee", and flag valid tasks; the prefix side is probed below.)
        if self._encode(task + self.suffix_text) != ids + self.suffix_ids:
            raise ValueError(
                f"Task {_snippet(task)} merges with the chat template's closing tokens when "
                "tokenised in place; strip trailing whitespace from the task text"
            )
        for probe, probe_ids in self._probes:
            if self._encode(probe + task) != probe_ids + ids:
                raise ValueError(
                    f"Task {_snippet(task)} merges with the preceding template text when "
                    "tokenised in place (it probably starts with whitespace); strip it"
                )
        return ids


@dataclasses.dataclass(frozen=True, eq=False)
class PromptBank:
    """Device table of rendered prompt prefixes; row `no_context` (the last) has no context.

    table int32[P_max + 1, Lp] right-padded; lengths int32[P_max + 1] (0 = unfilled slot);
    suffix int32[max(Ls, 1)] with `suffix_length` valid entries. `texts[i]` is slot i's context
    (None = unfilled). Build with `build_bank`, update with `with_contexts`.
    """

    layout: ChatLayout
    table: jnp.ndarray
    lengths: jnp.ndarray
    suffix: jnp.ndarray
    suffix_length: jnp.ndarray
    lengths_host: np.ndarray
    texts: tuple[str | None, ...]

    def host_table(self) -> np.ndarray:
        """The table as a host array (read once per bank; the sampler slices contexts from it)."""
        cached = self.__dict__.get("_host_table")
        if cached is None:
            cached = np.asarray(self.table)
            object.__setattr__(self, "_host_table", cached)
        return cached

    @property
    def max_prompts(self) -> int:
        return len(self.texts)

    @property
    def max_len(self) -> int:
        return int(self.table.shape[1])

    @property
    def no_context(self) -> int:
        """Index of the row rendering the template with no context (the OOD "no prompt" row)."""
        return len(self.texts)

    @property
    def fingerprint(self) -> str:
        return self.layout.fingerprint

    def with_contexts(self, contexts: Sequence[str | None]) -> PromptBank:
        """Same shapes, new contents (None leaves a slot unfilled). Never recompiles."""
        return _fill(self.layout, contexts, self.max_prompts, self.max_len)

    def validate_indices(self, prompt_idx: Any) -> np.ndarray:
        """Host check: every index names a filled slot or `no_context`; returns int32 numpy."""
        idx = np.asarray(prompt_idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"prompt_idx must be a 1-D integer array [B], got shape {idx.shape} {idx.dtype}"
            )
        bad = (idx < 0) | (idx > self.no_context)
        if bad.any():
            raise ValueError(
                f"prompt_idx {idx[bad][:8].tolist()} outside the bank: valid are 0.."
                f"{self.no_context - 1} (filled slots) and {self.no_context} (no context)"
            )
        empty = (self.lengths_host[idx] == 0) & (idx != self.no_context)
        if empty.any():
            raise ValueError(
                f"prompt_idx {idx[empty][:8].tolist()} point at unfilled bank slots; fill them "
                f"with `bank.with_contexts(...)` or use bank.no_context={self.no_context}"
            )
        return idx.astype(np.int32)


def _fill(
    layout: ChatLayout, contexts: Sequence[str | None], max_prompts: int, max_len: int
) -> PromptBank:
    if isinstance(contexts, str):
        raise ValueError("contexts must be a sequence of strings, not one string")
    contexts = list(contexts)
    if len(contexts) > max_prompts:
        raise ValueError(
            f"{len(contexts)} contexts do not fit a bank of max_prompts={max_prompts}; build the "
            "bank with a larger max_prompts (its shape is fixed so updates never recompile)"
        )
    rows = [layout.encode_context(c) if c is not None else [] for c in contexts]
    rows += [[]] * (max_prompts - len(rows))
    rows.append(list(layout.no_context_ids))
    for i, ids in enumerate(rows):
        if len(ids) > max_len:
            what = "the no-context row" if i == max_prompts else f"context {i}"
            text = "" if i == max_prompts else " " + _snippet(contexts[i])
            raise ValueError(
                f"Prompt bank {what}{text} renders to {len(ids)} tokens > max_len={max_len}; "
                "shorten the context or build the bank with a larger max_len"
            )
    table = np.full((max_prompts + 1, max_len), layout.pad_id, np.int32)
    lengths = np.zeros((max_prompts + 1,), np.int32)
    for i, ids in enumerate(rows):
        table[i, : len(ids)] = ids
        lengths[i] = len(ids)
    suffix = np.full((max(len(layout.suffix_ids), 1),), layout.pad_id, np.int32)
    suffix[: len(layout.suffix_ids)] = layout.suffix_ids
    texts = tuple(contexts) + (None,) * (max_prompts - len(contexts))
    return PromptBank(
        layout=layout,
        table=jnp.asarray(table),
        lengths=jnp.asarray(lengths),
        suffix=jnp.asarray(suffix),
        suffix_length=jnp.asarray(len(layout.suffix_ids), jnp.int32),
        lengths_host=lengths,
        texts=texts,
    )


def build_bank(
    tokenizer: Any,
    contexts: Sequence[str | None] = (),
    *,
    max_prompts: int,
    max_len: int,
    mode: str = "system",
    separator: str = "\n\n",
) -> PromptBank:
    """Tokenise `contexts` into a fixed [max_prompts + 1, max_len] table (+ the no-context row).

    mode "system" puts each context in the system turn; "user" prepends it (plus `separator`) to
    the user turn. Texts that do not fit raise an error naming the prompt and the limit.
    """
    if max_prompts < 0 or max_len < 1:
        raise ValueError(f"max_prompts={max_prompts} must be >= 0 and max_len={max_len} >= 1")
    return _fill(ChatLayout(tokenizer, mode, separator), contexts, max_prompts, max_len)


def raw_bank(tokenizer: Any) -> PromptBank:
    """A bank whose only row is empty, with no suffix: the task tokens ARE the whole prompt.

    Used by `generate_chat`, where whole conversations are rendered by the template on the host.
    """
    layout = _RawLayout(tokenizer)
    return PromptBank(
        layout=layout,  # type: ignore[arg-type]
        table=jnp.full((1, 1), layout.pad_id, jnp.int32),
        lengths=jnp.zeros((1,), jnp.int32),
        suffix=jnp.full((1,), layout.pad_id, jnp.int32),
        suffix_length=jnp.zeros((), jnp.int32),
        lengths_host=np.zeros((1,), np.int32),
        texts=(),
    )


class _RawLayout:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    def encode_task(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text:
            raise ValueError(f"Empty or non-string prompt {text!r}")
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def spread_contexts(group_size: int, num_contexts: int) -> np.ndarray:
    """Context slot of each of a problem's G rollouts, spread as evenly as possible: int32[G].

    Context j (0 = highest ranked) gets ``G // n`` rollouts, plus one for the first ``G % n``
    contexts, so counts differ by at most one and higher-ranked contexts never get fewer. Slots
    are contiguous (``[0, 0, 1, 1, 2, 2, ...]``). Holds for every ``1 <= n <= G``: early cycles
    export fewer than K contexts, and the split must stay even then too (paper §1.3: "population
    mixed within group", G/K each).
    """
    g, n = int(group_size), int(num_contexts)
    if not 1 <= n <= g:
        raise ValueError(
            f"cannot spread G={g} rollouts over {n} contexts: need 1 <= contexts <= G "
            "(lower gepa.k or raise rl.group_size)"
        )
    counts = np.full(n, g // n, np.int64)
    counts[: g % n] += 1
    return np.repeat(np.arange(n, dtype=np.int32), counts)
