"""Substructure classification: no substructure, CDM subhaloes, axion vortices (any class set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.outputs import OutputSpec
from lensnet.tasks import plots, scores
from lensnet.tasks.base import BackboneFactory, BatchContext, pooled_network, register_task
from lensnet.tasks.classification import ClassificationTask
from lensnet.tasks.distillation import DistillationOptions, build_student, check_options


@register_task
class Substructure(ClassificationTask):
    name = "substructure"
    description = "multi-class substructure; accuracy, macro and per-class one-vs-rest ROC AUC, confusion matrix"
    monitor = "macro_roc_auc"
    monitor_mode = "max"
    Config = DistillationOptions  # `--teacher RUN` (task.teacher) trains with knowledge distillation

    def check_config(self) -> None:
        check_options(self.config)

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        import tensorflow as tf

        labels = self.labels(batch)
        return batch["image"], tf.one_hot(labels, len(self.class_names)), self.weights(labels)

    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        import keras

        from lensnet.tasks.model import SupervisedModel

        if self.config.teacher:
            return build_student(self, backbone_factory, info, config)
        def head(features: Any) -> Any:
            return keras.layers.Dense(len(self.class_names), activation="softmax", dtype="float32",
                                      name="class_probabilities")(features)

        network = pooled_network(backbone_factory, info.image_shape, head, dropout=config["model"].get("dropout"),
                                 name=f"{self.name}_{config['model']['name']}")
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.label_smoothing())
        return SupervisedModel(network, loss, metrics_list=self.metrics(), name=f"{self.name}_model")

    def metrics(self) -> list:
        import keras

        return [keras.metrics.CategoricalAccuracy(name="accuracy"),
                keras.metrics.AUC(multi_label=True, num_labels=len(self.class_names), name="macro_roc_auc")]

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        return scores.multiclass_scores(y_true, y_pred, self.class_names)

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        probs = np.asarray(y_pred)
        curves = [(name, y_true == c, probs[:, c]) for c, name in enumerate(self.class_names)]
        matrix = scores.multiclass_scores(y_true, probs, self.class_names)["confusion_matrix"]
        return {
            "roc": plots.save(plots.roc_figure(curves), out_dir / "roc.png"),
            "confusion_matrix": plots.save(plots.confusion_figure(np.array(matrix), self.class_names),
                                           out_dir / "confusion_matrix.png"),
        }

    def output_spec(self) -> OutputSpec:
        return OutputSpec("probabilities", "probabilities", columns=tuple(f"p_{c}" for c in self.class_names),
                          class_names=tuple(self.class_names))

    def describe(self, y_pred_row: np.ndarray) -> str:
        c = int(np.argmax(y_pred_row))
        return f"{self.class_names[c]} {float(y_pred_row[c]):.2f}"
