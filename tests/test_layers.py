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


def test_the_contracts_name_every_command_module() -> None:
    """A new command must join the commands layer and the forbidden list, or the contracts would not see it."""
    import tomllib

    from lensnet.cli import COMMANDS

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")
    forbidden = next(c for c in contracts if c["type"] == "forbidden")
    top = {f"lensnet.{name.strip()}" for name in layers["layers"][0].split(":")}
    commands = {module for module, _ in COMMANDS.values() if not module.endswith(".__main__")} | {"lensnet.cli"}
    assert top == commands
    assert set(forbidden["forbidden_modules"]) == commands | {"lensnet.*.__main__"}


def test_every_package_says_what_it_holds_and_what_it_may_import() -> None:
    import ast

    missing = []
    for init in sorted((ROOT / "lensnet").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if "Layer:" not in doc or len(doc.split("Layer:")[0].strip()) < 20:
            missing.append(init.parent.name)
    assert missing == []
