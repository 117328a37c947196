"""Regression of any stored parameter by name (axion mass, subhalo mass fraction, Einstein radius...).

Records whose target does not apply (NaN) are masked out of the loss and the
metrics through a zero sample weight, never zero-filled into the fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError
from lensnet.tasks import plots, scores
from lensnet.tasks.base import BackboneFactory, BatchContext, Task, pooled_network, register_task

LOSSES = ("mse", "huber", "mae")
# Flips and rotations change these (ellipticity, shear, positions, angles) but not the stored value.
ORIENTED = ("e1", "e2", "gamma1", "gamma2", "center_x", "center_y", "angle")
# ... except where a group leaves one unchanged: spin-2 components (ellipticity, shear) turn by twice the
# angle, so a 180-degree rotation (the replicas' augmentation) maps them onto themselves.
INVARIANT_UNDER = {"rot180": ("e1", "e2", "gamma1", "gamma2")}


def check_targets_survive(targets: Sequence[str] | None, augment: str | None) -> None:
    """Refuse a target that the augmentation's flips and rotations would change without changing its value."""
    from lensnet.data.augment import normalise_augment

    # `auto` (the dataset's own group, resolved later by fit) may be any group: nothing is known to be kept
    augment = augment if augment == "auto" else normalise_augment(augment)
    kept = INVARIANT_UNDER.get(augment or "", ())
    changed = [t for t in targets or [] if t.endswith(ORIENTED) and not t.endswith(kept)]
    if augment and changed:
        raise LensnetError(f"target {changed[0]!r} changes under the flips and rotations of data.augment="
                           f"{augment!r}, which would leave its value unchanged; use --set data.augment=null")


def parameter_unit(name: str) -> str:
    """The unit of a stored parameter, from the simulator's naming conventions ("" when dimensionless)."""
    if name.startswith("log10_m_axion"):
        return "log10 eV"
    if name == "log10_m_hm":
        return "log10 Msun"
    if name == "sigma_sub":
        return "kpc^-2"
    if name.startswith(("m_sub", "vortex_mass")) or name.startswith("m_"):
        return "Msun"
    if name.endswith(("theta_E", "center_x", "center_y", "R_sersic", "half_length")) or name == "radius":
        return "arcsec"
    if name.endswith(("mag", "magnitude")):
        return "mag"
    if name.endswith("angle"):
        return "rad"
    return ""


@dataclass
class RegressionConfig:
    target: str | None = None  # any stored parameter, by name (--target)
    loss: str = "mse"  # mse | huber | mae, on the target standardised by its training mean and std


@register_task
class Regression(Task):
    name = "regression"
    description = "any stored parameter by name (--target); MAE, RMSE, R2; NaN targets masked"
    monitor = "mae"
    monitor_mode = "min"
    Config = RegressionConfig

    def check_config(self) -> None:
        if self.config.loss not in LOSSES:
            raise LensnetError(f"task.loss {self.config.loss!r} is not one of {', '.join(LOSSES)}")

    def setup(self, info: Any, state: dict | None = None) -> None:
        target = state["target"] if state else self.config.target
        params = list(info.param_names)
        if not target:
            raise LensnetError(f"task regression needs a target (--target NAME); parameters: {', '.join(params)}")
        if target not in params:
            raise LensnetError(f"unknown target {target!r}; parameters stored in {info.path}: {', '.join(params)}")
        stats = info.manifest.get("param_stats", {})
        for split in info.counts:  # only the splits the dataset has: the command checks the ones it reads
            entry = stats.get(split, {}).get(target)
            if entry is not None and entry["finite"] == 0:
                raise LensnetError(f"target {target!r} is NaN in every record of split '{split}' of {info.path}")
        if state is not None:  # scoring a trained model: its own standardisation, whatever this dataset holds
            self.mean, self.std = float(state["mean"]), float(state["std"])
        else:
            train = stats.get("train", {}).get(target)
            if train is None:
                raise LensnetError(f"{info.path}: manifest has no training statistics for {target!r}; "
                                   "re-create the dataset")
            if not train.get("std"):
                raise LensnetError(f"target {target!r} is constant ({train.get('mean')}) in the training split")
            self.mean, self.std = float(train["mean"]), float(train["std"])
        self.target = target
        self.fields = ("image", target)

    def state(self) -> dict:
        return {"target": self.target, "mean": self.mean, "std": self.std}

    def check_data_options(self, data_config: dict) -> None:
        check_targets_survive(self.config.target and [self.config.target], data_config.get("augment"))

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        import tensorflow as tf

        y = tf.cast(batch[self.target], tf.float32)[:, None]
        finite = tf.math.is_finite(y)
        return batch["image"], tf.where(finite, y, tf.zeros_like(y)), tf.cast(finite[:, 0], tf.float32)

    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        import keras

        from lensnet.tasks.layers import Affine, ScaledRegressionLoss
        from lensnet.tasks.model import SupervisedModel

        def head(features: Any) -> Any:
            z = keras.layers.Dense(1, dtype="float32", name="standardised_target")(features)
            return Affine(self.std, self.mean, dtype="float32", name="target")(z)

        network = pooled_network(backbone_factory, info.image_shape, head, dropout=config["model"].get("dropout"),
                                 name=f"{self.name}_{config['model']['name']}")
        # NaN targets carry weight 0: the metrics must skip them too
        return SupervisedModel(network, ScaledRegressionLoss(self.config.loss, self.std), weighted_metrics=True,
                               metrics_list=self.metrics(), name=f"{self.name}_model")

    def metrics(self) -> list:
        import keras

        return [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.RootMeanSquaredError(name="rmse"),
                keras.metrics.R2Score(name="r2")]

    def targets(self, batch: dict) -> np.ndarray:
        return np.asarray(batch[self.target], dtype=np.float64)

    def truth(self, y_true_row: Any) -> str:
        return f"true {float(y_true_row):.3g}" if np.isfinite(y_true_row) else "true n/a"

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        return scores.regression_scores(y_true, np.asarray(y_pred)[:, 0])

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        fig = plots.scatter_figure(np.asarray(y_true), np.asarray(y_pred)[:, 0], self.target)
        return {"scatter": plots.save(fig, out_dir / "scatter.png")}

    def describe(self, y_pred_row: np.ndarray) -> str:
        return f"{self.target}={float(y_pred_row[0]):.3g}"

    def output_spec(self) -> OutputSpec:
        return OutputSpec("values", "value", columns=(self.target,), units=(parameter_unit(self.target),))

