"""Lens finding: is there a strong lens in the cutout? Binary, scored as the lens-finding challenges do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError
from lensnet.tasks import plots, scores
from lensnet.tasks.base import BackboneFactory, BatchContext, pooled_network, register_task
from lensnet.tasks.classification import ClassificationTask


@dataclass
class LensFindingConfig:
    positive_class: str | None = None  # which class is "positive"; None = "lens" when the dataset has it


@register_task
class LensFinding(ClassificationTask):
    name = "lens_finding"
    description = "binary lens / non-lens; ROC AUC, PR AUC, accuracy, TPR at 0 and 10 false positives"
    monitor = "roc_auc"
    monitor_mode = "max"
    Config = LensFindingConfig

    def setup(self, info: Any, state: dict | None = None) -> None:
        if len(info.class_names) != 2:
            raise LensnetError(f"task lens_finding needs exactly 2 classes; {info.path} has "
                               f"{', '.join(info.class_names) or 'none'}")
        if state is None:
            super().setup(info)
            positive = self.config.positive_class or ("lens" if "lens" in self.class_names else None)
        else:
            positive = state["positive_class"]
            if positive not in info.class_names:
                raise LensnetError(f"dataset {info.path} has no class '{positive}'; classes: "
                                   f"{', '.join(info.class_names)}")
            # the negative class may be named otherwise in another dataset: only the positive one must match
            self.class_names = list(info.class_names)
            self.class_weights = None
            self.label_map = np.arange(2)
        if positive not in self.class_names:
            raise LensnetError(f"task.positive_class {positive!r} is not a class of {info.path}; classes: "
                               f"{', '.join(self.class_names)}")
        self.positive_class = positive
        self.positive_index = self.class_names.index(positive)

    def state(self) -> dict:
        return {**super().state(), "positive_class": self.positive_class}

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        import tensorflow as tf

        labels = self.labels(batch)
        y = tf.cast(tf.equal(labels, self.positive_index), tf.float32)[:, None]
        return batch["image"], y, self.weights(labels)

    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        import keras

        from lensnet.tasks.model import SupervisedModel

        def head(features: Any) -> Any:
            return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="lens_probability")(features)

        network = pooled_network(backbone_factory, info.image_shape, head, dropout=config["model"].get("dropout"),
                                 name=f"{self.name}_{config['model']['name']}")
        return SupervisedModel(network, keras.losses.BinaryCrossentropy(label_smoothing=self.label_smoothing()),
                               metrics_list=self.metrics(), name=f"{self.name}_model")

    def metrics(self) -> list:
        import keras

        return [keras.metrics.AUC(name="roc_auc"), keras.metrics.AUC(curve="PR", name="pr_auc"),
                keras.metrics.BinaryAccuracy(name="accuracy")]

    def targets(self, batch: dict) -> np.ndarray:
        return (np.asarray(batch["label"]) == self.positive_index).astype(np.int64)


    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        return scores.binary_scores(y_true, np.asarray(y_pred)[:, 0])

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        p = np.asarray(y_pred)[:, 0]
        pred = (p >= 0.5).astype(int)
        matrix = np.array([[np.sum((y_true == t) & (pred == q)) for q in (1, 0)] for t in (1, 0)])
        negative = self.class_names[1 - self.positive_index]
        return {
            "roc": plots.save(plots.roc_figure([(self.positive_class, y_true == 1, p)]), out_dir / "roc.png"),
            "pr": plots.save(plots.pr_figure(y_true == 1, p, self.positive_class), out_dir / "pr.png"),
            "confusion_matrix": plots.save(plots.confusion_figure(matrix, [self.positive_class, negative]),
                                           out_dir / "confusion_matrix.png"),
        }

    def describe(self, y_pred_row: np.ndarray) -> str:
        return f"p({self.positive_class})={float(y_pred_row[0]):.2f}"

    def output_spec(self) -> OutputSpec:
        return OutputSpec("probabilities", "probabilities", columns=(f"p_{self.positive_class}",),
                          class_names=tuple(self.class_names), positive_class=self.positive_class)

