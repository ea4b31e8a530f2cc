"""SFT data: chat rows from JSONL / HF datasets / a registered generator, assistant-token masks,
and a deterministic length-bucketed batch plan.

Why the mask is built this way: the loss must cover exactly the tokens the model will have to
produce at sampling time — each assistant turn's content and its end-of-turn token — under the
model's own chat template. We render the conversation prefix up to each assistant turn with
`add_generation_prompt=True` and the prefix including it; the tokens in between are that turn.
Both renderings must be token prefixes of the full conversation, which is checked, so a
template that rewrites earlier turns fails loudly instead of masking the wrong tokens.

Batches: each epoch is a seeded permutation, cut into windows of `window` batches; inside a
window examples are sorted by length (bucketing by real length: little padding) and the
batches are shuffled again. The batch of step s is a pure function of (seed, s), so a resumed
run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fst_jax.rl.batch import RLBatch

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_GENERATORS: dict[str, Callable[..., list[dict]]] = {}


def register_generator(
    name: str,
) -> Callable[[Callable[..., list[dict]]], Callable[..., list[dict]]]:
    """Register `fn(split, n, seed, **kwargs) -> [{"messages": [...]}, ...]` as SFT data `name`."""

    def deco(fn: Callable[..., list[dict]]) -> Callable[..., list[dict]]:
        _GENERATORS[name] = fn
        return fn

    return deco


def list_generators() -> list[str]:
    _builtin()
    return sorted(_GENERATORS)


def _builtin() -> None:
    if "context_following" not in _GENERATORS:
        from fst_jax.tasks import demos

        register_generator("context_following")(demos.context_following)


def check_messages(msgs: Any, where: str) -> list[dict[str, str]]:
    """A chat row's messages, or a ValueError naming the row and what is wrong."""
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"{where}: message {i} needs a role in {ROLES}; got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} ({m['role']}) has no string 'content'")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError(f"{where}: no assistant turn, so there is nothing to train on")
    if msgs[0]["role"] == "assistant":
        raise ValueError(f"{where}: starts with an assistant turn; give the prompt before it")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _held_out(msgs: list[dict[str, str]], fraction: float) -> bool:
    """Validation membership by a hash of the non-assistant text (stable, disjoint)."""
    key = "\x00".join(m["content"] for m in msgs if m["role"] != "assistant")
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10_000 < fraction * 10_000


def load_conversations(
    data: str,
    split: str,
    *,
    kwargs: dict | None = None,
    messages_field: str = "messages",
    val_fraction: float = 0.05,
    hf_split: str = "train",
) -> list[list[dict[str, str]]]:
    """`data` = a registered generator name, a .jsonl/.json(.gz)/.parquet file, or ``hf:<id or dir>``.

    Files and HF datasets have no split of their own here: `val_fraction` of rows (by a hash of
    their prompt turns) is the validation split, the rest train. Generators split themselves.
    """
    from fst_jax.paths import read_jsonl
    from fst_jax.tasks.loaders import load_hf

    kwargs = dict(kwargs or {})
    if split not in ("train", "validation"):
        raise ValueError(f"SFT split {split!r}; use 'train' or 'validation'")
    _builtin()
    if data in _GENERATORS:
        rows = _GENERATORS[data](split=split, **kwargs)
        return [check_messages(r.get("messages"), f"{data} row {i}") for i, r in enumerate(rows)]
    if data.startswith("hf:"):
        ident = data[3:]
        if os.path.isdir(ident) and os.path.exists(os.path.join(ident, "dataset_info.json")):
            import datasets

            rows = [dict(r) for r in datasets.load_from_disk(ident)]
        elif os.path.isdir(ident) and os.path.exists(os.path.join(ident, "dataset_dict.json")):
            import datasets

            rows = [dict(r) for r in datasets.load_from_disk(ident)[hf_split]]
        else:
            rows = load_hf(ident, split=hf_split, **kwargs)
    elif os.path.exists(data):
        rows = (
            load_hf("parquet", split="train", data_files=data)
            if data.endswith(".parquet")
            else read_jsonl(data)
        )
    else:
        near = ", ".join(sorted(_GENERATORS))
        raise ValueError(
            f"sft.data={data!r} is not a file, not 'hf:<dataset id or saved dir>' and not a "
            f"registered generator ({near})"
        )
    out = []
    for i, r in enumerate(rows):
        if messages_field not in r:
            raise ValueError(
                f"{data} row {i}: no field {messages_field!r} (has {sorted(r)[:8]}); set "
                "sft.messages_field to the column holding the chat messages"
            )
        msgs = check_messages(r[messages_field], f"{data} row {i}")
        if _held_out(msgs, val_fraction) == (split == "validation"):
            out.append(msgs)
    return out


