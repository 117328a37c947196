"""A non-editable install works without the source tree: presets and task configs ship as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_pip_install_into_a_fresh_virtualenv_runs_simulate(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: pip builds in the source directory, which must stay clean
    src.mkdir()
    for name in ("lensnet", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python, lensnet = venv / "bin" / "python", venv / "bin" / "lensnet"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src)],
                   check=True, env=env, timeout=600, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*args], cwd=outside, env=env, capture_output=True, text=True, timeout=600)

    where = run(str(python), "-c", "import lensnet; print(lensnet.__file__)")
    assert str(venv) in where.stdout, where.stdout + where.stderr  # the installed copy, not the checkout
    listed = run(str(lensnet), "simulate", "--list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert {"model_ii", "lens_finding", "deeplense_model_i"} <= set(names)
    done = run(str(lensnet), "simulate", "--dataset", "lens_finding", "--num", "20", "--seed", "3",
               "--set", "image.size=16", "--workers", "1", "--no-progress", "--out", "data")
    assert done.returncode == 0, done.stderr
    assert (outside / "data" / "manifest.json").is_file()
    assert "20 records" in done.stdout
    tasks = run(str(lensnet), "fit", "--list-tasks")
    assert tasks.returncode == 0 and "lens_finding" in tasks.stdout, tasks.stderr
