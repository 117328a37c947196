"""The bridge from a config to a task model: the backbone factory a task's `build` receives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lensnet.models import create_model
from lensnet.tasks.base import BackboneFactory, Task


def backbone_factory(model_config: dict) -> BackboneFactory:
    """input shape -> the configured registry backbone (`model.name` with `model.args`, and
    `model.weights`: pretrained weights adapted to the input, see lensnet.models.transfer)."""
    name, args = model_config["name"], dict(model_config.get("args") or {})
    if model_config.get("weights"):
        args["weights"] = model_config["weights"]

    def make(input_shape: Sequence[int]) -> Any:
        return create_model(name, tuple(input_shape), **args)

    return make


def build_task_model(task: Task, config: dict, info: Any) -> Any:
    """The task's own model for this config and dataset (call inside the strategy's scope)."""
    return task.build(backbone_factory(config["model"]), info, config)
