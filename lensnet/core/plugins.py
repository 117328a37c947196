"""The one registration mechanism: a plugin is a module of a package, and its package finds it.

Models, tasks, benchmarks and commands are each one file. A package imports every one of its
modules (`import_modules`), and each module registers what it defines as it is imported (`@register_model`,
`@register_task`, a benchmark's `run`/`add_arguments`); commands are found the same way (`command_modules`),
but read without importing them, so that `lensnet --help` starts at once. Why this: adding a model, a task or a
benchmark is then one new file and no list to edit, and nothing registers itself by accident outside its package.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType


def module_names(package: str, skip: tuple[str, ...] = ("__main__",)) -> list[str]:
    """Full names of the modules (and subpackages) directly inside `package`, sorted, less `skip`."""
    path = importlib.import_module(package).__path__
    return [f"{package}.{m.name}" for m in sorted(pkgutil.iter_modules(path), key=lambda m: m.name)
            if m.name not in skip]


def import_modules(package: str, skip: tuple[str, ...] = ("__main__",)) -> dict[str, ModuleType]:
    """Import every module of `package` (each registers what it defines); short name -> module."""
    return {name.rsplit(".", 1)[1]: importlib.import_module(name) for name in module_names(package, skip)}


def module_constant(path: Path, name: str) -> str | None:
    """A module's top-level string constant `name`, read from its source without importing it."""
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            return node.value.value
    return None


def declared_modules(package: str, constant: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, str]]:
    """Short name -> (module name, value) of the modules of `package` that declare the string `constant`
    (a subpackage counts through its __main__.py), read from their source without importing them."""
    root = Path(importlib.import_module(package).__path__[0])
    found: dict[str, tuple[str, str]] = {}
    for info in sorted(pkgutil.iter_modules([str(root)]), key=lambda m: m.name):
        if info.name in skip:
            continue
        if info.ispkg:
            path, module = root / info.name / "__main__.py", f"{package}.{info.name}.__main__"
        else:
            path, module = root / f"{info.name}.py", f"{package}.{info.name}"
        value = module_constant(path, constant) if path.is_file() else None
        if value is not None:
            found[info.name] = (module, value)
    return found


def command_modules(package: str = "lensnet") -> dict[str, tuple[str, str]]:
    """Command name -> (module defining main(argv), summary): every top-level module of `package` and every
    subpackage's `__main__.py` that declares a `SUMMARY` line."""
    return declared_modules(package, "SUMMARY")
