"""Search spaces: configs/tuning/*.yaml -> checked parameters -> KerasTuner HyperParameters -> fit configs.

A space file maps dotted fit-config keys to one distribution each:

    extends: default.yaml                      # optional: start from another space file
    train.learning_rate: {log_uniform: [1.0e-4, 3.0e-3]}
    model.dropout: {uniform: [0.0, 0.4]}
    model.args.num_layers: {int: [4, 12, 2]}   # [low, high] or [low, high, step], both ends included
    data.augment: {choice: [d4, flip, null]}

Every problem (unknown key, empty range, unknown distribution, a value the fit
config refuses) is a one-line LensnetError naming the key, raised before any trial.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lensnet.core.config import CONFIG_DIR, load_yaml, merge, put_dotted
from lensnet.core.errors import LensnetError

SPACE_DIR = CONFIG_DIR / "tuning"
DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")
# The task and the run's identity define the search itself; devices are per machine.
NOT_TUNABLE = ("task", "run", "distribute")
_SCALARS = (int, float, str, bool)


@dataclass(frozen=True)
class Param:
    key: str  # dotted fit-config key
    kind: str  # one of DISTRIBUTIONS
    args: tuple  # (low, high) | (low, high, step) | choices

    @property
    def encoded(self) -> bool:
        """KerasTuner's Choice takes one scalar type; other choices (null, lists, mixed) travel as YAML text."""
        if self.kind != "choice":
            return False
        types = {type(v) for v in self.args}
        return not (len(types) == 1 and types <= set(_SCALARS)) and not types <= {int, float}

    def candidates(self) -> list:
        """Values checked against the fit config before the search: every choice, or both ends of a range."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]

    def add_to(self, hp: Any) -> None:
        """Declare this parameter in a KerasTuner `HyperParameters`."""
        if self.kind == "choice":
            hp.Choice(self.key, self.kt_values())
        elif self.kind == "int":
            hp.Int(self.key, int(self.args[0]), int(self.args[1]), step=int(self.args[2]) if len(self.args) > 2 else 1)
        else:
            hp.Float(self.key, float(self.args[0]), float(self.args[1]),
                     sampling="log" if self.kind == "log_uniform" else "linear")

    def kt_values(self) -> list:
        if self.encoded:
            return [yaml_text(v) for v in self.args]
        if {type(v) for v in self.args} == {int, float}:
            return [float(v) for v in self.args]
        return list(self.args)

    def decode(self, value: Any) -> Any:
        """A KerasTuner value back to what the fit config takes."""
        if self.encoded:
            return yaml.safe_load(value)
        if self.kind == "int":
            return int(value)
        if self.kind in ("log_uniform", "uniform"):
            return float(value)
        return value


def yaml_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@dataclass
class SearchSpace:
    path: Path
    params: list[Param]

    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def hyperparameters(self) -> Any:
        import keras_tuner as kt

        hp = kt.HyperParameters()
        for param in self.params:
            param.add_to(hp)
        return hp

    def overrides(self, values: dict) -> dict:
        """A trial's KerasTuner values as a config tree (keys KerasTuner adds, e.g. tuner/epochs, are skipped)."""
        tree: dict = {}
        for param in self.params:
            if param.key in values:
                put_dotted(tree, param.key, param.decode(values[param.key]))
        return tree

    def decoded(self, values: dict) -> dict:
        return {p.key: p.decode(values[p.key]) for p in self.params if p.key in values}

    def as_dict(self) -> dict:
        return {p.key: {p.kind: list(p.args)} for p in self.params}


def default_space_path(model_name: str, task_name: str) -> Path:
    """configs/tuning/<model family>.yaml, else <task>.yaml, else default.yaml."""
    from lensnet.models import model_info

    family = model_info(model_name)["family"]
    for stem in (family, task_name, "default"):
        path = SPACE_DIR / f"{stem}.yaml"
        if path.is_file():
            return path
    raise LensnetError(f"no search space for model family {family!r} in {SPACE_DIR}; give one with --space FILE")


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The raw key -> distribution mapping of a space file, its `extends` chain resolved."""
    path = Path(path).resolve()
    if path in seen:
        raise LensnetError(f"search space {path}: 'extends' loops back to itself")
    raw = load_yaml(path, "search space")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise LensnetError(f"search space {path}: 'extends' must name another space file, got {parent!r}")
    base_path = path.parent / parent
    if not base_path.is_file() and (SPACE_DIR / parent).is_file():
        base_path = SPACE_DIR / parent
    return {**_read(base_path, (*seen, path)), **raw}


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Parse a space file; every malformed entry is a one-line error naming its key."""
    path = Path(path)
    raw = _read(path)
    if not raw:
        raise LensnetError(f"search space {path} defines no parameters")
    params = [_param(path, str(key), spec) for key, spec in raw.items()]
    return SearchSpace(path, params)


