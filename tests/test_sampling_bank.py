"""Prompt bank: on-device composition equals the chat template's own tokenisation; bad input."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chat_oracle import chat_template_ids

from fst_jax.models import get_config, init_params
from fst_jax.sampling import (
    Sampler,
    SamplingParams,
    build_bank,
    compose_prompts,
)

CONTEXTS = [
    "You are a careful mathematician. Show your work.",
    "Answer in one word.",
    "Rules:\n1. Be concise.\n2. Use SI units.\n",
]
TASKS = ["What is 17+25?", "Name the capital of France.", "Convert 3 km to m.\nThen add 5."]


def _compose(bank, sampler, idx, tasks):
    tt = sampler.encode_tasks(bank, tasks)
    toks, pos, lens = compose_prompts(
        bank.table,
        bank.lengths,
        bank.suffix,
        bank.suffix_length,
        jnp.asarray(idx, jnp.int32),
        jnp.asarray(tt.tokens),
        jnp.asarray(tt.lengths),
        bank.layout.pad_id,
    )
    return np.asarray(toks), np.asarray(pos), np.asarray(lens)


@pytest.fixture(scope="module")
def sampler(tok):
    return Sampler(get_config("tiny_llama"), tok)


@pytest.mark.parametrize("mode", ["system", "user"])
def test_composed_prompts_equal_chat_template_tokenisation(tok, sampler, mode):
    bank = build_bank(tok, CONTEXTS, max_prompts=5, max_len=96, mode=mode)
    idx = [0, 1, 2, bank.no_context, 2, 0]
    tasks = [*TASKS, TASKS[0], TASKS[1], TASKS[2]]
    toks, pos, lens = _compose(bank, sampler, idx, tasks)
    for b, (i, task) in enumerate(zip(idx, tasks)):
        context = None if i == bank.no_context else CONTEXTS[i]
        ref = chat_template_ids(tok, context, task, mode)
        assert lens[b] == len(ref)
        assert toks[b, : lens[b]].tolist() == ref
        assert pos[b, : lens[b]].tolist() == list(range(len(ref)))
        assert (pos[b, lens[b] :] == -1).all()
        assert (toks[b, lens[b] :] == tok.pad_token_id).all()
    # The no-context row is the template without a system message (here: its default one).
    no_ctx = toks[3, : lens[3]].tolist()
    assert tok.decode(no_ctx).startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_update_rewrites_contents_not_shape(tok):
    bank = build_bank(tok, CONTEXTS[:1], max_prompts=4, max_len=64)
    new = bank.with_contexts(["Short.", None, "Another one."])
    assert new.table.shape == bank.table.shape == (5, 64)
    assert new.suffix.shape == bank.suffix.shape
    assert new.texts == ("Short.", None, "Another one.", None)
    assert np.asarray(new.lengths)[1] == 0 and np.asarray(new.lengths)[3] == 0
    assert np.asarray(new.lengths)[4] == np.asarray(bank.lengths)[4]  # no-context row unchanged


def test_bank_errors(tok):
    with pytest.raises(ValueError, match=r"context 1 .*Answer in one word.*max_len=20"):
        build_bank(tok, ["ok", CONTEXTS[1] * 3], max_prompts=2, max_len=20)
    with pytest.raises(ValueError, match="do not fit a bank of max_prompts=2"):
        build_bank(tok, CONTEXTS, max_prompts=2, max_len=128)
    with pytest.raises(ValueError, match="no-context row"):
        build_bank(tok, [], max_prompts=1, max_len=4)
    with pytest.raises(ValueError, match="mode="):
        build_bank(tok, [], max_prompts=1, max_len=64, mode="assistant")
    with pytest.raises(ValueError, match="not one string"):
        build_bank(tok, "a single string", max_prompts=4, max_len=64)
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        build_bank(bare, [], max_prompts=1, max_len=64)


def test_index_and_task_errors(tok, sampler):
    bank = build_bank(tok, CONTEXTS[:2], max_prompts=4, max_len=64)
    with pytest.raises(ValueError, match=r"outside the bank: valid are 0..3 .* 4 \(no context\)"):
        bank.validate_indices([0, 5])
    with pytest.raises(ValueError, match="outside the bank"):
        bank.validate_indices([-1])
    with pytest.raises(ValueError, match=r"unfilled bank slots; fill them"):
        bank.validate_indices([0, 3])
    with pytest.raises(ValueError, match="1-D integer"):
        bank.validate_indices(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="Empty or non-string task"):
        sampler.encode_tasks(bank, ["fine", ""])
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        Sampler(get_config("tiny_llama"), tok, task_buckets=(8,)).encode_tasks(
            bank, ["a task far longer than eight tokens"]
        )


def test_sample_input_errors_before_device_work(tok, sampler):
    cfg = get_config("tiny_llama")
    params = init_params(cfg, jax.random.PRNGKey(0))
    bank = build_bank(tok, CONTEXTS[:2], max_prompts=4, max_len=64)
    key, sp = jax.random.PRNGKey(0), SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match=r"Inconsistent batch: 3 prompt indices, 2 task rows"):
        sampler.sample(params, bank, [0, 1, 0], TASKS[:2], key, sp)
    with pytest.raises(ValueError, match="row_ids must be int"):
        sampler.sample(params, bank, [0, 1], TASKS[:2], key, sp, row_ids=[0])
    with pytest.raises(ValueError, match="outside the bank"):
        sampler.sample(params, bank, [0, 9], TASKS[:2], key, sp)
    other = copy.deepcopy(tok)
    other.chat_template = tok.chat_template.replace("helpful", "harmless")
    other_bank = build_bank(other, CONTEXTS[:2], max_prompts=4, max_len=64)
    with pytest.raises(ValueError, match="different tokenizer/chat template"):
        sampler.sample(params, other_bank, [0, 1], TASKS[:2], key, sp)
    foreign = Sampler(cfg, other).encode_tasks(other_bank, TASKS[:2])
    with pytest.raises(ValueError, match="Task tokens were encoded with a different tokenizer"):
        sampler.sample(params, bank, [0, 1], foreign, key, sp)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        sampler.sample(params, bank, [0, 1], TASKS[:2], key, sp.replace(max_new_tokens=5000))
    with pytest.raises(ValueError, match="vocab_size=16"):
        Sampler(cfg.replace(vocab_size=16), tok)
    with pytest.raises(ValueError, match="temperature=0"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
