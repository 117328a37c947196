"""Shared by the classification tasks: class checks, class weights, label mapping by class name."""

from __future__ import annotations

from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.tasks.base import Task


class ClassificationTask(Task):
    fields = ("image", "label")

    def setup(self, info: Any, state: dict | None = None) -> None:
        names = list(info.class_names)
        if state is None:
            if len(names) < 2:
                raise LensnetError(
                    f"task {self.name} needs a labelled dataset with at least 2 classes; {info.path} has "
                    f"{len(names)} ({', '.join(names) or 'unlabelled'})"
                )
            self.class_names = names
            self.class_weights = self._class_weights(info)
        else:
            self.class_names = list(state["class_names"])
            self.class_weights = None  # scoring only: the loss is not computed
            self.check_classes(info)
        # dataset label index -> the model's class index, matched by name (another class order still scores right)
        self.label_map = np.array([self.class_names.index(c) if c in self.class_names else -1 for c in names],
                                  dtype=np.int64)

    def check_classes(self, info: Any) -> None:
        """A dataset scored by a trained model must hold exactly the model's classes (any order)."""
        missing = [c for c in self.class_names if c not in info.class_names]
        extra = [c for c in info.class_names if c not in self.class_names]
        if missing or extra:
            raise LensnetError(f"dataset {info.path} classes ({', '.join(info.class_names) or 'none'}) differ from "
                               f"the run's ({', '.join(self.class_names)})")

    def state(self) -> dict:
        return {"class_names": list(self.class_names)}

    def _class_weights(self, info: Any) -> np.ndarray | None:
        setting = self.train_config.get("class_weight")
        if setting in (None, False, "none"):
            return None
        k = len(self.class_names)
        if setting == "balanced":
            per_class = info.manifest["splits"].get("train", {}).get("per_class", {})
            counts = np.array([per_class.get(name, 0) for name in self.class_names], dtype=np.float64)
            if (counts == 0).any():
                missing = self.class_names[int(np.argmin(counts))]
                raise LensnetError(f"class_weight balanced: class '{missing}' has no training records")
            return (counts.sum() / (k * counts)).astype(np.float32)
        if isinstance(setting, dict):
            unknown = set(setting) - set(self.class_names)
            if unknown:
                raise LensnetError(
                    f"train.class_weight: unknown class '{sorted(unknown)[0]}'; classes: {', '.join(self.class_names)}"
                )
            return np.array([float(setting.get(name, 1.0)) for name in self.class_names], dtype=np.float32)
        raise LensnetError(f"train.class_weight must be null, 'balanced' or a mapping class -> weight, got {setting!r}")

    def labels(self, batch: dict) -> Any:
        """TF: the batch's labels as the model's class indices."""
        import tensorflow as tf

        return tf.gather(tf.constant(self.label_map), batch["label"])

    def weights(self, labels: Any) -> Any:
        import tensorflow as tf

        if self.class_weights is None:
            return tf.ones(tf.shape(labels)[:1], tf.float32)
        return tf.gather(tf.constant(self.class_weights), labels)

    def label_smoothing(self) -> float:
        return float(self.train_config.get("label_smoothing", 0.0) or 0.0)

    def targets(self, batch: dict) -> np.ndarray:
        return self.label_map[np.asarray(batch["label"])]

