"""`lensnet COMMAND ...`: the console script dispatches to each CLI's main(argv) with the same behaviour."""

from __future__ import annotations

from helpers import ROOT

from lensnet.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "simulate", "convert", "evaluate", "tune", "export", "predict", "serve"):
        assert f"  {name} " in out
    assert main([]) == 2  # no command: usage, and a failing status for scripts


def test_subcommands_behave_like_python_m(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: run directory not found: {tmp_path / 'missing'}"
    assert main(["predict", "--help"]) == 0
    assert "--model" in capsys.readouterr().out
    assert main(["export"]) == 2  # argparse: missing required options
    assert "required" in capsys.readouterr().err
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_every_command_module_has_a_main_and_pyproject_installs_the_script():
    import importlib

    for module, _ in COMMANDS.values():
        assert callable(importlib.import_module(module).main)
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; lensnet supports 3.10)
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert [line for line in section.splitlines() if "=" in line] == ['lensnet = "lensnet.cli:console"']


# The serving side's commands. (fit/tune/evaluate are the task side's: lensnet/tune.py still imports
# lensnet.fit helpers today, left to that side's split.)
SERVING_CLIS = {"lensnet.export", "lensnet.predict", "lensnet.serve", "lensnet.pipeline", "lensnet.dashboard",
                "lensnet.cli"}


def test_no_module_imports_a_serving_command_or_a_private_name_or_another_test():
    """Libraries live in packages (lensnet/serving/, ...); the CLI modules import them, never the reverse."""
    import ast

    offenders = []
    for path in sorted((ROOT / "lensnet").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            where = f"{path.relative_to(ROOT)}: from {node.module}"
            if node.module in SERVING_CLIS and path.parent.name != "tests":
                offenders.append(where)
            if node.module.startswith("test_"):
                offenders.append(where)
            if node.module.startswith("lensnet.serving") and any(a.name.startswith("_") for a in node.names):
                offenders.append(f"{where} (private name)")
    assert offenders == []


def test_the_console_script_lists_every_command_module_and_nothing_else():
    """One list: every `lensnet/<cmd>.py` and `lensnet/<pkg>/__main__.py` is a `lensnet` subcommand (study too)."""
    modules = {f"lensnet.{p.stem}" for p in (ROOT / "lensnet").glob("*.py") if p.stem not in ("__init__", "cli")}
    modules |= {f"lensnet.{p.parent.name}.__main__" for p in (ROOT / "lensnet").glob("*/__main__.py")}
    assert {module for module, _ in COMMANDS.values()} == modules
    assert {"study", "strength", "simulate", "bench", "fit"} <= set(COMMANDS)


def test_study_is_a_subcommand(capsys):
    assert main(["study", "--help"]) == 0
    assert "detectability" in capsys.readouterr().out


def test_commands_live_only_at_the_top_level_or_as_main():
    """A module that builds an argparse parser and has main() is a command: it must be lensnet/<cmd>.py or a
    __main__.py (benchmarks only declare their arguments, for lensnet.bench's own parser)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "lensnet").rglob("*.py")):
        tree = ast.parse(path.read_text())
        has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
        parses = any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names) for n in tree.body)
        if has_main and parses and path.parent != ROOT / "lensnet" and path.name != "__main__.py":
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
