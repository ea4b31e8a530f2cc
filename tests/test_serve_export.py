"""fst-export: a tiny FST run's checkpoint → HF dir that transformers loads with the same logits,
plus contexts.json with the run's exported top-K (ids, scores) — and fst-serve on that dir."""

import json
import subprocess
import sys

import jax
import numpy as np
import openai
import pytest
import torch
import transformers
from fst_subprocess import REPO
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import controller, gepa
from fst_jax.gepa.population import export_top_k
from fst_jax.models import forward
from fst_jax.serve import CONTEXTS_FILE, RunError, export_run, load_run, load_spec, serving

pytestmark = pytest.mark.slow  # a two-cycle FST run (~1 min on 2 cores) feeds every test

TOKENS = np.random.default_rng(0).integers(0, 259, size=(2, 24)).astype(np.int32)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two FST cycles of the tiny policy (the weights move; GEPA exports K=2 contexts)."""
    workdir = tmp_path_factory.mktemp("run") / "tiny-fst"
    c = tiny_config("fst")
    c.num_cycles = 2
    ctl = controller.Controller(
        c, workdir, reflection_lm=gepa.get_reflection_lm("local", generate=ScriptedLM())
    )
    ctl.run()
    return ctl, workdir


def test_load_run_restores_the_trained_params_and_contexts(run):
    ctl, workdir = run
    m = load_run(str(workdir))
    assert m.step == ctl.step and m.name == f"tiny-fst@{ctl.step}"
    for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(ctl.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [c["text"] for c in m.contexts] == ctl.exported
    # Independent recomputation of the top-K from the run's population.
    pop = gepa.PopulationState.from_json(ctl.population.to_json())
    top = export_top_k(pop, ctl.K)
    assert [c["id"] for c in m.contexts] == [e.id for e in top]
    assert [c["mean_score"] for c in m.contexts] == pytest.approx([e.mean_score for e in top])
    assert [c["on_front"] for c in m.contexts] == [e.on_front for e in top]


def test_export_matches_transformers_logits(run, tmp_path):
    ctl, workdir = run
    out = tmp_path / "export"
    model = export_run(str(workdir), str(out))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.from_numpy(TOKENS).long()).logits.numpy()
    ours = np.asarray(forward(model.config, ctl.state.params, TOKENS)[0])
    np.testing.assert_allclose(ref, ours, atol=1e-4, rtol=0)
    base = np.asarray(forward(model.config, ctl.base_params, TOKENS)[0])
    assert np.abs(ref - base).max() > 1e-3  # negative control: the trained weights, not the base
    tok = transformers.AutoTokenizer.from_pretrained(out)
    msgs = [{"role": "system", "content": ctl.exported[0]}, {"role": "user", "content": "x"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == ctl.tokenizer.apply_chat_template(
        msgs, tokenize=False
    )
    doc = json.loads((out / CONTEXTS_FILE).read_text())
    assert doc["step"] == ctl.step and doc["run"] == "tiny-fst"
    assert [c["text"] for c in doc["contexts"]] == ctl.exported
    assert doc["contexts"] == model.contexts


def test_export_an_earlier_step_and_errors(run, tmp_path):
    ctl, workdir = run
    steps = ctl.checkpointer.all_steps()
    assert len(steps) >= 2
    early = export_run(str(workdir), str(tmp_path / "early"), steps[0])
    assert early.step == steps[0]
    with pytest.raises(RunError, match="no checkpoint step 12345"):
        load_run(str(workdir), 12345)
    with pytest.raises(RunError, match="does not exist"):
        load_run(str(tmp_path / "missing"))
    with pytest.raises(RunError, match="lost a slash"):
        load_run("gs:/bucket/run")  # never read as a local folder
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError, match="no checkpoint steps"):
        load_run(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a directory"):
        export_run(str(workdir), str(tmp_path / "file"))


def test_serve_an_export_dir_with_its_contexts(run, tmp_path):
    ctl, workdir = run
    out = tmp_path / "export"
    export_run(str(workdir), str(out))
    m = load_spec(str(out))
    assert m.name == "export" and m.context_texts == ctl.exported
    with serving(m, default_max_tokens=4) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        names = [x.id for x in client.models.list().data]
        assert names == ["export"] + [f"export/ctx{i}" for i in range(len(ctl.exported))]
        r = client.chat.completions.create(
            model=names[-1], messages=[{"role": "user", "content": "Hi"}], temperature=0
        )
        assert r.usage.completion_tokens >= 1


@pytest.mark.slow
def test_cli_export_then_serve(run, tmp_path):
    """The console scripts themselves: fst-export, then fst-serve --workdir on a free port."""
    ctl, workdir = run
    out = tmp_path / "cli"
    env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    boot = "import sys; from fst_jax.serve.{m} import run; sys.argv[0] = 'x'; run()"
    r = subprocess.run(
        [sys.executable, "-c", boot.format(m="export"), f"--workdir={workdir}", f"--out={out}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"{len(ctl.exported)} contexts" in r.stdout and (out / "model.safetensors").exists()
    bad = subprocess.run(
        [sys.executable, "-c", boot.format(m="export"), f"--workdir={tmp_path / 'no'}",
         f"--out={out}"], capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    proc = subprocess.Popen(
        [sys.executable, "-c", boot.format(m="server"), f"--workdir={workdir}", "--port=0",
         "--max_batch=2", "--default_max_tokens=4", "--nowarmup"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # printed once warm-up is done and the port is bound
        assert " on http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() else line
        url = line.strip().rsplit(" on ", 1)[1]
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
        name = [x.id for x in client.models.list().data][1]
        assert name.startswith("tiny-fst@") and name.endswith("/ctx0")
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert r.usage.completion_tokens <= 3
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_skeleton_of_an_embedded_run_matches_the_trained_model():
    """For real-model runs the exporter rebuilds config + tokenizer from the saved run config
    without reading base weights; it must describe exactly what fst-train trained."""
    from test_controller_e2e import load_config

    from fst_jax.checkpoint import flatten_config
    from fst_jax.models import param_shapes
    from fst_jax.run_setup import load_model
    from fst_jax.serve.runs import _model_skeleton

    c = load_config()  # the embedded default: smollm2-135m-instruct
    config, tokenizer, spec = _model_skeleton(flatten_config(c.to_dict()))
    want_config, params, want_tok = load_model(c)
    assert spec == c.model.spec and config == want_config
    shapes = param_shapes(config)
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    msgs = [{"role": "user", "content": "x"}]
    assert tokenizer.apply_chat_template(msgs, tokenize=False) == want_tok.apply_chat_template(
        msgs, tokenize=False
    )
