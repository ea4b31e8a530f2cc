"""The real embedded SmolLM2-135M-Instruct against transformers loading the same GGUF (torch).

One module-scoped load of each side. Our load goes through the embedded-model cache (built in a
temp `FST_JAX_CACHE`), so these tests also cover GGUF dequantisation, the Q/K un-permutation, the
torch-free tokenizer and the cache round trip.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from fst_jax.chat import greedy_tokens
from fst_jax.models import embedded as emb
from fst_jax.models import forward, get_config, init_cache, load
from fst_jax.models.gguf_loader import open_gguf
from fst_jax.models.tokenizer import tokenizer_from_gguf

pytestmark = pytest.mark.slow

MESSAGES = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 17+25? Answer with a number."},
]
STRINGS = [
    "Hello world",
    "  leading spaces and  double  gaps\t\ttabs",
    "line one\nline two\n\n\nthree blank\r\nwindows",
    "Unicode: héllo wörld — naïve café, 你好世界, こんにちは, Привет, 🙂🚀, ﬁ ligature",
    "digits 0 12 345 6789 3.14159 -42 1e-10 1,000,000 17+25=42",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nprint(f(3))",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>fst<file_sep>a.py<jupyter_code>",
    "It's we'll they're I'M DON'T",
    "",
    " ",
    "   \n \n  ",
    "tags <b>bold</b> & {json: [1, 2]} ~`!@#$%^*()_=|\\",
]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fst_cache"))
    old = os.environ.get("FST_JAX_CACHE")
    os.environ["FST_JAX_CACHE"] = root
    yield root
    if old is None:
        os.environ.pop("FST_JAX_CACHE")
    else:
        os.environ["FST_JAX_CACHE"] = old


@pytest.fixture(scope="module")
def ours(cache_root):
    return load("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ref():
    path = emb.smollm2_gguf_path()
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    return tok, model.eval()


def _jit_forward(config):
    return jax.jit(lambda p, t, pos=None, c=None: forward(config, p, t, pos, c))


def _prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_config_is_the_named_config(ours):
    config, params, _ = ours
    assert config == get_config("smollm2_135m")
    assert params["embed_tokens"]["embedding"].shape == (49152, 576)


def test_logits_match_transformers_gguf(ours, ref):
    config, params, tokenizer = ours
    ref_tok, model = ref
    ids = _prompt_ids(tokenizer)
    assert ids == _prompt_ids(ref_tok) and len(ids) > 30
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits.float().numpy()[0]
    got = np.asarray(_jit_forward(config)(params, jnp.asarray([ids], jnp.int32))[0])[0]
    assert np.abs(got - want).max() <= 1e-3
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_tokenizer_matches_transformers(ours, ref):
    _, _, cached_tok = ours
    ref_tok, _ = ref
    gguf_tok = tokenizer_from_gguf(open_gguf(emb.smollm2_gguf_path()))
    for tok in (gguf_tok, cached_tok):
        assert isinstance(tok, transformers.PreTrainedTokenizerFast)
        for s in STRINGS:
            ids = tok.encode(s, add_special_tokens=False)
            assert ids == ref_tok.encode(s, add_special_tokens=False), s
            assert tok.decode(ids) == ref_tok.decode(ids) == s
        for gen in (True, False):
            for msgs in (
                MESSAGES,
                MESSAGES[1:],
                [*MESSAGES, {"role": "assistant", "content": "42"}],
            ):
                kw = dict(tokenize=False, add_generation_prompt=gen)
                assert tok.apply_chat_template(msgs, **kw) == ref_tok.apply_chat_template(
                    msgs, **kw
                )
        assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
            ref_tok.eos_token_id,
            ref_tok.pad_token_id,
            ref_tok.bos_token_id,
        )
        assert len(tok) == len(ref_tok) == 49152


def test_kv_cache_prefill_then_decode_equals_full_forward(ours):
    config, params, tokenizer = ours
    ids = _prompt_ids(tokenizer)[:14]
    fwd = _jit_forward(config)
    full = np.asarray(fwd(params, jnp.asarray([ids, ids], jnp.int32))[0])
    # Row 0 prefills 10 tokens, row 1 only 7 (right-padded); then 4 one-token decode steps each.
    lens = [10, 7]
    block = np.zeros((2, 10), np.int32)
    pos = np.full((2, 10), -1, np.int32)
    for b, n in enumerate(lens):
        block[b, :n], pos[b, :n] = ids[:n], np.arange(n)
    cache = init_cache(config, 2, 16)
    logits, cache = fwd(params, jnp.asarray(block), jnp.asarray(pos), cache)
    for b, n in enumerate(lens):
        np.testing.assert_allclose(np.asarray(logits[b, :n]), full[b, :n], atol=1e-4, rtol=0)
    for step in range(4):
        tok = jnp.asarray([[ids[n + step]] for n in lens], jnp.int32)
        p = jnp.asarray([[n + step] for n in lens], jnp.int32)
        logits, cache = fwd(params, tok, p, cache)
        for b, n in enumerate(lens):
            np.testing.assert_allclose(
                np.asarray(logits[b, 0]), full[b, n + step], atol=1e-4, rtol=0
            )


def test_greedy_matches_transformers_generate(ours, ref):
    config, params, tokenizer = ours
    _, model = ref
    ids = _prompt_ids(tokenizer)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    want = out[0, len(ids) :].tolist()
    (got,) = greedy_tokens(config, params, tokenizer, [ids], max_new_tokens=12)
    assert got == want


def test_second_load_reuses_the_cache(ours, cache_root):
    """Rebuild-after-corruption is covered on a tiny GGUF in test_models_gguf.py."""
    path = emb.embedded_checkpoint_dir()
    assert path.startswith(cache_root) and emb.verify_cache(path) is None
    weights = os.path.join(path, "model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    _, params, _ = load("smollm2-135m-instruct")
    assert os.stat(weights).st_mtime_ns == stamp
    np.testing.assert_array_equal(
        np.asarray(params["layers_7"]["mlp"]["up_proj"]["kernel"]),
        np.asarray(ours[1]["layers_7"]["mlp"]["up_proj"]["kernel"]),
    )
