"""Super-resolution of lens images: low-resolution image in, high-resolution image out, in the same units.

Data: a dataset with the LR image in `image` and the HR image of the same scene in `image_hr`
(the `super_resolution` / `super_resolution_deeplense` presets, or `python -m lensnet.convert degrade`
for HR cutouts of your own). The scale is read from the two shapes; a model built for another scale,
or shapes that no integer scale relates, is a one-line error. D4 augmentation in tf.data applies the
same element to both fields, so pairs stay aligned.

Model: the network takes RAW LR pixels, standardises each image by its own statistics
(`task.normalise`), runs a registry model of kind "super_resolution" (bicubic, edsr, rcan, swinir)
and maps the result back with the LR image's statistics, so it returns HR pixels in the input's
units and the export holds the normalisation and its inverse (`data.normalise` must be `none`: the
model does it). The loss (L1 default, L2, + `ssim_weight` x (1 - SSIM)) is computed on the
images divided by the LR image's std, so it does not depend on the flux unit.

Scores: PSNR and SSIM (lensnet.tasks.image_quality) on a stated data range, per image, mean and 95%
interval, per class when the dataset has classes, with the bicubic upsampling of the same LR
images in the same table, and the per-image gain over bicubic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError
from lensnet.tasks import image_quality as iq
from lensnet.tasks.base import BackboneFactory, BatchContext, Task, register_task
from lensnet.tasks.model import MetricInputs, TaskModel, average_loss

LOSSES = ("l1", "l2")
IN_MODEL_NORMALISATIONS = ("standard", "minmax")
_STD_FLOOR = 1e-12


@dataclass
class SuperResolutionConfig:
    loss: str = "l1"  # l1 | l2, on images divided by each LR image's std
    ssim_weight: float = 0.0  # + ssim_weight * (1 - SSIM) (per-image range of the normalised HR image)
    data_range: Any = "per_image"  # PSNR/SSIM range: per_image (each HR image's max - min) or a fixed number
    normalise: str = "standard"  # per-image normalisation INSIDE the model (standard | minmax)
    lr_field: str = "image"
    hr_field: str = "image_hr"
    plot_examples: int = 4  # fixed test examples drawn as LR / SR / HR / residual panels


def sr_shapes(info: Any, lr_field: str, hr_field: str) -> tuple[tuple, tuple, int]:
    """(LR shape, HR shape, integer scale) of a dataset; a missing HR field or mismatched shapes: one line."""
    names = list(info.image_names)
    for field, what in ((lr_field, "low-resolution"), (hr_field, "high-resolution")):
        if field not in names:
            raise LensnetError(f"dataset {info.path} has no {what} image field '{field}' (image fields: "
                               f"{', '.join(names)}); super-resolution needs LR/HR pairs: simulate the "
                               "super_resolution preset or make pairs with `python -m lensnet.convert degrade`")
    lr, hr = tuple(info.schema[lr_field].shape), tuple(info.schema[hr_field].shape)
    scale = hr[0] // lr[0] if lr[0] else 0
    if len(lr) != 3 or len(hr) != 3 or lr[2] != hr[2] or scale < 2 or hr[0] != scale * lr[0] or hr[1] != scale * lr[1]:
        raise LensnetError(f"dataset {info.path}: HR '{hr_field}' {'x'.join(map(str, hr))} is not an integer "
                           f"scale (>= 2) of LR '{lr_field}' {'x'.join(map(str, lr))} with the same channels")
    return lr, hr, scale


def normalised_error(x: Any, y: Any, prediction: Any) -> tuple[Any, Any, Any]:
    """TF: (prediction - y), y and prediction divided by each LR image's per-channel std (unit-free)."""
    _, variance = tf.nn.moments(tf.cast(x, tf.float32), axes=[1, 2], keepdims=True)
    std = tf.maximum(tf.sqrt(variance), _STD_FLOOR)
    y, prediction = tf.cast(y, tf.float32) / std, tf.cast(prediction, tf.float32) / std
    return prediction - y, y, prediction


