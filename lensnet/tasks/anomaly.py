"""Anomaly detection: learn one class of lenses (default no_sub) and flag the images it cannot reconstruct.

Training reads only the normal class: the reader drops the other records (`train_classes`, the
`classes=` filter of `lensnet.data.load`), and steps per epoch follow the normal class's count.
Validation and test read every class; the other classes are the anomalies. The monitored metric is
the validation anomaly ROC AUC (`val_roc_auc`, normal vs every other class); a dataset whose
validation split holds the normal class only can monitor `--set train.monitor=val_normal_loss`
instead (the mean objective over the normal records, which needs no anomaly label).

Models (`task.model`), all on a registry backbone (`--model`):
    ae           the backbone's features -> dense bottleneck (`task.latent_dim`) -> dense -> the feature
                 grid -> x2 upsampling conv stages -> pixels; loss: mean squared error per pixel
    vae          the same, with z_mean / z_log_var; loss (keras-io's VAE): sum of squared errors /
                 (2 sigma^2) + beta * KL(q(z|x) || N(0, 1)), `task.sigma` the Gaussian likelihood's
                 std in normalised pixel units, `task.beta` the KL weight (1 = the ELBO)
    transformer  a token backbone (vit_tiny, vit_small, deit_tiny): patch tokens -> narrow per-token
                 projection -> dense bottleneck -> dense tokens -> per-token MLP to the patch's pixels
Score (the exported output, one number per image, higher = more anomalous; `task.score`):
    recon  mean squared residual (input - reconstruction) in normalised pixel units; a VAE decodes
           its posterior mean, so the score is deterministic
    elbo   (vae only) the negative ELBO with the posterior mean as its sample: sum of squared
           residuals / (2 sigma^2) + KL (weight 1, whatever beta trained the model)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError
from lensnet.tasks import plots, scores
from lensnet.tasks.base import BackboneFactory, BatchContext, Task, register_task
from lensnet.tasks.model import MetricInputs, TaskModel, average_loss

MODELS = ("ae", "vae", "transformer")
SCORES = ("recon", "elbo")
_LOG_RANGE = (-8.0, 4.0)  # log10 of the score range the streaming AUC metrics resolve


@dataclass
class AnomalyConfig:
    normal_class: str = "no_sub"  # the class trained on; every other class is an anomaly
    model: str = "ae"  # ae | vae | transformer
    latent_dim: int = 16  # width of the bottleneck
    beta: float = 1.0  # vae: weight of the KL term
    sigma: float = 0.1  # vae: std of the Gaussian likelihood, in normalised pixel units
    score: str = "recon"  # recon | elbo (vae only)
    token_dim: int = 8  # transformer: width of each patch token before the bottleneck


# ---- layers and losses (serializable: best.keras loads under safe_mode without this task) ----------------

def kl_divergence(z_mean: Any, z_log_var: Any) -> Any:
    """KL(N(z_mean, exp(z_log_var)) || N(0, 1)) per example, summed over the latent dimensions."""
    z_mean, z_log_var = ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


def squared_residuals(images: Any, reconstruction: Any) -> Any:
    """(input - reconstruction)^2 per pixel, float32, flattened per example."""
    residual = ops.cast(images, "float32") - ops.cast(reconstruction, "float32")
    return ops.reshape(ops.square(residual), (ops.shape(residual)[0], -1))


@keras.saving.register_keras_serializable(package="lensnet")
class AnomalyScore(keras.layers.Layer):
    """[images, reconstruction(, z_mean, z_log_var)] -> (N, 1) anomaly score (see the module doc)."""

    def __init__(self, kind: str = "recon", sigma: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**{"dtype": "float32", **kwargs})
        if kind not in SCORES:
            raise ValueError(f"kind must be one of {SCORES}, got {kind!r}")
        self.kind = kind
        self.sigma = float(sigma)

    def call(self, inputs: Sequence[Any]) -> Any:
        se = squared_residuals(inputs[0], inputs[1])
        if self.kind == "recon":
            return ops.mean(se, axis=1, keepdims=True)
        nll = ops.sum(se, axis=1) / (2.0 * self.sigma**2)
        return ops.expand_dims(nll + kl_divergence(inputs[2], inputs[3]), 1)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0][0], 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="lensnet")
class PatchesToImage(keras.layers.Layer):
    """(N, gh * gw, ph * pw * C) patch pixels, row by row as ViT tokens -> (N, gh * ph, gw * pw, C)."""

    def __init__(self, grid: Sequence[int], patch: Sequence[int], channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid = tuple(int(g) for g in grid)
        self.patch = tuple(int(p) for p in patch)
        self.channels = int(channels)

    def call(self, tokens: Any) -> Any:
        (gh, gw), (ph, pw), c = self.grid, self.patch, self.channels
        x = ops.reshape(tokens, (-1, gh, gw, ph, pw, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, gh * ph, gw * pw, c))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], self.grid[0] * self.patch[0], self.grid[1] * self.patch[1], self.channels)

    def get_config(self) -> dict:
        return {**super().get_config(), "grid": list(self.grid), "patch": list(self.patch), "channels": self.channels}


@keras.saving.register_keras_serializable(package="lensnet")
class AnomalyAUC(keras.metrics.AUC):
    """Streaming ROC / PR AUC of the anomaly score (column 0 of y_pred) against y_true = 1 for anomalies.

    Keras' AUC thresholds lie in [0, 1]; scores are unbounded, so they are mapped monotonically onto
    [0, 1] by log10 over `_LOG_RANGE` (2000 thresholds: about 1.4% steps in score).
    """

    validation_only = True  # training reads the normal class alone: no AUC there (not a 0 in the logs)

    def __init__(self, num_thresholds: int = 2000, **kwargs: Any) -> None:
        super().__init__(num_thresholds=num_thresholds, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        lo, hi = _LOG_RANGE
        score = ops.maximum(ops.cast(y_pred[:, :1], "float32"), 10.0**lo)
        unit = ops.clip((ops.log(score) / np.log(10.0) - lo) / (hi - lo), 0.0, 1.0)
        super().update_state(y_true, unit, sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="lensnet")
class NormalLoss(keras.metrics.Mean):
    """Mean of the per-example objective (column 1 of y_pred) over the normal records (y_true 0)."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        weight = 1.0 - ops.cast(y_true[:, 0], "float32")
        if sample_weight is not None:
            weight = weight * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        super().update_state(ops.cast(y_pred[:, 1], "float32"), sample_weight=weight)


