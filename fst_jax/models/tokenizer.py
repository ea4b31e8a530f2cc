"""Tokenizers without torch: from an HF checkpoint dir, or rebuilt from GGUF metadata.

transformers can read a GGUF tokenizer only with torch installed, and the package must never
import torch, so `tokenizer_from_gguf` rebuilds the byte-level BPE itself from the file's vocab,
merges, token types, special ids and chat template, splitting text the way llama.cpp does for the
file's `tokenizer.ggml.pre` type. Tests check it against transformers' own GGUF loader.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from fst_jax.models.hf import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# GGUF token types (llama.cpp `llama_token_type`).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer split regexes per `tokenizer.ggml.pre` (llama.cpp's table). The GPT-2 split of
# `ByteLevel(use_regex=True)` is the default for types not listed here.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_GPT2_PRE_TYPES = ("default", "gpt2", "smollm", "starcoder", "refact", "gpt-2", None)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def tokenizer_from_gguf(reader: Any):
    """A `PreTrainedTokenizerFast` equivalent to the GGUF's byte-level BPE tokenizer.

    `reader` is a `gguf.GGUFReader`. Only `tokenizer.ggml.model == "gpt2"` (byte-level BPE, used
    by SmolLM2, Llama 3 and Qwen) is supported; sentencepiece GGUFs raise a clear error.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"GGUF tokenizer type {kind!r} is not supported (only byte-level BPE, 'gpt2'). "
            "Convert the model to an HF directory with its tokenizer.json instead."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise CheckpointError(
            "GGUF lacks tokenizer.ggml.tokens or tokenizer.ggml.merges; it carries no usable "
            "tokenizer. Use an HF directory with tokenizer.json."
        )
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())

    def respell(tok: str) -> str:  # tokens outside the byte alphabet are stored as raw text
        return tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))

    vocab = {respell(t): i for i, t in enumerate(tokens)}
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise CheckpointError(f"Malformed GGUF merge {m!r}; the file is corrupt.")
        pairs.append((a, b))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=pairs,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    pre = _field(reader, "tokenizer.ggml.pre")
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _GPT2_PRE_TYPES:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise CheckpointError(
            f"GGUF pre-tokenizer type {pre!r} is unknown to fst_jax; its text splitting cannot be "
            "reproduced. Use an HF directory with tokenizer.json instead."
        )
    tok.decoder = decoders.ByteLevel()

    def special(key: str) -> str | None:
        idx = _field(reader, f"tokenizer.ggml.{key}")
        return None if idx is None else tokens[int(idx)]

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special("bos_token_id"),
        eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"),
        pad_token=special("padding_token_id"),
        add_prefix_space=False,
    )
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, types)
        if ty == _CONTROL and set(t) <= alphabet
    ]
    if control:
        hf.add_special_tokens(
            {"additional_special_tokens": control}, replace_extra_special_tokens=False
        )
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, types)
        if ty == _USER_DEFINED and t in vocab
    ]
    if user:
        hf.add_tokens(user)
    if len(hf) != len(tokens):
        raise CheckpointError(
            f"Rebuilt GGUF tokenizer has {len(hf)} tokens but the file lists {len(tokens)}; "
            "the vocabulary is inconsistent (duplicate tokens?)."
        )
    template = _field(reader, "tokenizer.chat_template")
    if template:
        hf.chat_template = template
    return hf


def load_tokenizer_dir(path: str):
    """The tokenizer (and chat template) saved in an HF checkpoint dir, loaded without torch."""
    from transformers import PreTrainedTokenizerFast

    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise CheckpointError(
            f"{path} has no tokenizer.json. Save one there with `tokenizer.save_pretrained(dir)` "
            "(or pass require_tokenizer=False to load weights only)."
        )
    try:
        # Not AutoTokenizer: it resolves the class through transformers' config machinery, which
        # imports torch when installed. tokenizer.json fully defines a fast tokenizer.
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    except Exception as e:  # transformers raises many types for broken tokenizer files
        raise CheckpointError(
            f"Could not load the tokenizer in {path} ({type(e).__name__}: {e}); the tokenizer "
            "files are corrupt. Re-save them with `tokenizer.save_pretrained(dir)`."
        ) from e
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise CheckpointError(
            f"{path}: got a {type(tok).__name__}, not a fast (tokenizers-backed) tokenizer; "
            "fst_jax needs tokenizer.json."
        )
    return tok
