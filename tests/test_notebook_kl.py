"""The KL-vs-reward notebook runs (nbclient, the venv's own python kernel) on tiny runs' output."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import controller, gepa

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "notebooks" / "kl_vs_reward.ipynb"


def _kernel_name() -> str:
    """Registers this interpreter as a user kernel (works in a fresh CI venv) and returns it."""
    from ipykernel.kernelspec import install

    name = "fst-jax-test"
    install(user=True, kernel_name=name, display_name="fst_jax test (venv)")
    return name


def test_notebook_executes_on_tiny_runs(tmp_path):
    workdirs = []
    for mode in ("rl", "fst"):
        c = tiny_config(mode)
        c.num_cycles = 1
        lm = gepa.get_reflection_lm("local", generate=ScriptedLM())
        controller.Controller(c, tmp_path / mode, reflection_lm=lm).run()
        workdirs.append(str(tmp_path / mode))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_before = os.environ.get("FST_WORKDIRS")
    os.environ["FST_WORKDIRS"] = ",".join(workdirs)
    try:
        NotebookClient(nb, timeout=300, kernel_name=_kernel_name(),
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        if env_before is None:
            os.environ.pop("FST_WORKDIRS")
        else:
            os.environ["FST_WORKDIRS"] = env_before
    text = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )
    assert "rl:rl" in text and "fst:fst" in text and "2 evaluations" in text
    assert "steps_to_ref_peak" in text  # both modes present → the speed-up ratio was computed
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]  # fmt: skip
    assert len(images) == 2
