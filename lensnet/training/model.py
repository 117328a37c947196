"""The bridge from a config to a task model: the backbone factory a task's `build` receives,
and the model options that act on any task's backbone (`model.init`, `model.freeze`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lensnet.core.errors import LensnetError
from lensnet.models import create_model
from lensnet.tasks.base import BackboneFactory, Task

FREEZE_CHOICES = (None, "backbone")


def backbone_factory(model_config: dict, kind: str = "backbone") -> BackboneFactory:
    """input shape -> the configured registry model (`model.name` with `model.args`, and
    `model.weights`: pretrained weights adapted to the input, see lensnet.models.transfer), of the
    task's `kind`.

    Keyword arguments are defaults the task derives from the data (a super-resolution scale):
    `model.args` given by the user override them, and the task checks the result fits its data.
    """
    name, args = model_config["name"], dict(model_config.get("args") or {})
    if model_config.get("weights"):
        args["weights"] = model_config["weights"]

    def make(input_shape: Sequence[int], **from_data: Any) -> Any:
        return create_model(name, tuple(input_shape), kind=kind, **{**from_data, **args})

    return make


def build_task_model(task: Task, config: dict, info: Any, init: bool = True) -> Any:
    """The task's own model for this config and dataset (call inside the strategy's scope).

    `model.init` (a run directory, e.g. a pretraining run) copies that run's backbone weights in,
    and its head's too when it is a run of the same task whose whole model fits (fine-tuning a
    trained finder on new data keeps the classifier it learned); skipped with init=False: a resumed
    run restores its own checkpoint instead. `model.freeze:
    backbone` makes the backbone non-trainable, which also keeps its BatchNormalization in inference
    mode (a linear probe when the task's head is linear).
    """
    model = task.build(backbone_factory(config["model"], task.model_kind), info, config)
    model_config = config["model"]
    if model_config.get("init") and init:
        load_init_weights(model, Path(model_config["init"]), config)
    if model_config.get("freeze") == "backbone":
        backbone(model).trainable = False
    return model


def backbone(model: Any) -> Any:
    from lensnet.models.backbone import find_backbone

    found = find_backbone(model)
    if found is None:
        raise LensnetError(f"model {model.name!r} holds no registry backbone")
    return found


def _describe(name: str, args: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in sorted((args or {}).items()))
    return f"{name}({shown})" if shown else name


def load_init_weights(model: Any, run_dir: Path, config: dict) -> str:
    """Copy the backbone weights of run `run_dir`'s best model into `model`'s backbone, and every
    weight of it when `run_dir` is a run of this config's task with the same weight shapes
    throughout; returns what was copied ("model" or "backbone").

    The backbone's architecture must match exactly (registry name, builder arguments, input shape): a
    mismatch is one LensnetError naming both.
    """
    from lensnet.artifacts.runs import read_run
    from lensnet.core.config import load_yaml
    from lensnet.tasks.checkpoints import load_model

    run = read_run(run_dir)
    source_config = load_yaml(run_dir / "config.yaml", "run config").get("model") or {}
    mine = _describe(config["model"]["name"], config["model"].get("args"))
    theirs = _describe(str(source_config.get("name")), source_config.get("args"))
    target = backbone(model)
    target_shape = list(target.input_shape[1:])
    if mine != theirs or list(run.input_shape) != target_shape:
        raise LensnetError(f"--init {run_dir}: its model {theirs} on input {tuple(run.input_shape)} does not match "
                           f"this run's model {mine} on input {tuple(target_shape)}")
    source_model = load_model(run_dir)
    source = backbone(source_model)
    a, b = source.get_weights(), target.get_weights()
    if source.get_config() != target.get_config() or [w.shape for w in a] != [w.shape for w in b]:
        raise LensnetError(f"--init {run_dir}: its {source.name} backbone's weights do not fit this run's "
                           f"{target.name} backbone")
    whole = source_model.get_weights()
    if run.task == config["task"]["name"] and [w.shape for w in whole] == [w.shape for w in model.get_weights()]:
        model.set_weights(whole)
        return "model"
    target.set_weights(a)
    return "backbone"
