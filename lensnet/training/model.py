"""A task model: backbone from the registry + the task's head, one Keras functional model."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from lensnet.models import create_model
from lensnet.models.pooling import pool_features
from lensnet.tasks.base import Task


def build_model(task: Task, model_config: dict, input_shape: Sequence[int]) -> keras.Model:
    name = model_config["name"]
    backbone = create_model(name, tuple(input_shape), **dict(model_config.get("args") or {}))
    inputs = keras.Input(tuple(input_shape), name="images")
    features = pool_features(backbone, backbone(inputs))  # backbones return maps or tokens
    if model_config.get("dropout"):
        features = keras.layers.Dropout(float(model_config["dropout"]), name="head_dropout")(features)
    return keras.Model(inputs, task.head(features), name=f"{task.name}_{name}")
