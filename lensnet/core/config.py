"""YAML configs: safe loading, strict merging (unknown keys are errors) and `--set key=value`."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lensnet.core.errors import LensnetError


def _config_dir() -> Path:
    """The shipped YAML presets: package data lensnet/configs when installed (setup.py maps the source tree's
    top-level configs/ there), else the source tree's configs/ itself (running from a checkout)."""
    from importlib.resources import files

    packaged = files("lensnet") / "configs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = _config_dir()


def load_yaml(path: str | os.PathLike, what: str = "config") -> dict:
    """Read a YAML mapping with `yaml.safe_load`; every failure is a one-line LensnetError."""
    path = Path(path)
    if not path.is_file():
        raise LensnetError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise LensnetError(f"{what} file {path}{where}: invalid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LensnetError(f"{what} file {path}: cannot read ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LensnetError(f"{what} file {path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def dump_yaml(data: Mapping) -> str:
    return yaml.safe_dump(_plain(data), sort_keys=False, default_flow_style=None)


def _plain(value: Any) -> Any:
    """Convert tuples and numpy scalars so that safe_dump accepts them."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):
        return value.item()
    return value


def _unknown_key(key: str, valid: Iterable[str], where: str) -> LensnetError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return LensnetError(f"unknown {where} key '{key}'{hint}; valid keys: {', '.join(valid)}")


def check_keys(section: Any, keys: Iterable[str], where: str, what: str) -> dict:
    """`section` as a mapping holding exactly `keys` (errors name the first unknown or missing key)."""
    keys = tuple(keys)
    if not isinstance(section, Mapping):
        raise LensnetError(f"{where}: expected a mapping of {', '.join(keys)}, got {section!r}")
    for key in section:
        if key not in keys:
            raise LensnetError(f"{where}.{key}: unknown key; {what} has {', '.join(keys)}")
    for key in keys:
        if key not in section:
            raise LensnetError(f"{where}.{key}: missing; {what} has {', '.join(keys)}")
    return dict(section)


def merge(
    base: Mapping,
    override: Mapping,
    *,
    open_keys: Iterable[str] = (),
    where: str = "config",
    _prefix: str = "",
) -> dict:
    """Return `base` updated by `override`, refusing keys that `base` does not define.

    `open_keys` lists dotted paths whose mappings accept any key (free-form
    arguments such as a model builder's overrides, checked later by their user).
    """
    open_keys = set(open_keys)
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        dotted = f"{_prefix}{key}"
        if _prefix.rstrip(".") in open_keys:
            result[key] = copy.deepcopy(value)
            continue
        if key not in result:
            raise _unknown_key(dotted, result.keys(), where)
        if isinstance(result[key], Mapping) and result[key] is not None and isinstance(value, Mapping):
            result[key] = merge(result[key], value, open_keys=open_keys, where=where, _prefix=f"{dotted}.")
        elif isinstance(result[key], Mapping) and dotted not in open_keys and value is not None:
            raise LensnetError(f"{where} key '{dotted}' must be a mapping, got {value!r}")
        else:
            result[key] = copy.deepcopy(value)
    return result


def deep_update(base: Mapping, update: Mapping) -> dict:
    """Plain recursive merge (no key checks): for combining override trees before `merge` checks them."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def put_dotted(tree: dict, key: str, value: Any) -> None:
    """tree["a"]["b"] = value for key "a.b", creating the intermediate mappings."""
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def parse_set(items: Iterable[str] | None) -> dict:
    """Turn `["a.b=1", "c=[1, 2]"]` into `{"a": {"b": 1}, "c": [1, 2]}`; values are YAML."""
    tree: dict = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise LensnetError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        value = _yaml11_float(value)
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LensnetError(f"--set '{item}' conflicts with an earlier --set of '{part}'")
        node[parts[-1]] = value
    return tree


def _yaml11_float(value: Any) -> Any:
    """YAML 1.1 reads `1e6` (no dot) as a string; on the command line a user means the number."""
    if isinstance(value, list):
        return [_yaml11_float(v) for v in value]
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if any(c.isdigit() for c in value) and value.strip().lower() not in ("nan", "inf", "-inf", "+inf"):
            return number
    return value


def get_dotted(config: Mapping, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise LensnetError(f"config has no key '{key}'")
        node = node[part]
    return node
