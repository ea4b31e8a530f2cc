"""`fst-train` on bad input: one line `fst-train: error: <what> (<key>=<value>): <fix>`, exit 2.

Each case is a real `fst-train` subprocess on the embedded default config plus one bad flag (or
a bad file). The error must come before any model weights load or any function compiles: the
workdir stays without metrics or checkpoints, and stderr holds exactly the one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fst_jax import config_checks, run_setup

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "a_file").write_text("not a directory")
    (d / "empty.jsonl").write_text("\n")
    (d / "empty_model").mkdir()
    hf = d / "hf_truncated"
    hf.mkdir()
    tiny = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}  # fmt: skip
    (hf / "config.json").write_text(json.dumps(tiny))
    (hf / "model.safetensors").write_bytes(b'\x40\x00\x00\x00\x00\x00\x00\x00{"a": {"dty')
    (d / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    (d / "cfg_syntax.py").write_text("def get_config(:\n")
    for name, data in (("empty", d / "empty.jsonl"), ("missing", d / "missing.jsonl")):
        (d / f"cfg_{name}_data.py").write_text(
            f"import sys\nsys.path.insert(0, {str(REPO / 'experiments/configs')!r})\n"
            "from default import get_config as base\n\n\ndef get_config():\n    c = base()\n"
            f"    c.task.kwargs.source = 'real'\n    c.task.kwargs.path = {str(data)!r}\n    return c\n"
        )
    return d


# (flags, text the one line must contain). {d} is the fixture dir.
CASES = [
    (["--config.rl.lrr=3"], "unknown config key (--config.rl.lrr=3): did you mean --config.rl.lr?"),
    (["--config.seeed=1"], "did you mean --config.seed?"),
    (["--config={d}/nope.py"], "cannot load the config file (--config="),
    (["--config={d}/cfg_syntax.py"], "SyntaxError: invalid syntax ({d}/cfg_syntax.py, line 1)"),
    (["--config.rl.lr=abc"], "could not convert string to float"),
    (["--config.mode=fsst"], "unknown mode (mode='fsst'): did you mean 'fst'?"),
    (["--config.rl.tau=0"], "out of range (rl.tau=0.0): must be > 0.0"),
    (["--config.sampling.max_new_tokens=0"], "(sampling.max_new_tokens=0): must be >= 1"),
    (["--config.sampling.top_p=1.5"], "(sampling.top_p=1.5)"),
    (["--config.eval.k=0"], "(eval.k=0): must be >= 1"),
    (["--config.model.dtype=bf16"], "unknown dtype (model.dtype='bf16'): did you mean 'bfloat16'?"),
    (["--config.model.remat=full"], "unknown remat (model.remat='full')"),
    (["--config.rl.aggregation=tok_mean"], "(rl.aggregation='tok_mean'): did you mean 'token_mean'?"),
    (["--config.rl.advantage=grpoo"], "(rl.advantage='grpoo'): did you mean 'grpo'?"),
    (["--config.rl.loss=cisp"], "(rl.loss='cisp'): did you mean 'cispo'?"),
    (["--config.gepa.reflection_lm=opneai"], "did you mean 'openai'?"),
    (["--config.gepa.edit=rewrit"], "did you mean 'rewrite'?"),
    (["--config.gepa.reflection_lm=openai"], "API key environment variable is not set"),
    (["--config.gepa.reflection_lm=openai", "--config.gepa.reflection_base_url=localhost:8000"],
     "reflection base URL is not http(s)"),
    (["--config.gepa.reflection_timeout_s=0"], "(gepa.reflection_timeout_s=0.0)"),
    (["--config.gepa.k=3", "--config.rl.group_size=4"], "gepa.k=3 contexts must divide rl.group_size=4"),
    (["--config.gepa.minibatch=9"], "exceeds gepa.anchor_size"),
    (["--config.resume=maybe"], "unknown resume (resume='maybe')"),
    (["--config.task.name=mathh"], "unknown task (task.name='mathh'): did you mean 'math'?"),
    (["--config.task.kwargs.difficulty=lite2"], "(task.kwargs.difficulty='lite2')"),
    (["--config={d}/cfg_empty_data.py"], "data file is empty (task.kwargs.path='{d}/empty.jsonl')"),
    (["--config={d}/cfg_missing_data.py"], "data file not found (task.kwargs.path="),
    (["--config.task.kwargs.path=x.jsonl"], "task.kwargs has no key 'path'"),
    (["--config.init_from={d}/no_run"], "init_from run dir not found"),
    (["--workdir={d}/a_file"], "workdir is a file, not a directory"),
    (["--workdir=/proc/fst_no_such_dir"], "workdir is not writable"),
    (["--config.model.spec={d}/no_model"], "model not found"),
    (["--config.model.spec={d}/empty_model"], "model dir has no config.json"),
    (["--config.model.spec=random:tiny_lama"], "unknown model config"),
    (["--config.model.spec={d}/hf_truncated"], "cannot load the model"),
    (["--config.model.spec={d}/cut.gguf"], "cannot load the model"),
]  # fmt: skip


def _run(flags: list[str], workdir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = str(REPO)
    if not any(f.startswith("--workdir") for f in flags):
        flags = [*flags, f"--workdir={workdir}"]
    return subprocess.run([sys.executable, "-m", "fst_jax.main", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "expect"), CASES, ids=[" ".join(f) for f, _ in CASES])
def test_fst_train_reports_one_line(files, tmp_path, flags, expect):
    flags = [f.replace("{d}", str(files)) for f in flags]
    expect = expect.replace("{d}", str(files))
    r = _run(flags, tmp_path / "run")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("fst-train: error: "), r.stderr[-3000:]
    assert expect in lines[0], lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    run = tmp_path / "run"  # nothing was trained or written: it failed at the start
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(tmp_path):
    r = _run(["--config.rl.tau=0", "--debug"], tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("fst-train: error: out of range")


def _default():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cfg_default", REPO / "experiments/configs/default.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("rl.tau", 0.0, r"rl.tau=0.0\): must be > 0.0"),
        ("rl.lr", -1.0, r"rl.lr=-1.0"),
        ("eval.kl_examples", -1, r"eval.kl_examples=-1\): must be >= 0"),
        ("rl.b2", 1.0, r"rl.b2=1.0\): must be >= 0.0 and < 1.0"),
        ("sampling.context_in", "assistant", r"use one of system, user"),
        ("rl.aggregation", "prompt_mean", r"did you mean 'prompt_token_mean'"),
        ("mesh.data", 0, r"mesh.data=0\): must be >= 1 \(or -1\)"),
        ("gepa.reply_cache_entries", 0, r"gepa.reply_cache_entries=0"),
    ],
)
def test_validate_config_in_process(key, value, match, tmp_path):
    c = _default()
    node, leaf = key.rsplit(".", 1)
    c[node][leaf] = value
    with pytest.raises(run_setup.ConfigError, match=match):
        run_setup.validate_config(c, 1, workdir=tmp_path)


def test_checks_are_a_registry_new_knobs_slot_in(tmp_path):
    """A new knob registers its own check; validate_config runs it with the others."""
    names = config_checks.list_config_checks()
    assert names[:3] == ["names", "ranges", "shapes"] and "workdir" in names
    c = _default()
    run_setup.validate_config(c, 1, workdir=tmp_path)  # the default config passes every check
    seen = []

    def check(config, ctx):
        seen.append(ctx.workdir)
        raise run_setup.ConfigError("made-up knob off", "gepa.k", config.gepa.k, "turn it on")

    config_checks._CHECKS.append(("test_knob", check))
    try:
        with pytest.raises(
            run_setup.ConfigError, match=r"^made-up knob off \(gepa.k=2\): turn it on$"
        ):
            run_setup.validate_config(c, 1, workdir=tmp_path)
    finally:
        config_checks._CHECKS.remove(("test_knob", check))
    assert seen == [tmp_path]
    with pytest.raises(ValueError, match="already registered"):
        config_checks.config_check("names")(check)


def test_one_checkpoint_error_class():
    from fst_jax import checkpoint, errors, models

    assert models.CheckpointError is checkpoint.CheckpointError is errors.CheckpointError
    assert issubclass(errors.CheckpointError, ValueError | RuntimeError)
    assert issubclass(errors.CheckpointError, errors.UserError)
