"""The layer contracts of pyproject.toml ([tool.importlinter]) hold, and `lint-imports` catches an upward import.

The package is copied to a temporary directory so that a planted import never touches the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "lensnet", tmp_path / "lensnet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(where: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([LINT, "--no-logo", "--no-cache"], cwd=where, env=env, capture_output=True, text=True,
                          timeout=300)


def _plant(where: Path, module: str, line: str) -> None:
    path = where / "lensnet" / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_source_tree_keeps_its_contracts(tmp_path: Path) -> None:
    done = _lint(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # core is the floor: it may not reach up to the benchmarks
        ("core/errors.py", "from lensnet.bench.common import save_results  # noqa", "Layers"),
        # the artifacts layer may not import a task (what tasks import, the reverse)
        ("artifacts/runs.py", "import lensnet.tasks.base  # noqa", "Layers"),
        # a library module may not import a command
        ("training/trainer.py", "import lensnet.fit  # noqa", "No library module imports a command module"),
        # data and models are independent siblings of one layer
        ("data/schema.py", "import lensnet.models.registry  # noqa", "Layers"),
    ],
)
def test_a_planted_upward_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    where = _copy(tmp_path)
    _plant(where, module, line)
    done = _lint(where)
    assert done.returncode != 0, done.stdout
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout
    assert "lensnet." + module.removesuffix(".py").replace("/", ".") in broken, done.stdout
