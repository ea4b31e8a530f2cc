"""SFT mode: loss/gradient against a torch oracle, masks, data sources, resume, init_from.

Oracles: transformers' LlamaForCausalLM (torch) on the same tiny random weights, with labels
built independently from character offsets of the assistant turns in the rendered chat
(HF's -100 convention, mean over labelled tokens, as TRL's SFT loss).
"""

import json

import jax
import numpy as np
import pytest
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import checkpoint as ckpt
from fst_jax import controller, gepa, metrics, rl, sharding
from fst_jax.models import get_config, init_params, save_hf
from fst_jax.models.hf import _leaf, tensor_specs, to_hf
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.rl.train_step import microbatch_loss
from fst_jax.run_setup import ConfigError
from fst_jax.sft import data as sft_data
from fst_jax.sft import trainer
from fst_jax.tasks import demos

CHATS = [
    [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": '{"answer": 5}'},
    ],
    [  # two assistant turns; the user turn between them carries no loss
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "Again, louder."},
        {"role": "assistant", "content": "HI!"},
    ],
]


def oracle_labels(tok, msgs):
    """Token ids and labels from char offsets: assistant content + its <|im_end|>, else -100."""
    text = tok.apply_chat_template(msgs, tokenize=False)
    spans, pos = [], 0
    for m in msgs:
        header = f"<|im_start|>{m['role']}\n"
        start = text.index(header + m["content"] + "<|im_end|>", pos) + len(header)
        end = start + len(m["content"]) + len("<|im_end|>")
        if m["role"] == "assistant":
            spans.append((start, end))
        pos = end
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        t if any(a <= s and e <= b for a, b in spans) else -100
        for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])
    ]
    return enc["input_ids"], labels


def test_assistant_mask_matches_offsets_oracle():
    tok = tiny_tokenizer()
    for msgs in CHATS:
        ids, mask = sft_data.encode_chat(tok, msgs)
        ref_ids, labels = oracle_labels(tok, msgs)
        assert ids.tolist() == ref_ids
        np.testing.assert_array_equal(mask > 0, np.asarray(labels) != -100)
    # the decoded masked tokens are exactly the assistant turns and their end-of-turn tokens
    ids, mask = sft_data.encode_chat(tok, CHATS[1])
    assert tok.decode(ids[mask > 0]) == "hi<|im_end|>HI!<|im_end|>"


def test_sft_loss_and_gradient_match_torch(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = tiny_tokenizer()
    config = get_config("tiny_llama")
    params = init_params(config, jax.random.key(3))
    hf_dir = save_hf(str(tmp_path / "hf"), config, params, tok)
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)

    enc = sft_data.encode_all(tok, CHATS, max_len=512)
    batch = sft_data.make_batch(enc, [0, 1], 2, [128, 256, 512], pad_id=tok.pad_token_id)
    cfg = rl.RLConfig(loss=rl.LossConfig(name="sft"))
    (loss, _), grads = jax.value_and_grad(
        lambda p: microbatch_loss(config, cfg, p, batch), has_aux=True
    )(params)

    # torch: padded batch, -100 labels off the assistant turns, HF's shifted mean CE.
    rows = [oracle_labels(tok, m) for m in CHATS]
    S = max(len(i) for i, _ in rows)
    ids = torch.full((2, S), tok.pad_token_id)
    lab = torch.full((2, S), -100)
    att = torch.zeros((2, S), dtype=torch.long)
    for b, (i, lb) in enumerate(rows):
        ids[b, : len(i)], lab[b, : len(i)], att[b, : len(i)] = (
            torch.tensor(i),
            torch.tensor(lb),
            1,
        )
    out = model(input_ids=ids, attention_mask=att, labels=lab)
    out.loss.backward()
    np.testing.assert_allclose(float(loss), out.loss.item(), rtol=2e-5)
    named = dict(model.named_parameters())
    for s in tensor_specs(config):
        ours = to_hf(s.kind, np.asarray(_leaf(grads, s.path)))
        ref = named[s.hf_name].grad.numpy()
        np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=2e-6, err_msg=s.hf_name)


