"""Shipped configs resolve by name, from a clone and from a non-editable install (a wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fst_jax import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "experiments/configs").glob("*.py") if p.stem[0] != "_")


def test_config_names_resolve_to_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo: relative experiments/ paths do not exist here
    d = main.config_dir()
    assert (d / "default.py").is_file()
    assert main.resolve_config_arg("paper_codeio:math") == f"{d / 'paper_codeio.py'}:math"
    assert main.resolve_config_arg("paper_codeio.py") == str(d / "paper_codeio.py")
    got = main.resolve_config_arg("experiments/configs/ablations.py:hover,T12,K8")
    assert got == f"{d / 'ablations.py'}:hover,T12,K8"
    own = tmp_path / "mine.py"
    own.write_text("")
    assert main.resolve_config_arg(str(own)) == str(own)  # an existing file always wins
    assert main.resolve_config_arg("no_such_config") == "no_such_config"  # loader reports it
    assert main.resolve_config_arg("elsewhere/default.py") == "elsewhere/default.py"


@pytest.mark.slow
def test_a_wheel_ships_every_config_and_they_load(tmp_path):
    """`pip install .` (non-editable) = the wheel: configs must be inside it and resolve there."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheel_dir)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (whl,) = wheel_dir.glob("fst_jax-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert {f"fst_jax/configs/{n}.py" for n in SHIPPED} <= names, sorted(names)[:20]
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    script = f"""
import fst_jax, pathlib
assert fst_jax.__file__.startswith({str(site)!r}), fst_jax.__file__
from fst_jax import main
from ml_collections import config_flags
d = main.config_dir()
assert str(d).startswith({str(site)!r}) and main.DEFAULT_CONFIG.is_file(), d
for arg, spec in (("default", "smollm2-135m-instruct"), ("fst_paper:math", None), ("paper_codeio", None),
                  ("experiments/configs/ablations.py:hover,T12,K8", None)):
    path = main.resolve_config_arg(arg)
    assert path.startswith(str(d)), path
    cfg = config_flags.config_flags._LoadConfigModule("c", path.split(":")[0]).get_config(
        *([path.split(":", 1)[1]] if ":" in path else []))
    assert cfg.mode and (spec is None or cfg.model.spec == spec), (arg, cfg.model.spec)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
