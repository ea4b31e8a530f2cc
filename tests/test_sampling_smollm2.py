"""The sampler on the real embedded SmolLM2-135M-Instruct against HF transformers (torch).

Peer: `transformers.AutoModelForCausalLM` reading the same weights (the embedded model's HF-style
cache dir) and its own `generate` (greedy). One module-scoped load of each side.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from chat_oracle import chat_template_ids

from fst_jax.models import load
from fst_jax.models.embedded import embedded_checkpoint_dir
from fst_jax.sampling import Sampler, SamplingParams, build_bank

pytestmark = pytest.mark.slow

CONTEXTS = [
    "You are a careful math tutor. Answer with a number.",
    "Reply in one short sentence.",
]
TASKS = [
    "What is 17+25?",
    "Name the largest planet in the solar system.",
    "Write a haiku about the sea.",
]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def ours():
    return load("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def hf_model():
    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        embedded_checkpoint_dir(), dtype=torch.float32
    )
    return model.eval()


@pytest.mark.parametrize("mode", ["system", "user"])
def test_bank_composition_matches_smollm2_template(ours, mode):
    _, _, tok = ours
    bank = build_bank(tok, CONTEXTS, max_prompts=4, max_len=64, mode=mode)
    sampler = Sampler(ours[0], tok)
    idx = [0, 1, bank.no_context]
    tasks = sampler.encode_tasks(bank, TASKS)
    table, lengths = np.asarray(bank.table), np.asarray(bank.lengths)
    suffix = np.asarray(bank.suffix)[: int(bank.suffix_length)].tolist()
    for i, t, n in zip(idx, tasks.tokens, tasks.lengths):
        composed = table[i, : lengths[i]].tolist() + t[:n].tolist() + suffix
        context = None if i == bank.no_context else CONTEXTS[i]
        assert composed == chat_template_ids(tok, context, TASKS[idx.index(i)], mode)
    # No context = the template's own default system prompt.
    assert "SmolLM" in tok.decode(table[bank.no_context, : lengths[bank.no_context]].tolist())
    # A task whose leading spaces would merge with the template text is refused, not silently re-tokenised.
    with pytest.raises(ValueError, match="starts with whitespace"):
        sampler.encode_tasks(bank, ["  What is 2+2?"])


def test_greedy_equals_hf_generate_64_tokens(ours, hf_model):
    config, params, tok = ours
    bank = build_bank(tok, CONTEXTS, max_prompts=4, max_len=64)
    idx = [0, 1, bank.no_context]
    sp = SamplingParams(greedy=True, max_new_tokens=NEW_TOKENS)
    r = Sampler(config, tok).sample(params, bank, idx, TASKS, jax.random.PRNGKey(0), sp)
    toks = np.asarray(r.tokens)
    for b, i in enumerate(idx):
        context = None if i == bank.no_context else CONTEXTS[i]
        ids = chat_template_ids(tok, context, TASKS[b], "system")
        p = int(r.prompt_lengths[b])
        assert toks[b, :p].tolist() == ids
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        want = out[0, len(ids) :].tolist()
        c = int(r.completion_lengths[b])
        assert r.completion_tokens[b, :c].tolist() == want, (b, r.texts[b])
        assert r.texts[b] == tok.decode(want, skip_special_tokens=True)
