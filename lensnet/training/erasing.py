"""Iterative erasing: erase each training image's most salient patches, as the model itself sees
them, so that it must learn from the rest of the image (`train.erasing`).

    --set train.erasing.mode=attention --set train.erasing.every=2 --set train.erasing.fraction=0.1

Every `every` epochs (at epochs every, 2*every, ...) a frozen SNAPSHOT of the current network is
taken; until the next snapshot, each training batch is passed through it and the `fraction` of
patches it finds most salient are erased. Epochs before the first snapshot are not erased (a
random network's saliency means nothing). Saliency:
- `attention`: attention rollout (Abnar & Zuidema 2020) of the class token for ViT and DeiT
  backbones; Grad-CAM (Selvaraju et al. 2017) of the predicted class on the backbone's feature map
  or patch tokens for every other backbone (CNNs, Swin, CvT). A network that is not a plain chain
  backbone -> pooling -> head (the distillation network of a non-ViT student), or whose pooling
  reads the class token only (CvT's default `cls`: the patch tokens get no gradient), uses the
  input gradient of the predicted class, pooled per patch.
- `random`: the same number of patches drawn at random (the baseline: the same erased area, no
  model). It is patch-wise rather than Keras' one-rectangle `RandomErasing`, so that the two modes
  erase the same amount in the same units.
Patches are the backbone's own grid (ViT patches, the feature map's cells). Erased pixels take the
image's background level: the mean of its outer frame, per channel (never another record's pixels).

Reproducible and resumable: the erased patches follow from the run seed, the global step (random)
and the snapshot (attention), the snapshot's weights are written to
`checkpoints/erasing_snapshot.weights.h5` when taken, and a resumed run reloads them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from lensnet.core.errors import LensnetError
from lensnet.training.config import check_erasing

SNAPSHOT = "erasing_snapshot.weights.h5"


# ---- the erasing op -----------------------------------------------------------------------------


def background_level(images: tf.Tensor) -> tf.Tensor:
    """Per image and channel, the mean of the outer frame (1/16 of the side, at least 1 px): (B, 1, 1, C)."""
    h, w = int(images.shape[1]), int(images.shape[2])
    b = max(1, min(h, w) // 16)
    frame = tf.concat([tf.reshape(images[:, :b], [tf.shape(images)[0], -1, images.shape[-1]]),
                       tf.reshape(images[:, -b:], [tf.shape(images)[0], -1, images.shape[-1]]),
                       tf.reshape(images[:, b:-b, :b], [tf.shape(images)[0], -1, images.shape[-1]]),
                       tf.reshape(images[:, b:-b, -b:], [tf.shape(images)[0], -1, images.shape[-1]])], axis=1)
    return tf.reduce_mean(frame, axis=1)[:, None, None, :]


def patch_mask(saliency: tf.Tensor, fraction: float) -> tf.Tensor:
    """(B, h, w) saliency -> (B, h, w) float mask, 1 on the round(fraction * h * w) most salient cells."""
    h, w = int(saliency.shape[1]), int(saliency.shape[2])
    k = int(round(fraction * h * w))
    flat = tf.reshape(tf.cast(saliency, tf.float32), [-1, h * w])
    if k == 0:
        return tf.zeros_like(tf.reshape(flat, [-1, h, w]))
    _, top = tf.math.top_k(flat, k=k)  # ties: the lower index first, deterministic
    mask = tf.reduce_max(tf.one_hot(top, h * w), axis=1)
    return tf.reshape(mask, [-1, h, w])


def erase(images: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Fill the pixels under the (B, h, w) cell mask with each image's background level."""
    size = (int(images.shape[1]), int(images.shape[2]))
    pixels = tf.image.resize(mask[..., None], size, method="nearest")
    fill = tf.broadcast_to(background_level(images), tf.shape(images))
    return tf.where(pixels > 0.5, fill, images)


# ---- saliency of a network ----------------------------------------------------------------------


def _backbone(network: keras.Model) -> Any:
    from lensnet.models.backbone import Backbone

    for layer in network.layers:
        if isinstance(layer, Backbone):
            return layer
    raise LensnetError(f"train.erasing: network {network.name!r} has no lensnet backbone")


def _prediction(outputs: Any) -> tf.Tensor:
    if isinstance(outputs, dict):
        outputs = outputs.get("probabilities", next(iter(outputs.values())))
    return tf.cast(outputs, tf.float32)


def _score(prediction: tf.Tensor) -> tf.Tensor:
    """The predicted class's output (a single output: itself)."""
    flat = tf.reshape(prediction, [tf.shape(prediction)[0], -1])
    return tf.reduce_sum(tf.reduce_max(flat, axis=-1))


def _as_grid(backbone: Any, features: tf.Tensor) -> tf.Tensor:
    """Backbone features as a map (B, h, w, D): token features lose their prefix tokens."""
    if backbone.feature_kind == "map":
        return features
    h, w = backbone.patch_grid
    return tf.reshape(features[:, backbone.num_prefix_tokens:, :], [-1, h, w, features.shape[-1]])