@keras.saving.register_keras_serializable(package="lensnet")
class SuperResolutionTaskModel(TaskModel):
    """LR -> SR in pixel units; loss L1/L2 (+ SSIM term) on images divided by the LR image's std."""

    def __init__(self, network: keras.Model, loss: str = "l1", ssim_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(network, **kwargs)
        self.loss_kind = str(loss)
        self.ssim_weight = float(ssim_weight)

    def compute_step(self, x, y, sample_weight=None, training=False, global_batch_size=None):
        prediction = self.network(x, training=training)
        error, y_n, p_n = normalised_error(x, y, prediction)
        per_pixel = tf.abs(error) if self.loss_kind == "l1" else tf.square(error)
        per_example = tf.reduce_mean(per_pixel, axis=[1, 2, 3])
        if self.ssim_weight:
            per_example += self.ssim_weight * (1.0 - iq.ssim(y_n, p_n, iq.ranges(y_n, "per_image")))
        if sample_weight is not None:
            per_example = per_example * tf.cast(sample_weight, per_example.dtype)
        loss = average_loss(per_example, global_batch_size) + self.regularization()
        return loss, MetricInputs(y, prediction, sample_weight)

    def train_step(self, data: Any) -> dict:
        if not self.trainable_variables:  # bicubic: nothing to learn, the epoch only measures it
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            loss, metric_inputs = self.compute_step(x, y, sample_weight, training=True)
            return self._log(x, loss, metric_inputs, training=True)
        return super().train_step(data)

    def get_config(self) -> dict:
        return {**super().get_config(), "loss": self.loss_kind, "ssim_weight": self.ssim_weight}


class ImageQualityMean(keras.metrics.Mean):
    """Mean per-image PSNR (dB) or SSIM of y_pred against y_true on the task's data range."""

    def __init__(self, figure: str = "psnr", data_range: Any = "per_image", name: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name=name or figure, **kwargs)
        self.figure, self.data_range = figure, data_range

    def update_state(self, y_true, y_pred, sample_weight=None):
        function = iq.psnr if self.figure == "psnr" else iq.ssim
        values = function(y_true, y_pred, iq.ranges(y_true, self.data_range))
        # a prediction identical to its target has infinite PSNR: count it as 100 dB in the running mean
        values = tf.where(tf.math.is_finite(values), values, tf.fill(tf.shape(values), 100.0))
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "figure": self.figure, "data_range": self.data_range}


