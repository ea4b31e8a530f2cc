"""Bad input (config, task names, K/G/batch, foreign workdirs), task streams, plasticity probe."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_controller_e2e import ParityTask, ScriptedLM, tiny_config

from fst_jax import checkpoint as ckpt
from fst_jax import controller, gepa, metrics, run_setup
from fst_jax.tasks import base as task_base

REPO = Path(__file__).resolve().parents[1]


class OddTask(ParityTask):
    name = "ctl_odd"

    def _verify(self, example, completion):
        ok = bool(completion) and ord(completion[0]) % 2 == 1
        return task_base.Verdict(float(ok), "correct" if ok else "wrong", "odd code point wanted")


if "ctl_odd" not in task_base.list_tasks():
    task_base.register_task("ctl_odd")(OddTask)


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"mode": "fsst"}, r"unknown mode \(mode='fsst'\): did you mean 'fst'"),
        (
            {"task.name": "ctl_parit"},
            r"unknown task \(task.name='ctl_parit'\): did you mean 'ctl_parity'",
        ),
        ({"gepa.k": 3}, r"gepa.k=3 contexts must divide rl.group_size=4.*--config.gepa.k=2"),
        ({"rl.batch_size": 3, "mesh.devices": -1}, "12 rows cannot be split.*8 data×fsdp shards"),
        ({"gepa.minibatch": 9}, "exceeds gepa.anchor_size"),
        ({"task.stream": "ctl_parity,ctl_odd"}, "switch_every"),
        ({"resume": "maybe"}, "auto, force, never"),
        ({"sampling.context_cache_slots": -1}, r"sampling.context_cache_slots=-1.*>= 0"),
    ],
)
def test_bad_configs_name_the_fix(edit, match):
    c = tiny_config()
    for key, value in edit.items():
        node, *path = key.split(".")
        if path:
            c[node][path[0]] = value
        else:
            c[node] = value
    with pytest.raises(run_setup.ConfigError, match=match):
        shards = 8 if edit.get("mesh.devices") == -1 else 1
        run_setup.validate_config(c, shards)


def _cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "fst_jax.main", *flags], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow  # fst-train subprocesses
def test_cli_unknown_key_and_task(tmp_path):
    r = _cli("--config.rl.group_sze=3", f"--workdir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip() == (
        "fst-train: error: unknown config key (--config.rl.group_sze=3): did you mean "
        "--config.rl.group_size?"
    )
    r = _cli("--config.task.name=mathh", "--config.mesh.devices=1", f"--workdir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "unknown task (task.name='mathh'): did you mean 'math'" in r.stderr


def test_refuses_foreign_workdir_unless_forced(tmp_path):
    other = tiny_config()
    other.rl.lr = 0.5
    dummy = {"x": np.zeros(2, np.float32)}
    ckpt.Checkpointer(tmp_path, ckpt.flatten_config(other.to_dict())).save(2, dummy, {"host": {}})
    with pytest.raises(ckpt.CheckpointError, match=r"another run.*rl\.lr.*--config.resume=force"):
        controller.Controller(tiny_config(), tmp_path)
    c = tiny_config()
    c.resume = "never"
    with pytest.raises(ckpt.CheckpointError, match="another run"):
        controller.Controller(c, tmp_path)


@pytest.mark.slow  # > 20 s on 2 cores (whole runs)
def test_task_stream_then_plasticity_probe(tmp_path):
    c = tiny_config("fst")
    c.task.stream, c.task.switch_every = "ctl_parity,ctl_odd", 2
    c.sampling.max_context_len = 192  # the task-agnostic seed is longer than the tiny default
    lm = gepa.get_reflection_lm("local", generate=ScriptedLM())
    ctl = controller.Controller(c, tmp_path / "stream", reflection_lm=lm)
    ctl.run()
    assert ctl.rs.positions == {"ctl_parity": 4, "ctl_odd": 4}
    assert ctl.rs.population.candidates[0].text == c.task.agnostic_seed_prompt  # task-agnostic seed
    recs = metrics.read_metrics(tmp_path / "stream")
    assert recs[0]["run/task"] == "ctl_parity,ctl_odd"
    # Every evaluation scores every task of the stream, each with its own running max, and
    # val/mean@4 is the stream mean (one meaning across the switch).
    val = [r for r in recs if "val/mean@4" in r]
    assert len(val) >= 2
    for r in val:
        per = [r[f"val/{t}/mean@4"] for t in ("ctl_parity", "ctl_odd")]
        assert r["val/mean@4"] == pytest.approx(sum(per) / 2)
    for t in ("ctl_parity", "ctl_odd"):
        assert val[-1][f"val/{t}/mean@4_running_max"] == max(r[f"val/{t}/mean@4"] for r in val)

    # Plasticity probe: fresh RL on another task, starting from the stream run's weights.
    p = tiny_config("rl")
    p.task.name, p.init_from, p.num_cycles = "ctl_odd", str(tmp_path / "stream"), 1
    probe = controller.Controller(p, tmp_path / "probe")
    for a, b in zip(jax.tree.leaves(probe.init_params), jax.tree.leaves(ctl.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # val/kl_to_base is against the ORIGINAL base model, not the loaded checkpoint.
    fresh = controller.Controller(tiny_config("rl"), tmp_path / "fresh")
    for a, b in zip(jax.tree.leaves(probe.base_params), jax.tree.leaves(fresh.base_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert probe.step == 0
    s = probe.run()
    assert s["steps"] == 2
    last = [r for r in metrics.read_metrics(tmp_path / "probe") if "val/kl_to_base" in r][-1]
    # The stream run moved the weights; both distances are positive and named apart.
    assert last["val/kl_to_base"] > 0 and last["val/kl_to_init"] > 0
    first = next(r for r in metrics.read_metrics(tmp_path / "probe") if "val/kl_to_base" in r)
    assert first["val/kl_to_init"] == pytest.approx(0.0, abs=1e-6)  # at step 0: the start
    assert first["val/kl_to_base"] > 1e-6  # ... which is already away from the base model


def _load(name, arg=None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cfg_" + name, REPO / "experiments/configs" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config() if arg is None else mod.get_config(arg)


@pytest.mark.parametrize(
    "name",
    ["default"] + [p.stem for p in sorted((REPO / "experiments/configs").glob("paper_*.py"))],
)
def test_shipped_configs_validate(name, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the paper configs reflect with gpt-5.2
    c = _load(name)
    if name != "default":  # they name the user's Qwen3-8B checkpoint dir, absent here
        assert c.model.spec.endswith("Qwen3-8B")
        c.model.spec = "smollm2-135m-instruct"
    if c.init_from:  # plasticity: a placeholder for the user's earlier run
        with pytest.raises(run_setup.ConfigError, match=r"init_from run dir not found"):
            run_setup.validate_config(c, num_batch_shards=1)
        c.init_from = str(tmp_path)
    run_setup.validate_config(c, num_batch_shards=1)
    if name == "default":  # the embedded run the issue asks for
        assert c.mode == "fst" and c.model.spec == "smollm2-135m-instruct"
        assert c.gepa.reflection_lm == "local" and c.eval.at_start
        assert c.num_cycles >= 2 and c.num_cycles * c.rl.steps_per_cycle >= 6
    else:  # paper hyper-parameters (paper.md §2.4)
        assert (c.rl.steps_per_cycle, c.rl.group_size, c.gepa.k, c.rl.tau) == (6, 8, 4, 4.0)
        assert (c.gepa.budget, c.gepa.anchor_size, c.eval.k) == (960, 192, 4)


def test_ablations_override_and_reject_unknown():
    c = _load("ablations", "hover,T12,K8,rl")
    assert (c.rl.steps_per_cycle, c.gepa.k, c.mode, c.task.name) == (12, 8, "rl", "hover")
    assert c.num_cycles * 12 == 600  # same RL steps as the paper's HoVer run
    with pytest.raises(ValueError, match="Did you mean 'tau8'"):
        _load("ablations", "codeio,tau9")


@pytest.mark.parametrize("slots", [0, 3, None])
def test_context_cache_slots_reach_the_sampler(slots):
    """`sampling.context_cache_slots` sizes the controller's sampler cache (0 = none); a config
    written before the key existed gets the sampler's default; the key is resumable."""
    from fst_jax.models import get_config
    from fst_jax.models.random_init import tiny_tokenizer
    from fst_jax.sampling.sampler import DEFAULT_CONTEXT_SLOTS

    c = tiny_config()
    if slots is None:
        del c.sampling["context_cache_slots"]
    else:
        c.sampling.context_cache_slots = slots
    run_setup.validate_config(c, 1)
    rows = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    sampler, _, _ = run_setup.make_sampling(c, get_config("tiny_llama"), tiny_tokenizer(), rows)
    cache = sampler.sampler.context_cache  # ProgressSampler → RowShardedSampler → Sampler
    want = DEFAULT_CONTEXT_SLOTS if slots is None else slots
    assert (cache.slots if cache is not None else 0) == want
    assert ckpt._resumable("sampling.context_cache_slots")