class Saliency:
    """Per-patch saliency (B, h, w) of a (snapshot) network on the backbone's grid."""

    def __init__(self, network: keras.Model) -> None:
        from lensnet.models.tokens import is_plain_transformer

        self.network = network
        self.backbone = _backbone(network)
        self.grid = tuple(self.backbone.patch_grid)
        self.rollout = is_plain_transformer(self.backbone)
        from lensnet.models.pooling import FeaturePooling

        index = network.layers.index(self.backbone)
        self.after = network.layers[index + 1:]
        # backbone -> pooling -> dropout -> dense head(s) in a line: Grad-CAM can replay it on the features
        chain_layers = (FeaturePooling, keras.layers.Dropout, keras.layers.Dense, keras.layers.Activation)
        # ... if the pooling reads the patch tokens: a class-token pooling (CvT's default) never does, their
        # gradient is 0 everywhere, and the top-k of an all-zero map is the top-left corner, i.e. sky.
        reads_patches = all(layer.mode not in ("cls", "prefix_mean")
                            for layer in self.after if isinstance(layer, FeaturePooling))
        self.chain = reads_patches and not isinstance(network.output, (dict, list, tuple)) and all(
            isinstance(layer, chain_layers) for layer in self.after)

    def kind(self) -> str:
        return "rollout" if self.rollout else ("gradcam" if self.chain else "input_gradient")

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        if self.rollout:
            from lensnet.models.tokens import attention_rollout

            return tf.cast(attention_rollout(self.backbone, images), tf.float32)
        if self.chain:
            with tf.GradientTape() as tape:
                features = self.backbone(images, training=False)
                tape.watch(features)
                x = features
                for layer in self.after:
                    x = layer(x, training=False)
                score = _score(_prediction(x))
            grads = _as_grid(self.backbone, tape.gradient(score, features))
            maps = _as_grid(self.backbone, features)
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            return tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))
        with tf.GradientTape() as tape:
            tape.watch(images)
            score = _score(_prediction(self.network(images, training=False)))
        grads = tf.reduce_sum(tf.abs(tape.gradient(score, images)), axis=-1, keepdims=True)
        return tf.image.resize(grads, self.grid, method="area")[..., 0]


# ---- the eraser and its callback ----------------------------------------------------------------


class Eraser:
    """Erases training batches inside the task model's train step (a `TaskModel` input hook)."""

    def __init__(self, network: keras.Model, mode: str, every: int, fraction: float, seed: int,
                 steps_per_epoch: int) -> None:
        self.mode, self.every, self.fraction = mode, int(every), float(fraction)
        self.seed, self.steps_per_epoch = int(seed), int(steps_per_epoch)
        self.source = network
        self.grid = tuple(_backbone(network).patch_grid)
        self.snapshot = None
        if mode == "attention":
            self.snapshot = keras.models.clone_model(network)
            self.snapshot.set_weights(network.get_weights())
            self.saliency = Saliency(self.snapshot)

    def masks(self, images: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """The (B, h, w) cells erased at global step `step` (its epoch decides the snapshot)."""
        if self.mode == "random":
            key = tf.random.experimental.stateless_fold_in(tf.constant([self.seed, 0x5EED], tf.int64),
                                                           tf.cast(step, tf.int64))
            scores = tf.random.stateless_uniform([tf.shape(images)[0], *self.grid], seed=key)
            return patch_mask(scores, self.fraction)
        return patch_mask(self.saliency(images), self.fraction)

    def __call__(self, images: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        epoch = tf.cast(step, tf.int64) // self.steps_per_epoch
        return tf.cond(epoch >= self.every, lambda: erase(images, self.masks(images, step)), lambda: images)

    def refresh(self) -> None:
        if self.snapshot is not None:
            self.snapshot.set_weights(self.source.get_weights())


class ErasingSnapshot(keras.callbacks.Callback):
    """Takes the eraser's snapshot at epochs every, 2*every, ... (saving it), or reloads the saved one
    when a resumed run starts inside a window."""

    def __init__(self, eraser: Eraser, run_dir: Path, write: bool = True) -> None:
        super().__init__()
        self.eraser, self.path, self.write = eraser, Path(run_dir) / "checkpoints" / SNAPSHOT, write
        self.started = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.eraser.snapshot is None:
            return
        if epoch >= self.eraser.every and epoch % self.eraser.every == 0:
            self.eraser.refresh()
            if self.write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".weights.h5", dir=self.path.parent, prefix=".tmp-")
                os.close(fd)
                self.eraser.snapshot.save_weights(tmp)
                os.replace(tmp, self.path)
        elif not self.started and epoch > self.eraser.every:  # resumed inside a window
            if not self.path.is_file():
                raise LensnetError(f"cannot resume erasing: {self.path} is missing")
            self.eraser.snapshot.load_weights(self.path)
        self.started = True


def attach_erasing(model: Any, section: dict, seed: int, steps_per_epoch: int, run_dir: Path,
                   write: bool = True) -> keras.callbacks.Callback:
    """Give `model` (a TaskModel) an eraser for `train.erasing`; returns the callback that refreshes it."""
    options = check_erasing(section)
    if not isinstance(model.network.input, keras.KerasTensor):
        raise LensnetError("train.erasing needs a model with one image input")
    eraser = Eraser(model.network, options["mode"], options["every"], options["fraction"], seed, steps_per_epoch)
    model.add_input_hook(eraser)
    return ErasingSnapshot(eraser, run_dir, write=write)
