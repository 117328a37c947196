"""Shared by the classification tasks: class checks and class weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from lensnet.errors import LensnetError
from lensnet.tasks.base import Task, require_splits


class ClassificationTask(Task):
    fields = ("image", "label")

    def check_dataset(self, info: Any) -> None:
        if len(info.class_names) < 2:
            raise LensnetError(
                f"task {self.name} needs a labelled dataset with at least 2 classes; {info.path} has "
                f"{len(info.class_names)} ({', '.join(info.class_names) or 'unlabelled'})"
            )
        require_splits(info)
        self.class_names = list(info.class_names)
        self.class_weights = self._class_weights(info)

    def _class_weights(self, info: Any) -> np.ndarray | None:
        setting = self.train_config.get("class_weight")
        if setting in (None, False, "none"):
            return None
        k = len(self.class_names)
        if setting == "balanced":
            per_class = info.manifest["splits"]["train"].get("per_class", {})
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

    def weights(self, labels):
        import tensorflow as tf

        if self.class_weights is None:
            return tf.ones(tf.shape(labels)[:1], tf.float32)
        return tf.gather(tf.constant(self.class_weights), labels)

    def targets(self, batch: dict) -> np.ndarray:
        return np.asarray(batch["label"])

    def run_fields(self) -> dict:
        return {"class_names": self.class_names}
