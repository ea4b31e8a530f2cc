"""Random-weight models: the ``random:<named config>[,field=value...]`` model specs.

Production code uses these (``--config.model.spec=random:tiny_llama`` for CPU smoke runs, AOT
memory plans of a pod config without its weights, benchmarks), and so do the tests. A random
spec pairs the named config's freshly initialised weights with `tiny_tokenizer()`: a real
byte-level BPE tokenizer (no merges) with ChatML special tokens and a ChatML chat template,
small enough (vocab < 512) for the `tiny_*` configs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from fst_jax.errors import ConfigError
from fst_jax.registry import nearest

PREFIX = "random:"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A `transformers.PreTrainedTokenizerFast`: 256 byte tokens + 3 specials (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS),
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf


def parse_random_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``random:<name>[,field=value...]`` → (named config, typed ModelConfig overrides).

    Raises ConfigError naming the bad part (unknown config, unknown field, badly typed value).
    """
    from fst_jax.models.config import ModelConfig, named_configs

    name, *fields = (p.strip() for p in spec.removeprefix(PREFIX).split(","))
    if name.replace("-", "_") not in named_configs():
        near = nearest(name, named_configs())
        raise ConfigError(
            "unknown model config", "model.spec", spec,
            (f"did you mean {near!r}? " if near else "") + f"named configs: "
            f"{', '.join(named_configs())}",
        )  # fmt: skip
    types_ = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)
              if f.name != "name" and str(f.type) in ("int", "float", "bool", "str")}  # fmt: skip
    out: dict[str, Any] = {}
    bools = {"true": True, "1": True, "false": False, "0": False}
    for item in fields:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in types_:
            near = nearest(key, list(types_))
            raise ConfigError(
                f"{item!r} is not field=value of a ModelConfig field", "model.spec", spec,
                (f"did you mean {near!r}? " if near else "")
                + f"e.g. random:{name},max_position_embeddings=4096",
            )  # fmt: skip
        t = types_[key]
        try:
            conv = {"int": int, "float": float, "str": str, "bool": bools.__getitem__}[t]
            out[key] = conv(raw.lower() if t == "bool" else raw)
        except (ValueError, KeyError):
            raise ConfigError(f"model spec field {key}={raw!r} is not a valid {t}") from None
    return name, out


def random_model(spec: str, seed: int, **overrides: Any) -> tuple[Any, Any, Any]:
    """(ModelConfig, params, tiny tokenizer) of a ``random:`` spec; `overrides` (dtype, remat,
    ...) apply first, then the spec's own fields."""
    import jax

    from fst_jax.models.config import get_config
    from fst_jax.models.decoder import init_params

    name, fields = parse_random_spec(spec)
    config = get_config(name, **{**overrides, **fields})
    return config, init_params(config, jax.random.key(seed)), tiny_tokenizer()
