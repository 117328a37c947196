"""The training config: defaults, per-task presets (configs/tasks/*.yaml), strict resolution."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from lensnet.core.config import CONFIG_DIR, deep_update, load_yaml, merge, parse_set, put_dotted
from lensnet.core.errors import LensnetError

FIT_DEFAULTS: dict[str, Any] = {
    "task": {"name": None},  # + the chosen task's own section (its Config dataclass), filled by resolve_fit_config
    "data": {
        "path": None,  # dataset directory; None = tfrecords/<default_dataset>, simulated if missing
        "default_dataset": None,  # preset simulated when `path` is not given and does not exist yet
        "default_num": 4000,
        "train_split": "train",
        "val_split": "val",
        "test_split": "test",
        "batch_size": 64,
        # standard | minmax | dataset | none | asinh, or a spec mapping, e.g. {method: asinh, beta: 3, bands: joint}
        # (lensnet/data/normalise.py)
        "normalise": "standard",
        # auto: the symmetry the dataset's manifest records (rot180 for the DeepLense replicas' fixed lens and
        # source, flips for a fixed lens alone, d4 for randomly oriented lenses; d4 when it records none)
        # | d4 | flips | rot180 | none
        "augment": "auto",
        "shuffle_buffer": None,
        "cache": "auto",  # true | false | auto (cache splits smaller than cache_limit_mb)
        "cache_limit_mb": 2048,
        # label efficiency: train on a fixed fraction of the training split, chosen by a seeded hash of the
        # record ids (nested: for one subset_seed, the 1% subset is inside the 10% one)
        "train_fraction": 1.0,
        "subset_seed": 0,
        # records: read the training split | simulate: fresh records from the dataset's own simulator, streamed
        # from simulate_workers processes (lensnet/simulate/stream.py); stream_start: the first record index
        # (null = the dataset's record count: no streamed record is one of the dataset's own)
        "source": "records",
        "simulate_workers": 2,
        "stream_start": None,
    },
    "model": {
        "name": "cnn_small",
        "args": {},  # builder overrides, checked by the model registry
        "dropout": 0.0,  # before the task head
        "weights": None,  # local .weights.h5 or keras-hub preset directory (lensnet.models.transfer)
        "init": None,  # a run directory (e.g. a pretraining run): start from its backbone weights
        "freeze": None,  # null | backbone (linear probe: only the task's head trains)
    },
    "train": {
        "epochs": 10,
        "steps_per_epoch": None,  # None = one pass over the training split
        "optimizer": "adamw",  # adamw | adam | lamb | sgd
        "learning_rate": 1.0e-3,
        # the peak rate is learning_rate x learning_rate_scale; a model's registry recipe sets the scale
        # (ViT, DeiT: 0.1, lensnet.models.registry.PLAIN_TRANSFORMER_RECIPE), so one task preset serves all
        "learning_rate_scale": 1.0,
        "weight_decay": 1.0e-4,
        "momentum": 0.9,  # sgd
        "schedule": "cosine",  # cosine | constant | plateau
        "warmup_epochs": 0.0,
        "min_lr_ratio": 0.0,  # cosine floor as a fraction of learning_rate
        "plateau": {"factor": 0.5, "patience": 3, "min_lr": 1.0e-6},
        "early_stopping": {"patience": 0, "min_delta": 0.0},  # patience 0 = off
        "label_smoothing": 0.0,
        "class_weight": None,  # null | balanced | {class_name: weight}
        "mixed_precision": False,
        "clipnorm": None,
        # Precise BatchNorm: before each validation (so also before each checkpoint), set the BN moving
        # statistics to the average batch statistics of this many unaugmented training batches; 0 = off.
        # Keras's moving averages lag fast-changing weights on short epochs (validation collapses to
        # constant outputs while training accuracy is high): see lensnet.training.precise_bn.
        "precise_bn_batches": 32,
        "monitor": None,  # default: the task's validation metric
        # iterative erasing (lensnet.training.erasing): none | random | attention (rollout / Grad-CAM)
        "erasing": {"mode": "none", "every": 1, "fraction": 0.1},
    },
    "run": {
        "dir": "runs",
        "name": None,  # default <task>-<model>-<UTC time>
        "seed": 0,
        "deterministic": True,  # tf.config.experimental.enable_op_determinism
        "verbose": "auto",  # auto | 0 | 1 | 2 (Keras fit verbosity)
        "tensorboard_images": 16,  # test images with predictions shown in TensorBoard
    },
    "distribute": {
        "strategy": "auto",  # auto | default | mirrored | multiworker
        "cpu_devices": 1,  # split the CPU into this many logical devices (tests, CPU-only mirroring)
    },
}
OPEN_KEYS = ("model.args", "train.class_weight")
ERASING_MODES = ("none", "random", "attention")
TASK_DIR = CONFIG_DIR / "tasks"


def task_presets() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def resolve_fit_config(
    task: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: dict | None = None,
) -> dict:
    """Defaults <- configs/tasks/<task>.yaml <- config file <- overrides (CLI flags, then --set)."""
    from lensnet.tasks import get_task_class

    user = load_yaml(config_file) if config_file else {}
    overrides = overrides or {}
    name = (
        (overrides.get("task") or {}).get("name")
        or task
        or (user.get("task") or {}).get("name")
    )
    if not name:
        raise LensnetError("no task given: use --task NAME (see --list-tasks)")
    task_class = get_task_class(name)
    config = copy.deepcopy(FIT_DEFAULTS)
    config["task"] = {"name": name, **task_class.config_defaults()}
    config = _with_model_recipe(config, user, overrides)
    preset = TASK_DIR / f"{name}.yaml"
    if preset.is_file():
        config = merge(config, load_yaml(preset, "task preset"), open_keys=OPEN_KEYS)
        chosen = [(tree.get("model") or {}).get("name") for tree in (user, overrides)]
        chosen = next((m for m in reversed(chosen) if m), None)
        if chosen and chosen != config["model"]["name"]:
            config["model"]["args"] = {}  # the preset's model arguments belong to the preset's model
    config = merge(config, user, open_keys=OPEN_KEYS, where=f"config ({config_file})" if config_file else "config")
    config = merge(config, overrides, open_keys=OPEN_KEYS)
    config["task"]["name"] = name
    if config["model"].get("init") and not any((tree.get("model") or {}).get("name") for tree in (user, overrides)):
        _model_of_init_run(config["model"])
    validate(config)
    return config


def _with_model_recipe(config: dict, user: dict, overrides: dict) -> dict:
    """The chosen model's own `train` defaults (its registry `train_defaults`) over fit's defaults: the
    task preset, a config file and the command line still win."""
    import lensnet.models  # noqa: F401  (registers every family)
    from lensnet.models.registry import train_defaults

    chosen = [(tree.get("model") or {}).get("name") for tree in (user, overrides)]
    preset = TASK_DIR / f"{config['task']['name']}.yaml"
    preset_model = (load_yaml(preset, "task preset").get("model") or {}).get("name") if preset.is_file() else None
    recipe = train_defaults(next((m for m in reversed(chosen) if m), None) or preset_model or config["model"]["name"])
    return merge(config, {"train": recipe}, open_keys=OPEN_KEYS) if recipe else config


def _model_of_init_run(model: dict) -> None:
    """With --init and no --model, the model is the init run's (name and arguments): the only one that fits."""
    path = Path(str(model["init"])) / "config.yaml"
    if path.is_file():
        theirs = load_yaml(path, "run config").get("model") or {}
        if theirs.get("name"):
            model["name"], model["args"] = theirs["name"], copy.deepcopy(theirs.get("args") or {})