def encode_chat(tokenizer: Any, msgs: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(token ids int32[n], assistant mask f32[n]) under the tokenizer's chat template."""

    def ids(messages: list[dict[str, str]], gen: bool) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        return list(tokenizer.encode(text, add_special_tokens=False))

    full = ids(msgs, False)
    mask = np.zeros(len(full), np.float32)
    eos = tokenizer.eos_token_id
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(ids(msgs[:i], True))
        upto = ids(msgs[: i + 1], False)
        if full[: len(upto)] != upto or upto[:start] != full[:start]:
            raise ValueError(
                "the chat template renders an earlier turn differently once later turns follow; "
                "the assistant tokens cannot be located. Use a template that only appends."
            )
        end = len(upto)
        turn = upto[start:end]
        if eos is not None and eos in turn:  # content + end-of-turn; not the newline after it
            end = start + turn.index(eos) + 1
        mask[start:end] = 1.0
    return np.asarray(full, np.int32), mask


@dataclasses.dataclass
class Encoded:
    """Tokenised demonstrations; `dropped` counts rows longer than max_len (reported, not lost
    silently)."""

    tokens: list[np.ndarray]
    masks: list[np.ndarray]
    dropped: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray([len(t) for t in self.tokens], np.int64)

    def __len__(self) -> int:
        return len(self.tokens)


def encode_all(tokenizer: Any, convs: Sequence[list[dict[str, str]]], max_len: int) -> Encoded:
    toks, masks, dropped = [], [], 0
    for msgs in convs:
        t, m = encode_chat(tokenizer, msgs)
        if len(t) > max_len:
            dropped += 1
            continue
        if m.sum() == 0:
            continue  # an empty assistant turn that renders to nothing: nothing to learn
        toks.append(t)
        masks.append(m)
    if dropped:
        log.warning("SFT: %d of %d rows are longer than sft.max_len=%d tokens and are skipped",
                    dropped, len(convs), max_len)  # fmt: skip
    return Encoded(toks, masks, dropped)


def bucket_len(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(
        f"a batch needs {n} tokens but the largest sft.length_bucket is {max(buckets)}"
    )


class BatchPlan:
    """Step → row indices, a pure function of (seed, step); see the module docstring."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, window: int = 8) -> None:
        if len(lengths) == 0:
            raise ValueError("the SFT train split is empty")
        self.lengths, self.B, self.seed, self.window = lengths, batch_size, seed, window
        self.per_epoch = -(-len(lengths) // batch_size)
        self._cache: dict[int, list[np.ndarray]] = {}

    def _epoch(self, e: int) -> list[np.ndarray]:
        if e not in self._cache:
            rng = np.random.default_rng([self.seed, e])
            perm = rng.permutation(len(self.lengths))
            batches = []
            span = self.B * self.window
            for lo in range(0, len(perm), span):
                chunk = perm[lo : lo + span]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.B] for i in range(0, len(chunk), self.B)]
            order = rng.permutation(len(batches))
            self._cache = {e: [batches[i] for i in order]}
        return self._cache[e]

    def rows(self, step: int) -> np.ndarray:
        return self._epoch(step // self.per_epoch)[step % self.per_epoch]

    def epoch_of(self, step: int) -> float:
        return step / self.per_epoch


def make_batch(
    enc: Encoded, rows: Sequence[int], num_rows: int, buckets: Sequence[int], pad_id: int,
    *, weight: str = "token_mean",
) -> RLBatch:  # fmt: skip
    """Rows of `enc` → an RLBatch of `num_rows` rows (zero-weight padding rows) in the training
    layout: completion_mask = assistant tokens; row_weight = 1/(assistant tokens of the batch)
    ("token_mean": mean NLL of the step) or 1 per row ("sum": for validation sums)."""
    rows = list(rows)
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {num_rows}")
    S = bucket_len(max(len(enc.tokens[i]) for i in rows), buckets)
    tokens = np.full((num_rows, S), pad_id, np.int32)
    positions = np.full((num_rows, S), -1, np.int32)
    mask = np.zeros((num_rows, S), np.float32)
    for b, i in enumerate(rows):
        n = len(enc.tokens[i])
        tokens[b, :n] = enc.tokens[i]
        positions[b, :n] = np.arange(n)
        mask[b, :n] = enc.masks[i]
    total = mask.sum()
    w = np.zeros(num_rows, np.float32)
    w[: len(rows)] = 1.0 / max(total, 1.0) if weight == "token_mean" else 1.0
    zeros = np.zeros((num_rows, S), np.float32)
    return RLBatch(
        tokens=tokens, positions=positions, completion_mask=mask, old_logps=zeros,
        ref_logps=zeros, advantages=np.ones(num_rows, np.float32), row_weight=w,
        row_valid=np.ones(num_rows, np.float32), group_ids=np.arange(num_rows, dtype=np.int32),
    )  # fmt: skip