@register_task
class SuperResolution(Task):
    name = "super_resolution"
    description = "LR -> HR images (scale from the data); PSNR/SSIM on a stated range beside bicubic"
    monitor = "psnr"
    monitor_mode = "max"
    Config = SuperResolutionConfig
    model_kind = "super_resolution"

    def check_config(self) -> None:
        c = self.config
        if c.loss not in LOSSES:
            raise LensnetError(f"task.loss {c.loss!r} is not one of {', '.join(LOSSES)}")
        if not isinstance(c.ssim_weight, (int, float)) or isinstance(c.ssim_weight, bool) or c.ssim_weight < 0:
            raise LensnetError(f"task.ssim_weight must be a number >= 0, got {c.ssim_weight!r}")
        c.data_range = iq.check_data_range(c.data_range)
        if c.normalise not in IN_MODEL_NORMALISATIONS:
            raise LensnetError(f"task.normalise must be one of {', '.join(IN_MODEL_NORMALISATIONS)}, "
                               f"got {c.normalise!r}")
        if not isinstance(c.plot_examples, int) or c.plot_examples < 0:
            raise LensnetError(f"task.plot_examples must be an integer >= 0, got {c.plot_examples!r}")

    def check_data_options(self, data_config: dict) -> None:
        if data_config.get("normalise") not in ("none", None):
            raise LensnetError(f"data.normalise must be none for super_resolution (got "
                               f"{data_config.get('normalise')!r}): the model normalises each LR image inside "
                               "itself (task.normalise) and returns pixels; use --set data.normalise=none")

    # ---- data -----------------------------------------------------------------------------
    def setup(self, info: Any, state: dict | None = None) -> None:
        lr, hr, scale = sr_shapes(info, self.config.lr_field, self.config.hr_field)
        if state is not None and (list(lr) != list(state["lr_shape"]) or list(hr) != list(state["hr_shape"])):
            raise LensnetError(f"dataset {info.path} has LR {lr} / HR {hr}; the run was trained on LR "
                               f"{tuple(state['lr_shape'])} / HR {tuple(state['hr_shape'])}")
        iq.check_ssim_size(hr, f"dataset {info.path} HR '{self.config.hr_field}'")
        self.lr_shape, self.hr_shape, self.scale = lr, hr, scale
        self.class_names = list(info.class_names)
        labelled = bool(self.class_names) and "label" in info.schema
        self.fields = (self.config.lr_field, self.config.hr_field, *(("label",) if labelled else ()))

    def state(self) -> dict:
        return {"scale": self.scale, "lr_shape": list(self.lr_shape), "hr_shape": list(self.hr_shape),
                "data_range": self.config.data_range, "class_names": self.class_names}

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        lr, hr = batch[self.config.lr_field], batch[self.config.hr_field]
        return lr, hr, tf.ones(tf.shape(lr)[:1])

    # ---- model ----------------------------------------------------------------------------
    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        from lensnet.tasks.layers import InversePerImageNormalisation, PerImageNormalisation

        sr = backbone_factory(self.lr_shape, scale=self.scale)
        out_shape = tuple(int(d) for d in sr.output.shape[1:])
        if out_shape != tuple(self.hr_shape):
            raise LensnetError(f"model {config['model']['name']!r} makes {'x'.join(map(str, out_shape))} images "
                               f"(scale {getattr(sr, 'scale', '?')}) but the dataset's HR images are "
                               f"{'x'.join(map(str, self.hr_shape))} (scale {self.scale}); drop model.args.scale")
        inputs = keras.Input(tuple(self.lr_shape), name="images")
        method = self.config.normalise
        x = PerImageNormalisation(method, name="normalise")(inputs)
        x = sr(x)
        outputs = InversePerImageNormalisation(method, dtype="float32", name="sr_pixels")([x, inputs])
        network = keras.Model(inputs, outputs, name=f"{self.name}_{config['model']['name']}")
        return SuperResolutionTaskModel(network, loss=self.config.loss, ssim_weight=self.config.ssim_weight,
                           metrics_list=self.metrics(), name=f"{self.name}_model")

    def metrics(self) -> list:
        return [ImageQualityMean("psnr", self.config.data_range), ImageQualityMean("ssim", self.config.data_range)]

    # ---- scoring --------------------------------------------------------------------------
    def targets(self, batch: dict) -> np.ndarray:
        """(N, H, W, 2C + 1): HR image, the bicubic upsampling of the LR image (the baseline, made from the
        same pixels the model sees) and the class label as a constant channel (-1 without classes)."""

        hr = np.asarray(batch[self.config.hr_field], np.float32)
        lr = np.asarray(batch[self.config.lr_field], np.float32)
        bicubic = tf.image.resize(lr, hr.shape[1:3], method="bicubic").numpy()
        label = np.asarray(batch["label"], np.float32) if "label" in self.fields else -np.ones(len(hr), np.float32)
        return np.concatenate([hr, bicubic, np.broadcast_to(label[:, None, None, None], (*hr.shape[:3], 1))], -1)

    def split_targets(self, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(HR, bicubic, labels or None) from `targets`' packing."""
        c = self.hr_shape[2]
        labels = y_true[:, 0, 0, 2 * c].astype(int)
        return y_true[..., :c], y_true[..., c:2 * c], labels if self.class_names and labels.min() >= 0 else None

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        hr, bicubic, labels = self.split_targets(np.asarray(y_true))
        prediction = np.asarray(y_pred, np.float32)
        table = iq.quality_table(hr, {"model": prediction, "bicubic": bicubic}, self.config.data_range, labels,
                                 self.class_names)
        model, base = table["rows"]["model"], table["rows"]["bicubic"]
        gain = {f: np.asarray(model["per_image"][f]) - np.asarray(base["per_image"][f]) for f in ("psnr", "ssim")}
        out = {"n": int(len(hr)), "scale": self.scale, "data_range": table["data_range"],
               "psnr": model["psnr"]["mean"], "ssim": model["ssim"]["mean"],
               "bicubic_psnr": base["psnr"]["mean"], "bicubic_ssim": base["ssim"]["mean"],
               "psnr_gain_over_bicubic": iq.mean_interval(gain["psnr"]),
               "ssim_gain_over_bicubic": iq.mean_interval(gain["ssim"]),
               "image_quality": table}
        if out["psnr"] is None:
            out["notes"] = "PSNR undefined: every prediction equals its target (infinite PSNR)"
        return out

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        from lensnet.tasks import plots

        n = min(self.config.plot_examples, len(y_true))
        if not n:
            return {}
        hr, bicubic, _ = self.split_targets(np.asarray(y_true[:n]))
        fig = panels_figure(bicubic, np.asarray(y_pred[:n]), hr, self.scale)
        return {"sr_panels": plots.save(fig, Path(out_dir) / "sr_panels.png")}

    def describe(self, y_pred_row: np.ndarray) -> str:
        return ""

    def callbacks(self, run_dir: Path, info: Any, config: dict, val_batches: Any) -> list:
        if not self.config.plot_examples:
            return []
        return [PanelsEachEpoch(val_batches, self.config.plot_examples, Path(run_dir) / "logs" / "sr_panels",
                                self.scale)]

    def output_spec(self) -> OutputSpec:
        return OutputSpec("image", "sr_image", image={"shape": [int(d) for d in self.hr_shape], "inverse": None})

    def monitor_value(self, metrics: dict) -> float | None:
        return metrics.get("psnr")


def panels_figure(bicubic: np.ndarray, prediction: np.ndarray, hr: np.ndarray, scale: int) -> Any:
    """One row per example: LR (shown bicubic-upsampled) | SR | HR | SR - HR, first channel, shared scale."""
    import matplotlib.pyplot as plt

    n = len(hr)
    fig, axes = plt.subplots(n, 4, figsize=(7.2, 1.9 * n), squeeze=False)
    for k in range(n):
        lo, hi = np.percentile(hr[k, ..., 0], [0.5, 99.8])
        residual = prediction[k, ..., 0] - hr[k, ..., 0]
        bound = max(float(np.abs(residual).max()), 1e-12)
        panels = ((bicubic[k, ..., 0], f"LR (bicubic x{scale})", "magma", lo, hi),
                  (prediction[k, ..., 0], "SR", "magma", lo, hi), (hr[k, ..., 0], "HR", "magma", lo, hi),
                  (residual, f"SR - HR (max {bound:.2g})", "RdBu_r", -bound, bound))
        for ax, (image, title, cmap, vmin, vmax) in zip(axes[k], panels):
            ax.imshow(image, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return fig


class PanelsEachEpoch(keras.callbacks.Callback):
    """TensorBoard image "sr_panels" after every epoch: LR (bicubic) / SR / HR / residual of the first
    validation examples (the same ones every epoch: validation batches are in order, unaugmented)."""

    def __init__(self, val_batches: Any, n: int, log_dir: Path, scale: int) -> None:
        super().__init__()
        self.val_batches, self.n, self.log_dir, self.scale = val_batches, int(n), Path(log_dir), int(scale)
        self.examples: tuple | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from lensnet.tasks import plots

        if self.examples is None:
            x, y, _ = next(iter(self.val_batches))
            self.examples = (x[: self.n], y[: self.n].numpy())
            self.writer = tf.summary.create_file_writer(str(self.log_dir))
        x, hr = self.examples
        sr = self.model(x, training=False).numpy()
        bicubic = tf.image.resize(x, hr.shape[1:3], method="bicubic").numpy()
        png = plots.png_bytes(panels_figure(bicubic, sr, hr, self.scale))
        with self.writer.as_default():
            tf.summary.image("sr_panels", tf.image.decode_png(png, channels=4)[None], step=int(epoch) + 1)
        self.writer.flush()