def _param(path: Path, key: str, spec: Any) -> Param:
    where = f"search space {path}: {key}"
    if "." not in key or any(not part for part in key.split(".")):
        raise LensnetError(f"{where}: keys are dotted fit-config keys such as train.learning_rate")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise LensnetError(f"{where}: expected one distribution, e.g. {{log_uniform: [1.0e-4, 1.0e-2]}}, "
                           f"{{uniform: [0, 1]}}, {{int: [2, 8, 2]}} or {{choice: [a, b]}}; got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LensnetError(f"{where}: unknown distribution '{kind}'{hint}; valid: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list):
        raise LensnetError(f"{where}: {kind} takes a list, got {args!r}")
    if kind == "choice":
        if not args:
            raise LensnetError(f"{where}: empty choice")
        if len({yaml_text(v) for v in args}) != len(args):
            raise LensnetError(f"{where}: choice lists a value twice: {args}")
        return Param(key, kind, tuple(args))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in args)
    sizes = (2, 3) if kind == "int" else (2,)
    if not numbers or len(args) not in sizes:
        shape = "[low, high] or [low, high, step]" if kind == "int" else "[low, high]"
        raise LensnetError(f"{where}: {kind} takes {shape} of finite numbers, got {args!r}")
    low, high = args[0], args[1]
    if kind == "int" and not all(float(v).is_integer() for v in args):
        raise LensnetError(f"{where}: int takes integers, got {args!r}")
    if low >= high:
        raise LensnetError(f"{where}: empty range [{low}, {high}] (low must be below high)")
    if kind == "log_uniform" and low <= 0:
        raise LensnetError(f"{where}: log_uniform needs a positive low end, got {low}")
    if kind == "int" and len(args) == 3 and args[2] <= 0:
        raise LensnetError(f"{where}: int step must be positive, got {args[2]}")
    return Param(key, kind, tuple(int(v) for v in args) if kind == "int" else (float(low), float(high)))


def check_space(space: SearchSpace, base: dict, task: Any, image_shape: tuple[int, ...]) -> None:
    """Refuse, before any trial, a space whose keys or values the fit config, model or task would refuse."""
    from lensnet.models import model_info
    from lensnet.training.config import OPEN_KEYS, validate

    where = f"search space {space.path}"
    by_key = {p.key: p for p in space.params}
    models = by_key["model.name"].candidates() if "model.name" in by_key else [base["model"]["name"]]
    for param in space.params:
        section = param.key.split(".", 1)[0]
        if section in NOT_TUNABLE:
            raise LensnetError(f"{where}: {param.key} cannot be tuned ({', '.join(NOT_TUNABLE)} describe the search "
                               "itself; set them with the command's flags)")
        if param.key.startswith("model.args."):
            option = param.key.split(".")[2]
            for name in models:
                valid = model_info(name)["defaults"]
                if option not in valid:
                    raise LensnetError(f"{where}: {param.key}: '{option}' is not an option of model '{name}'; "
                                       f"valid options: {', '.join(sorted(valid))}")
        for value in param.candidates():
            tree: dict = {}
            put_dotted(tree, param.key, value)
            config = merge(base, tree, open_keys=OPEN_KEYS, where=where)  # unknown keys: one line with a hint
            try:
                validate(config)
                task.check_data_options(config["data"])
                if param.key.endswith(".patch_size") and value not in (None, "auto"):
                    from lensnet.models.layers import as_pair, check_patch_size

                    for name in models:
                        check_patch_size(tuple(image_shape), as_pair(value, "patch_size"), name)
            except LensnetError as exc:
                raise LensnetError(f"{where}: {param.key}={value!r} is refused: {exc}") from None


def trial_config(base: dict, space: SearchSpace, values: dict, *, run_dir: str | os.PathLike, run_name: str,
                 epochs: int | None = None) -> dict:
    """The fit config of one trial: `base` with the trial's values, run under run_dir/run_name."""
    from lensnet.training.config import OPEN_KEYS, validate

    config = merge(base, space.overrides(values), open_keys=OPEN_KEYS, where="trial")
    config["run"]["dir"], config["run"]["name"] = str(run_dir), run_name
    if epochs is not None:
        config["train"]["epochs"] = int(epochs)
    validate(config)
    return config
