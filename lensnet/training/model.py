"""The bridge from a config to a task model: the backbone factory a task's `build` receives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lensnet.models import create_model
from lensnet.tasks.base import BackboneFactory, Task


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


def build_task_model(task: Task, config: dict, info: Any) -> Any:
    """The task's own model for this config and dataset (call inside the strategy's scope)."""
    return task.build(backbone_factory(config["model"], task.model_kind), info, config)
