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
from lensnet.tasks.survey_metrics import SURVEY_FIELDS, headline, survey_scores


@dataclass
class LensFindingConfig:
    positive_class: str | None = None  # which class is "positive"; None = "lens" when the dataset has it
    # survey metrics (lensnet.tasks.survey_metrics): purity is stated at this prevalence (Euclid Q1: 1:1000)
    survey_prevalence: float = 0.001
    bootstrap: int = 200  # bootstrap replicates of every survey figure's interval (0: no intervals)


@register_task
class LensFinding(ClassificationTask):
    name = "lens_finding"
    description = ("binary lens / non-lens; ROC AUC, PR AUC, TPR at 0 and 10 false positives, survey metrics "
                   "(TPR at FPR 1e-3/1e-4, purity at a prevalence, per-bin recall) with bootstrap intervals")
    monitor = "roc_auc"
    monitor_mode = "max"
    Config = LensFindingConfig

    def check_config(self) -> None:
        p = self.config.survey_prevalence
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise LensnetError(f"task.survey_prevalence: expected a share of lenses in (0, 1), got {p!r}")
        b = self.config.bootstrap
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise LensnetError(f"task.bootstrap: expected an integer >= 0, got {b!r}")

    def setup(self, info: Any, state: dict | None = None) -> None:
        # per-record fields the survey metrics break recall and false positives down by, when stored
        schema = getattr(info, "schema", None)
        self.score_fields = tuple(name for name in SURVEY_FIELDS if schema is not None and name in schema)
        population = (getattr(info, "manifest", None) or {}).get("population") or {}
        self.subtype_names = list(population.get("non_lens_subtypes") or [])
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
        return self.score_records(y_true, y_pred, {})

    def score_records(self, y_true: np.ndarray, y_pred: np.ndarray, records: dict[str, np.ndarray]) -> dict:
        p = np.asarray(y_pred)[:, 0]
        out = scores.binary_scores(y_true, p)
        survey = survey_scores(y_true, p, records=records, subtype_names=getattr(self, "subtype_names", None),
                               prevalence=float(self.config.survey_prevalence), n_boot=int(self.config.bootstrap))
        out.update(headline(survey))
        out["survey"] = survey
        return out

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