def test_train_step_microbatches_give_the_same_update():
    tok = tiny_tokenizer()
    config = get_config("tiny_llama")
    params = init_params(config, jax.random.key(0))
    rows = demos.context_following("train", 8)
    enc = sft_data.encode_all(tok, [r["messages"] for r in rows], 512)
    batch = sft_data.make_batch(enc, range(6), 8, [256, 512], tok.pad_token_id)  # 2 pad rows
    mesh = sharding.make_mesh(sharding.MeshConfig(), jax.devices()[:1])
    outs = []
    for m in (1, 2):
        cfg = rl.RLConfig(loss=rl.LossConfig(name="sft"), learning_rate=1e-3, num_microbatches=m)
        step = rl.make_train_step(config, mesh, cfg)
        state, met = step(step.init(params), batch)
        outs.append((rl.host_metrics(met), state.params))
    assert outs[0][0]["train_tokens"] == enc.masks[0].sum() + sum(m.sum() for m in enc.masks[1:6])
    np.testing.assert_allclose(outs[0][0]["loss"], outs[1][0]["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ data sources and plans


def test_data_sources_jsonl_and_local_hf_dataset(tmp_path):
    import datasets

    rows = [{"messages": m} for m in CHATS * 20]
    rows += [{"messages": [{"role": "user", "content": f"q{i}"},
                           {"role": "assistant", "content": f"a{i}"}]} for i in range(200)]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tr = sft_data.load_conversations(str(path), "train", val_fraction=0.2)
    va = sft_data.load_conversations(str(path), "validation", val_fraction=0.2)
    assert len(tr) + len(va) == len(rows) and 0 < len(va) < len(rows) / 2
    key = lambda c: json.dumps([m for m in c if m["role"] != "assistant"])  # noqa: E731
    assert not {key(c) for c in tr} & {key(c) for c in va}  # prompts never straddle splits

    ds_dir = tmp_path / "hfds"
    datasets.Dataset.from_list(rows).save_to_disk(str(ds_dir))
    assert sft_data.load_conversations(f"hf:{ds_dir}", "train", val_fraction=0.2) == tr
    via_builder = sft_data.load_conversations(
        "hf:json", "train", kwargs={"data_files": str(path)}, val_fraction=0.2
    )
    assert via_builder == tr


@pytest.mark.parametrize(
    "row, match",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "needs a role"),
        ({"messages": [{"role": "user", "content": 3}]}, "no string 'content'"),
        ({"chat": []}, "sft.messages_field"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "starts with an assistant"),
    ],
)
def test_bad_rows_name_the_problem(tmp_path, row, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=match):
        sft_data.load_conversations(str(path), "train", val_fraction=0.0)


def test_unknown_source_and_too_long_rows():
    with pytest.raises(ValueError, match="registered generator"):
        sft_data.load_conversations("no_such_thing", "train")
    enc = sft_data.encode_all(tiny_tokenizer(), CHATS, max_len=80)
    assert len(enc) + enc.dropped == 2 and enc.dropped >= 1  # counted, not silently lost


def test_batch_plan_covers_each_epoch_and_buckets_by_length():
    lengths = np.random.default_rng(0).integers(10, 500, 203)
    plan = sft_data.BatchPlan(lengths, 8, seed=1, window=4)
    for e in range(2):
        seen = np.concatenate([plan.rows(e * plan.per_epoch + s) for s in range(plan.per_epoch)])
        assert sorted(seen.tolist()) == list(range(203))
    again = sft_data.BatchPlan(lengths, 8, seed=1, window=4)
    assert all((plan.rows(s) == again.rows(s)).all() for s in (0, 5, 40, 77))

    # bucketing by real length: padding falls as the sorting window grows (window 1 = none)
    def pad(window):
        p = sft_data.BatchPlan(lengths, 8, seed=1, window=window)
        return np.mean([1 - lengths[b].mean() / lengths[b].max() for b in
                        (p.rows(s) for s in range(p.per_epoch))])  # fmt: skip

    assert pad(8) < 0.5 * pad(1)


# ------------------------------------------------------------------ demonstrations


def test_demos_follow_their_context_and_avoid_rl_tasks():
    train = demos.context_following("train", 600, seed=0)
    val = demos.context_following("validation", 60, seed=0)
    assert all(demos.check_reply(r["meta"], r["messages"][-1]["content"]) for r in train + val)
    assert {r["meta"]["form"] for r in train} == set(demos.FORMS)
    assert {r["meta"]["where"] for r in train} == {"system", "user"}
    qs = lambda rows: {r["meta"]["question"] for r in rows}  # noqa: E731
    assert not qs(train) & qs(val)
    assert demos.rl_task_overlap(train + val) == []
    # the checker really reads the form: a boxed reply is not a JSON reply and vice versa
    boxed = next(r for r in train if r["meta"]["form"] == "boxed")
    as_json = {**boxed["meta"], "form": "json"}
    assert not demos.check_reply(as_json, boxed["messages"][-1]["content"])
    assert not demos.check_reply(boxed["meta"], "The answer is 12345678.")
    # same question family answered in several forms (the context, not the question, decides)
    forms_per_family = {}
    for r in train:
        forms_per_family.setdefault(r["meta"]["family"], set()).add(r["meta"]["form"])
    assert all(len(f) >= 6 for f in forms_per_family.values())
    assert demos.context_following("train", 5, seed=0) == train[:5]  # deterministic


# ------------------------------------------------------------------ the loop


def sft_config(steps=4, **kw):
    c = tiny_config("rl")
    c.mode = "sft"
    c.model.spec = "random:tiny_llama,max_position_embeddings=1024"
    c.sft.data_kwargs = {"n": 24}
    c.sft.val_rows = 6
    c.sft.steps, c.sft.batch_size = steps, 4
    c.sft.max_len, c.sft.length_buckets = 1024, "256,512,768,1024"
    c.sft.lr, c.sft.warmup_steps = 1e-3, 1
    c.sft.eval_every = c.sft.checkpoint_every = 2
    c.sft.export = False
    for k, v in kw.items():
        setattr(c.sft, k, v)
    return c


