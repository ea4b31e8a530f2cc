"""The KL-vs-reward notebook runs (nbclient, the venv's own python kernel) on tiny runs' output.

Slow (two tiny runs + a kernel). Everything Jupyter, IPython and matplotlib write (kernel spec,
connection files, config, font cache) goes under the test's tmp dir, never the user's home.
"""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_controller_e2e import ScriptedLM, tiny_config

from fst_jax import controller, gepa

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "notebooks" / "kl_vs_reward.ipynb"


def _kernel_name(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Registers this interpreter as a kernel under `home` (found through JUPYTER_PATH) and
    points every Jupyter/IPython/matplotlib directory there too; returns the kernel name."""
    from ipykernel.kernelspec import install

    for var, sub in (("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython"),
                     ("MPLCONFIGDIR", "mpl")):  # fmt: skip
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("JUPYTER_PATH", str(home / "share" / "jupyter"))
    name = "fst-jax-test"
    install(kernel_name=name, display_name="fst_jax test (venv)", prefix=str(home))
    return name


@pytest.mark.slow
def test_notebook_executes_on_tiny_runs(tmp_path, monkeypatch):
    home_before = {p.name for p in Path.home().glob(".*")} | {p.name for p in Path.home().glob("*")}
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
        NotebookClient(nb, timeout=300, kernel_name=_kernel_name(tmp_path / "jupyter", monkeypatch),
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
    home_after = {p.name for p in Path.home().glob(".*")} | {p.name for p in Path.home().glob("*")}
    assert home_after <= home_before, f"wrote into the home directory: {home_after - home_before}"
    assert (tmp_path / "jupyter" / "share" / "jupyter" / "kernels" / "fst-jax-test").is_dir()
