"""Kernel layouts: "out_in" params (the CPU sampler's) compute what "in_out" params compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fst_jax.models import get_config, init_params, save_hf
from fst_jax.models.decoder import forward, param_shapes, to_kernel_layout
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.sampling import Sampler, SamplingParams, build_bank


@pytest.mark.parametrize(
    "name,scan,tie",
    [  # one case in the fast tier; the other families' layouts in the slow one
        ("tiny_llama", False, False),
        pytest.param("tiny_qwen2", True, True, marks=pytest.mark.slow),
        pytest.param("tiny_qwen3", True, False, marks=pytest.mark.slow),
    ],
)
def test_out_in_forward_equals_in_out(name, scan, tie):
    cfg = get_config(name, scan_layers=scan, tie_word_embeddings=tie)
    params = init_params(cfg, jax.random.PRNGKey(0))
    cfg2, p2 = to_kernel_layout(cfg, params, "out_in")
    assert cfg2.kernel_layout == "out_in"
    # The re-laid-out tree has exactly the shapes an out_in model initialises with.
    want = jax.tree.map(lambda s: s.shape, param_shapes(cfg2))
    assert jax.tree.map(lambda x: x.shape, p2) == want
    # A kernel really moved: o_proj [H, hd, D] -> [D, H, hd] (leading L axis kept when scanned).
    o = (
        p2["layers"]["self_attn"]["o_proj"]["kernel"]
        if scan
        else p2["layers_0"]["self_attn"]["o_proj"]["kernel"]
    )
    assert o.shape[-3:] == (cfg.hidden_size, cfg.num_heads, cfg.head_dim)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
    a, _ = forward(cfg, params, toks)
    b, _ = forward(cfg2, p2, toks)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=5e-5, rtol=1e-5)
    # Back to in_out is the identity on every leaf; same layout is a no-op.
    cfg3, p3 = to_kernel_layout(cfg2, p2, "in_out")
    assert cfg3 == cfg
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), params, p3)
    assert to_kernel_layout(cfg, params, "in_out")[1] is params


def test_layout_errors_and_export_of_out_in_params(tmp_path):
    cfg = get_config("tiny_llama")
    params = init_params(cfg, jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="layout='row_major'"):
        to_kernel_layout(cfg, params, "row_major")
    with pytest.raises(ValueError, match="kernel_layout"):
        cfg.replace(kernel_layout="transposed")
    with pytest.raises(ValueError, match="kernel_layout='transposed'"):
        Sampler(cfg, tiny_tokenizer(), kernel_layout="transposed")
    # A checkpoint written from out_in params is the in_out checkpoint.
    cfg2, p2 = to_kernel_layout(cfg, params, "out_in")
    a, b = tmp_path / "a", tmp_path / "b"
    save_hf(str(a), cfg, params)
    save_hf(str(b), cfg2, p2)
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k])


@pytest.mark.slow  # two sampler compiles; the fast tier keeps the forward equality above
def test_sampler_layouts_sample_the_same_tokens():
    """The sampler's engine layout is an implementation detail: same tokens, same log-probs."""
    cfg = get_config("tiny_llama")
    params = init_params(cfg, jax.random.PRNGKey(2))
    tok = tiny_tokenizer()
    outs = {}
    for layout in ("in_out", "out_in"):
        s = Sampler(cfg, tok, kernel_layout=layout, batch_buckets=(4,))
        assert s.engine_config.kernel_layout == layout
        bank = build_bank(tok, ["be brief"], max_prompts=2, max_len=48)
        tasks = s.encode_tasks(bank, ["ab", "cde", "f", "gh"])
        sp = SamplingParams(temperature=1.0, max_new_tokens=12)
        outs[layout] = s.sample(
            params, bank, np.zeros(4, np.int32), tasks, jax.random.PRNGKey(3), sp
        )
    a, b = outs["in_out"], outs["out_in"]
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logps), np.asarray(b.logps), atol=2e-5)