def _records(workdir):
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")}
            for r in metrics.read_metrics(workdir / metrics.METRICS_FILE)]  # fmt: skip


@pytest.mark.slow  # > 20 s on 2 cores (whole runs)
def test_sft_resume_after_a_crash_is_exact(tmp_path, monkeypatch):
    full = trainer.SFTRun(sft_config(), tmp_path / "full")
    s = full.run()
    assert s["steps"] == 4 and s["val_loss_end"] < s["val_loss_start"]

    crashed = trainer.SFTRun(sft_config(), tmp_path / "crash")
    real_step = crashed.train_step.jitted
    calls = [0]

    def dies_at_step_3(state, batch):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_step(state, batch)

    monkeypatch.setattr(crashed.train_step, "jitted", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    crashed.writer.close()
    resumed = trainer.SFTRun(sft_config(), tmp_path / "crash")
    assert resumed.step == 2
    resumed.run()
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _records(tmp_path / "full") == _records(tmp_path / "crash")
    # more steps later: sft.steps may change on resume, other keys may not
    more = trainer.SFTRun(sft_config(steps=6), tmp_path / "full")
    assert more.step == 4 and more.run()["steps"] == 6
    with pytest.raises(ckpt.CheckpointError, match=r"sft\.lr"):
        trainer.SFTRun(sft_config(lr=5e-4), tmp_path / "full")


@pytest.mark.slow  # > 20 s on 2 cores (whole runs)
def test_sft_checkpoint_starts_an_fst_run_and_exports(tmp_path):
    c = sft_config(steps=2, export=True)
    s = trainer.run(c, tmp_path / "sft")
    assert s["export"] and (tmp_path / "sft/export/model.safetensors").exists()
    sft_params = trainer.SFTRun(c, tmp_path / "sft").state.params  # resumed at its last step

    f = tiny_config("fst")
    f.model.spec = c.model.spec
    f.init_from = str(tmp_path / "sft")
    f.num_cycles = 1
    lm = gepa.get_reflection_lm("local", generate=ScriptedLM())
    ctl = controller.Controller(f, tmp_path / "fst", reflection_lm=lm)
    start = ctl.init_params if getattr(ctl, "init_params", None) is not None else ctl.base_params
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(ctl.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(sft_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = ctl.run()
    assert out["steps"] == 2 and out["kl_to_base_end"] > 0

    # the export is the same model: loading it gives the SFT weights
    from fst_jax.models import load

    _, exported, _ = load(str(tmp_path / "sft/export"))
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(sft_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)


def test_sft_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="multiple of"):
        trainer.SFTRun(sft_config(batch_size=3, micro_batches=2), tmp_path / "a")
    with pytest.raises(ConfigError, match="length_buckets"):
        trainer.SFTRun(sft_config(length_buckets="128,256"), tmp_path / "b")
    with pytest.raises(ConfigError, match="registered generator"):
        trainer.SFTRun(sft_config(data="nope.jsonl"), tmp_path / "c")


def test_sft_workdir_uri_that_cannot_be_served_is_an_error_not_a_local_folder(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for bad in ("gs:/bucket/run", "ftp://host/run"):
        with pytest.raises(ConfigError, match="workdir"):
            trainer.SFTRun(sft_config(), bad)
    assert list(tmp_path.iterdir()) == []  # no local `gs:` / `ftp:` folder appeared


@pytest.mark.slow
def test_fst_train_cli_runs_sft_and_rejects_the_sft_loss_in_rl(tmp_path):
    """The real app: `fst-train --config.mode=sft` dispatches to the SFT loop and prints its
    summary; `rl.loss=sft` in an RL run is a one-line config error."""
    import subprocess
    import sys

    from fst_subprocess import BOOT, REPO, tiny_flags

    flags = [
        f"--config={REPO / 'experiments/configs/sft_context_following.py'}",
        "--config.mode=sft",
        "--config.model.spec=random:tiny_llama,max_position_embeddings=1024",
        "--config.sft.steps=2",
        "--config.sft.batch_size=2",
        "--config.sft.data_kwargs.n=8",
        "--config.sft.val_rows=2",
        "--config.sft.max_len=1024",
        "--config.sft.length_buckets=512,1024",
        "--config.sft.export=False",
        "--config.mesh.devices=1",
    ]
    env_cmd = [sys.executable, "-c", BOOT, f"--workdir={tmp_path / 'sft'}", *flags]
    out = subprocess.run(env_cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mode=sft  steps=2" in out.stdout and "val loss" in out.stdout
    assert (tmp_path / "sft/checkpoints/2").is_dir()

    bad = [sys.executable, "-c", BOOT, f"--workdir={tmp_path / 'rl'}",
           *tiny_flags(1, "--config.mode=rl", "--config.rl.loss=sft")]  # fmt: skip
    out = subprocess.run(bad, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "rl.loss='sft'" in out.stderr, out.stderr[-2000:]