def validate(config: dict) -> None:
    from lensnet.tasks import get_task_class

    train, data, run = config["train"], config["data"], config["run"]
    get_task_class(config["task"]["name"]).from_config(config["task"], train)  # the task checks its own section

    def positive(section: dict, key: str, where: str, kind: type = int, allow_zero: bool = False) -> None:
        value = section[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (value >= 0 if allow_zero else value > 0)
        if kind is int:
            ok = ok and float(value).is_integer()
        if not ok:
            raise LensnetError(f"{where}.{key} must be a {'non-negative' if allow_zero else 'positive'} "
                               f"{'integer' if kind is int else 'number'}, got {value!r}")

    positive(train, "epochs", "train")
    positive(data, "batch_size", "data")
    positive(train, "learning_rate", "train", float)
    positive(train, "learning_rate_scale", "train", float)
    positive(train, "weight_decay", "train", float, allow_zero=True)
    positive(train, "warmup_epochs", "train", float, allow_zero=True)
    positive(train, "precise_bn_batches", "train", allow_zero=True)
    positive(run, "seed", "run", allow_zero=True)
    data.setdefault("train_fraction", 1.0)  # absent from the config.yaml of runs made before it existed
    data.setdefault("subset_seed", 0)
    positive(data, "subset_seed", "data", allow_zero=True)
    fraction = data["train_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise LensnetError(f"data.train_fraction must be in (0, 1], got {fraction!r}")
    if train["steps_per_epoch"] is not None:
        positive(train, "steps_per_epoch", "train")
    data.setdefault("source", "records")  # absent from the config.yaml of runs made before it existed
    data.setdefault("simulate_workers", 2)
    data.setdefault("stream_start", None)
    positive(data, "simulate_workers", "data")
    if data["stream_start"] is not None:
        positive(data, "stream_start", "data", allow_zero=True)
    choices = {
        ("data", "source"): ("records", "simulate"),
        ("train", "optimizer"): ("adamw", "adam", "lamb", "sgd"),
        ("train", "schedule"): ("cosine", "constant", "plateau"),
        ("distribute", "strategy"): ("auto", "default", "mirrored", "multiworker"),
    }
    from lensnet.data.augment import normalise_augment
    from lensnet.data.normalise import METHODS, check_spec

    if isinstance(data["normalise"], dict):
        data["normalise"] = check_spec(data["normalise"])
    elif data["normalise"] not in METHODS:
        raise LensnetError(f"data.normalise must be one of {', '.join(METHODS)} or a spec mapping; "
                           f"got {data['normalise']!r}")

    if data["augment"] != "auto":  # resolved by the trainer once the dataset is open
        data["augment"] = normalise_augment(data["augment"])  # `none` (string) and null both mean none
    for (section, key), valid in choices.items():
        if config[section][key] not in valid:
            raise LensnetError(f"{section}.{key} must be one of {', '.join(map(str, valid))}; "
                               f"got {config[section][key]!r}")
    train["erasing"] = check_erasing(train.get("erasing", FIT_DEFAULTS["train"]["erasing"]))
    if not 0 <= float(train["label_smoothing"]) < 1:
        raise LensnetError(f"train.label_smoothing must be in [0, 1), got {train['label_smoothing']!r}")
    if not isinstance(config["model"]["args"], dict):
        raise LensnetError("model.args must be a mapping of builder arguments")
    positive(config["distribute"], "cpu_devices", "distribute")
    if config["model"].get("freeze") not in (None, "backbone"):
        raise LensnetError(f"model.freeze must be backbone or null, got {config['model']['freeze']!r}")


def check_erasing(section: Any) -> dict:
    """The validated `train.erasing` section (one-line errors name the key)."""
    if not isinstance(section, dict):
        raise LensnetError(f"train.erasing must be a mapping (mode, every, fraction), got {section!r}")
    unknown = sorted(set(section) - {"mode", "every", "fraction"})
    if unknown:
        raise LensnetError(f"unknown config key 'train.erasing.{unknown[0]}'; valid keys: every, fraction, mode")
    mode, every, fraction = section.get("mode", "none"), section.get("every", 1), section.get("fraction", 0.1)
    if mode not in ERASING_MODES:
        raise LensnetError(f"train.erasing.mode must be one of {', '.join(ERASING_MODES)}, got {mode!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise LensnetError(f"train.erasing.every must be a positive integer (epochs), got {every!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) < 1.0:
        raise LensnetError(f"train.erasing.fraction must be in [0, 1), got {fraction!r}")
    return {"mode": mode, "every": int(every), "fraction": float(fraction)}


def cli_overrides(args: Any) -> dict:
    """The command-line flags as a config tree (the --set items come last and win)."""
    tree: dict = {}

    def put(path: str, value: object) -> None:
        if value is not None:
            put_dotted(tree, path, value)

    put("task.name", args.task)
    put("task.target", args.target)
    put("task.teacher", getattr(args, "teacher", None))
    put("model.name", args.model)
    put("model.init", getattr(args, "init", None))
    put("model.freeze", getattr(args, "freeze", None))
    put("data.path", args.data)
    put("data.batch_size", args.batch_size)
    put("train.epochs", args.epochs)
    put("train.learning_rate", args.lr)
    put("run.seed", args.seed)
    put("run.name", args.run_name)
    put("run.dir", args.runs)
    put("distribute.strategy", args.strategy)
    put("distribute.cpu_devices", args.cpu_devices)
    return deep_update(tree, parse_set(args.set))


def resume_config(run_dir: str, overrides: dict) -> dict:
    """The run's own config.yaml for --resume; only train.epochs may be overridden."""
    allowed = {"train": {"epochs"}}
    for section, values in overrides.items():
        extra = set(values) - allowed.get(section, set()) if isinstance(values, dict) else {section}
        if extra:
            raise LensnetError(f"with --resume the run's own config.yaml is used; only --epochs may change "
                               f"(got {section}.{sorted(extra)[0]})")
    config = merge(load_run_config(Path(run_dir)), overrides, open_keys=OPEN_KEYS)
    config["train"].setdefault("learning_rate_scale", 1.0)  # a run written before the key: the task's rate
    path = Path(run_dir)
    config["run"]["dir"], config["run"]["name"] = str(path.parent), path.name
    validate(config)
    return config


def load_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise LensnetError(f"cannot resume: {run_dir} has no config.yaml")
    return load_yaml(path, "run config")