@keras.saving.register_keras_serializable(package="lensnet")
class AnomalyModel(TaskModel):
    """Reconstruction training step; the network returns {"score", "reconstruction"(, "z_mean", "z_log_var")}.

    A VAE's training step samples z = z_mean + exp(z_log_var / 2) * eps with `eps` from the batch's
    targets (drawn by `prepare` from the BatchContext: reproducible, resumable, multi-worker safe).
    Outside training its loss decodes the posterior mean, as the score does.
    """

    def __init__(self, network: keras.Model, kind: str = "ae", beta: float = 1.0, sigma: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(network, **{"output": "score", **kwargs})
        self.kind = kind
        self.beta = float(beta)
        self.sigma = float(sigma)

    def objective(self, x: Any, reconstruction: Any, z_mean: Any = None, z_log_var: Any = None) -> Any:
        """Per-example loss: mean squared error (ae, transformer); sum SE / (2 sigma^2) + beta KL (vae)."""
        se = squared_residuals(x, reconstruction)
        if self.kind != "vae":
            return ops.mean(se, axis=1)
        return ops.sum(se, axis=1) / (2.0 * self.sigma**2) + self.beta * kl_divergence(z_mean, z_log_var)

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[Any, MetricInputs]:
        if self.kind == "vae" and training:
            z_mean, z_log_var = self.network.get_layer("encoder")(x, training=True)
            z = ops.cast(z_mean, "float32") + ops.exp(0.5 * ops.cast(z_log_var, "float32")) * y["eps"]
            reconstruction = self.network.get_layer("decoder")(z, training=True)
            per_example = self.objective(x, reconstruction, z_mean, z_log_var)
            score = per_example  # training reads the normal class only: its AUC is not defined anyway
        else:
            outputs = self.network(x, training=training)
            per_example = self.objective(x, outputs["reconstruction"], outputs.get("z_mean"),
                                         outputs.get("z_log_var"))
            score = ops.cast(outputs["score"][:, 0], "float32")
        if sample_weight is not None:
            per_example = per_example * ops.cast(sample_weight, "float32")
        loss = average_loss(per_example, global_batch_size) + self.regularization()
        return loss, MetricInputs(y["anomaly"], ops.stack([score, per_example], axis=1), sample_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "beta": self.beta, "sigma": self.sigma}


# ---- the network -------------------------------------------------------------------------------------------

def _feature_grid(backbone: Any, features: Any) -> Any:
    """A backbone's features as a grid (N, h, w, D): a map as is, tokens without their prefix tokens."""
    if backbone.feature_kind == "map":
        return features
    if backbone.num_prefix_tokens:
        features = keras.layers.Cropping1D((backbone.num_prefix_tokens, 0), name="drop_prefix_tokens")(features)
    h, w = backbone.patch_grid
    return keras.layers.Reshape((h, w, backbone.feature_dim), name="token_grid")(features)


def _upsampling_factor(image_shape: Sequence[int], grid: Sequence[int], model: str) -> int:
    """H / h = W / w, a power of 2: how many x2 stages rebuild the image from the feature grid."""
    (height, width), (h, w) = image_shape[:2], grid
    ratio = height // h if h else 0
    if h * ratio != height or w * ratio != width or ratio & (ratio - 1):
        raise LensnetError(f"images of {height}x{width} do not divide by the downsampling of model {model} "
                           f"(feature grid {h}x{w}); use a size divisible by its total stride, or fewer stages "
                           f"(--set model.args.filters=...)")
    return ratio


def _conv_decoder(latent: Any, grid: Sequence[int], width: int, image_shape: Sequence[int], model: str) -> Any:
    """latent -> dense -> (h, w, width) -> x2 upsampling + conv3x3-ReLU stages (width halves, >= 16) -> pixels."""
    h, w = grid
    ratio = _upsampling_factor(image_shape, grid, model)
    x = keras.layers.Dense(h * w * width, activation="relu", name="decoder_dense")(latent)
    x = keras.layers.Reshape((h, w, width), name="decoder_grid")(x)
    stage = 0
    while ratio > 1:
        width = max(16, width // 2)
        x = keras.layers.UpSampling2D(2, name=f"decoder_up{stage}")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"decoder_conv{stage}")(x)
        ratio, stage = ratio // 2, stage + 1
    return keras.layers.Conv2D(image_shape[2], 3, padding="same", dtype="float32", name="decoder_pixels")(x)


def _patch_decoder(latent: Any, backbone: Any, token_dim: int, image_shape: Sequence[int]) -> Any:
    """latent -> dense -> (h*w, token_dim) tokens -> per-token MLP -> each patch's pixels -> the image."""
    h, w = backbone.patch_grid
    ph, pw = image_shape[0] // h, image_shape[1] // w
    x = keras.layers.Dense(h * w * token_dim, activation="gelu", name="decoder_dense")(latent)
    x = keras.layers.Reshape((h * w, token_dim), name="decoder_tokens")(x)
    x = keras.layers.Dense(4 * ph * pw * image_shape[2], activation="gelu", name="decoder_mlp")(x)
    x = keras.layers.Dense(ph * pw * image_shape[2], dtype="float32", name="decoder_patches")(x)
    return PatchesToImage((h, w), (ph, pw), image_shape[2], dtype="float32", name="decoder_pixels")(x)


def build_network(backbone: Any, image_shape: Sequence[int], config: AnomalyConfig, model: str) -> keras.Model:
    """images -> {"score", "reconstruction"(, "z_mean", "z_log_var")}, with "encoder" and "decoder" sub-models."""
    image_shape = tuple(int(d) for d in image_shape)
    latent_dim = int(config.latent_dim)
    images = keras.Input(image_shape, name="images")
    grid = _feature_grid(backbone, backbone(images))
    if config.model == "transformer":
        grid = keras.layers.Dense(int(config.token_dim), name="token_projection")(grid)
    flat = keras.layers.Flatten(name="bottleneck_flatten")(grid)
    if config.model == "vae":
        z = [keras.layers.Dense(latent_dim, dtype="float32", name="z_mean")(flat),
             keras.layers.Dense(latent_dim, dtype="float32", name="z_log_var")(flat)]
    else:
        z = keras.layers.Dense(latent_dim, dtype="float32", name="z")(flat)
    encoder = keras.Model(images, z, name="encoder")

    latent = keras.Input((latent_dim,), name="latent")
    if config.model == "transformer":
        pixels = _patch_decoder(latent, backbone, int(config.token_dim), image_shape)
    else:
        pixels = _conv_decoder(latent, backbone.patch_grid, backbone.feature_dim, image_shape, model)
    decoder = keras.Model(latent, pixels, name="decoder")

    inputs = keras.Input(image_shape, name="images")
    encoded = encoder(inputs)
    z_mean = encoded[0] if config.model == "vae" else encoded
    reconstruction = keras.layers.Activation("linear", dtype="float32", name="reconstruction")(decoder(z_mean))
    outputs = {"reconstruction": reconstruction}
    score_inputs = [inputs, reconstruction]
    if config.model == "vae":
        outputs["z_mean"] = keras.layers.Activation("linear", dtype="float32", name="z_mean_out")(encoded[0])
        outputs["z_log_var"] = keras.layers.Activation("linear", dtype="float32", name="z_log_var_out")(encoded[1])
        score_inputs += [outputs["z_mean"], outputs["z_log_var"]]
    outputs["score"] = AnomalyScore(config.score, config.sigma, name="score")(score_inputs)
    return keras.Model(inputs, outputs, name=f"anomaly_{config.model}_{model}")


# ---- the task ----------------------------------------------------------------------------------------------

@register_task
class Anomaly(Task):
    name = "anomaly"
    description = ("anomaly detection: train an autoencoder / VAE / transformer AE on one class (task.normal_class), "
                   "score the others; ROC and PR AUC per anomalous class")
    monitor = "roc_auc"
    monitor_mode = "max"
    Config = AnomalyConfig
    fields = ("image", "label")

    def check_config(self) -> None:
        c = self.config
        if c.model not in MODELS:
            raise LensnetError(f"task.model must be one of {', '.join(MODELS)}, got {c.model!r}")
        if c.score not in SCORES:
            raise LensnetError(f"task.score must be one of {', '.join(SCORES)}, got {c.score!r}")
        if c.score == "elbo" and c.model != "vae":
            raise LensnetError(f"task.score=elbo needs task.model=vae (task.model is {c.model})")
        for key, low in (("latent_dim", 1), ("token_dim", 1)):
            value = getattr(c, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise LensnetError(f"task.{key} must be an integer >= {low}, got {value!r}")
        if not isinstance(c.beta, (int, float)) or isinstance(c.beta, bool) or not c.beta >= 0:
            raise LensnetError(f"task.beta must be a number >= 0, got {c.beta!r}")
        if not isinstance(c.sigma, (int, float)) or isinstance(c.sigma, bool) or not c.sigma > 0:
            raise LensnetError(f"task.sigma must be a number > 0, got {c.sigma!r}")
        if not isinstance(c.normal_class, str) or not c.normal_class:
            raise LensnetError(f"task.normal_class must be a class name, got {c.normal_class!r}")

    def setup(self, info: Any, state: dict | None = None) -> None:
        normal = state["normal_class"] if state else self.config.normal_class
        if normal not in info.class_names:
            raise LensnetError(f"task.normal_class '{normal}' is not a class of dataset {info.path}; classes: "
                               f"{', '.join(info.class_names) or 'none (unlabelled)'}")
        self.normal_class = normal
        self.class_names = list(info.class_names)  # this dataset's labels, matched to the normal class by name
        self.normal_index = self.class_names.index(normal)

    def state(self) -> dict:
        return {"normal_class": self.normal_class}

    def train_classes(self) -> list[str]:
        return [self.normal_class]

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        import tensorflow as tf

        image = batch["image"]
        n = tf.shape(image)[0]
        anomaly = tf.cast(tf.not_equal(batch["label"], self.normal_index), tf.float32)[:, None]
        eps = tf.random.stateless_normal(tf.stack([n, int(self.config.latent_dim)]), context.random_seed())
        return image, {"anomaly": anomaly, "eps": eps}, tf.ones([n], tf.float32)

    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> AnomalyModel:
        backbone = backbone_factory(info.image_shape)
        model = config["model"]["name"]
        if self.config.model == "transformer" and backbone.feature_kind != "tokens":
            raise LensnetError(f"task.model=transformer needs a token backbone (vit_tiny, vit_small, deit_tiny); "
                               f"model {model} returns a feature map")
        network = build_network(backbone, info.image_shape, self.config, model)
        return AnomalyModel(network, kind=self.config.model, beta=self.config.beta, sigma=self.config.sigma,
                            metrics_list=self.metrics(), name=f"{self.name}_model")

    def metrics(self) -> list:
        return [AnomalyAUC(name="roc_auc"), AnomalyAUC(curve="PR", name="pr_auc"), NormalLoss(name="normal_loss")]

    # ---- scoring ------------------------------------------------------------------------------------------
    def targets(self, batch: dict) -> np.ndarray:
        return np.asarray(batch["label"]).astype(np.int64)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        labels = np.asarray(y_true).astype(int).ravel()
        s = np.asarray(y_pred, dtype=np.float64)[:, 0]
        normal = labels == self.normal_index

        def figures(mask: np.ndarray) -> dict:
            found = scores.binary_scores(~normal[mask], s[mask])
            keep = ("n", "n_positive", "roc_auc", "pr_auc", "tpr_at_0_fp", "tpr_at_10_fp", "notes")
            return {k: found[k] for k in keep if k in found}  # "accuracy" at 0.5 means nothing for a score

        out: dict = {"n": int(labels.size), "normal_class": self.normal_class, "score": self.config.score,
                     "model": self.config.model, "n_normal": int(normal.sum())}
        overall = figures(np.ones_like(normal))
        out["roc_auc"], out["pr_auc"] = overall.get("roc_auc"), overall.get("pr_auc")
        out["overall"] = overall
        out["per_class"] = {name: figures(normal | (labels == k)) for k, name in enumerate(self.class_names)
                            if k != self.normal_index and np.any(labels == k)}
        out["score_median"] = {name: float(np.median(s[labels == k])) for k, name in enumerate(self.class_names)
                               if np.any(labels == k)}
        if out["roc_auc"] is None:
            out["notes"] = "ROC/PR AUC undefined: the split holds the normal class only, or no normal record"
        return out

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        labels = np.asarray(y_true).astype(int).ravel()
        s = np.asarray(y_pred, dtype=np.float64)[:, 0]
        normal = labels == self.normal_index
        curves = [("all anomalies", ~normal, s)]
        curves += [(name, labels[normal | (labels == k)] == k, s[normal | (labels == k)])
                   for k, name in enumerate(self.class_names) if k != self.normal_index and np.any(labels == k)]
        per_class = {name: s[labels == k] for k, name in enumerate(self.class_names) if np.any(labels == k)}
        return {
            "roc": plots.save(plots.roc_figure(curves), out_dir / "roc.png"),
            "pr": plots.save(plots.pr_figure(~normal, s, "anomaly"), out_dir / "pr.png"),
            "score_histogram": plots.save(plots.histogram_figure(per_class, f"anomaly score ({self.config.score})"),
                                          out_dir / "score_histogram.png"),
        }

    def example_figures(self, model: Any, images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        try:  # the inference model ends at the score; its graph still holds the reconstruction
            layer = model.get_layer("reconstruction")
        except ValueError:
            return {}
        n = min(8, len(images))
        reconstruct = keras.Model(model.inputs[0], layer.output)
        recon = keras.ops.convert_to_numpy(reconstruct(images[:n], training=False))
        titles = [f"{self.truth(t)}\n{self.describe(p)}" for t, p in zip(y_true[:n], y_pred[:n])]
        return {"reconstructions": plots.residual_figure(images[:n], recon, titles)}

    def describe(self, y_pred_row: np.ndarray) -> str:
        return f"score {float(y_pred_row[0]):.3g}"

    def truth(self, y_true_row: Any) -> str:
        k = int(y_true_row)
        return self.class_names[k] if 0 <= k < len(self.class_names) else "unlabelled"

    def output_spec(self) -> OutputSpec:
        what = ("mean squared residual of the reconstruction" if self.config.score == "recon"
                else "negative ELBO")
        return OutputSpec("score", "anomaly_score", columns=("anomaly_score",),
                          meaning=f"{what} (normalised pixels) of a {self.config.model} trained on "
                                  f"'{self.normal_class}': higher = less like {self.normal_class}")
