"""A task defined outside lensnet, as a user would write one: the proof of the task contract.

`contract_two_loss` classifies the images AND regresses their mean brightness from the same pooled
features, with its own training step: cross-entropy + `aux_weight` x squared error. The brightness
head is a training-only branch: the exported model returns the class probabilities only. During
training `prepare` adds noise keyed by the batch's context (seed, epoch, step), so the noise is
reproducible and a resumed or multi-worker run sees the same noise.

Imported by tests/test_contract.py; `python -m contract_task ARGS` (with tests/ on PYTHONPATH) is
`python -m lensnet.fit ARGS` with this task registered: how the multi-worker test's workers get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError, cli_exit
from lensnet.tasks import BatchContext, MetricInputs, Task, TaskModel, register_task
from lensnet.tasks.base import pooled_network
from lensnet.tasks.model import average_loss
from lensnet.tasks.scores import multiclass_scores


@dataclass
class TwoLossConfig:
    aux_weight: float = 0.5  # weight of the brightness loss beside the cross-entropy
    noise: float = 0.05  # std of the training noise added by `prepare`


@keras.saving.register_keras_serializable(package="lensnet_tests")
class TwoLossModel(TaskModel):
    """Its own objective: cross-entropy on "probabilities" + aux_weight x MSE on "brightness"."""

    def __init__(self, network: keras.Model, aux_weight: float = 0.5, **kwargs: Any) -> None:
        super().__init__(network, **{"output": "probabilities", **kwargs})
        self.aux_weight = float(aux_weight)
        self.cross_entropy = keras.losses.CategoricalCrossentropy(reduction="none")

    def compute_step(self, x, y, sample_weight=None, training=False, global_batch_size=None):
        outputs = self.network(x, training=training)
        ce = self.cross_entropy(y["label"], outputs["probabilities"])
        se = tf.reduce_mean(tf.square(outputs["brightness"] - y["brightness"]), axis=-1)
        per_example = ce + self.aux_weight * se
        if sample_weight is not None:
            per_example = per_example * sample_weight
        loss = average_loss(per_example, global_batch_size) + self.regularization()
        return loss, MetricInputs(y["label"], outputs["probabilities"])

    def get_config(self) -> dict:
        return {**super().get_config(), "aux_weight": self.aux_weight}


@register_task
class TwoLossTask(Task):
    name = "contract_two_loss"
    description = "test task: classes + auxiliary brightness regression, its own train step"
    monitor = "accuracy"
    monitor_mode = "max"
    Config = TwoLossConfig
    fields = ("image", "label")

    def check_config(self) -> None:
        if self.config.aux_weight < 0:
            raise LensnetError(f"task.aux_weight must be >= 0, got {self.config.aux_weight}")

    def setup(self, info: Any, state: dict | None = None) -> None:
        self.class_names = list(state["class_names"] if state else info.class_names)
        if list(info.class_names) != self.class_names:
            raise LensnetError(f"dataset {info.path} classes differ from the run's")

    def state(self) -> dict:
        return {"class_names": self.class_names}

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        image = batch["image"]
        brightness = tf.reduce_mean(image, axis=[1, 2, 3])[:, None]
        if context.training:
            image = image + self.config.noise * tf.random.stateless_normal(tf.shape(image), context.random_seed())
        y = {"label": tf.one_hot(batch["label"], len(self.class_names)), "brightness": brightness}
        return image, y, tf.ones(tf.shape(brightness)[:1])

    def build(self, backbone_factory, info: Any, config: dict) -> TaskModel:
        def heads(features: Any) -> dict:
            return {"probabilities": keras.layers.Dense(len(self.class_names), activation="softmax",
                                                        dtype="float32", name="probabilities")(features),
                    "brightness": keras.layers.Dense(1, dtype="float32", name="brightness")(features)}

        network = pooled_network(backbone_factory, info.image_shape, heads, name="two_loss_network")
        return TwoLossModel(network, aux_weight=self.config.aux_weight, metrics_list=self.metrics(),
                            name="two_loss_model")

    def metrics(self) -> list:
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    def targets(self, batch: dict) -> np.ndarray:
        return np.asarray(batch["label"])

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        return multiclass_scores(y_true, y_pred, self.class_names)

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        return {}

    def output_spec(self) -> OutputSpec:
        return OutputSpec("probabilities", "probabilities", columns=tuple(f"p_{c}" for c in self.class_names),
                          class_names=tuple(self.class_names))


if __name__ == "__main__":
    from lensnet.fit import main

    cli_exit(main)
