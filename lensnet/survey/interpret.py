"""Why a model scored a cutout: saliency maps computed from an exported model, without retraining or task code.

Differentiable graphs, and which one each method uses:
- integrated gradients (any model): the export's SavedModel `serving_default` function (raw pixels in,
  the card's output out, normalisation inside), differentiated with tf.GradientTape. The baseline is the
  image blurred (Gaussian, sigma = size/8): a constant baseline is useless under per-image standard
  normalisation, which maps every brightness-scaled copy of an image to the same input.
- Grad-CAM (CNN families) and token Grad-CAM (transformer families: the tokens laid back on their patch
  grid): need the model's internal feature map, which a SavedModel signature hides, so they use a Keras
  model file next to the export (`*.keras` in the version folder or the export folder) or, failing that,
  the run checkpoint the card names (card.run.path / card.run.checkpoint). Without one they are skipped,
  and the method list in pipeline.json says so.
- attention rollout (transformer families): the same Keras model; every keras MultiHeadAttention layer's
  weights are recorded during one forward pass (in execution order), averaged over heads, mixed with the
  identity for the residual path and multiplied through the layers (Abnar & Zuidema 2020); the map is the
  class token's row, or the mean over tokens without one, laid on the patch grid. Models without attention
  layers skip it with a note.

The target is the output the pipeline reports: a binary probability or a score's only column, the
predicted class of a multi-class model, the first value of a regressor. Maps are (H, W) float32 in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.export_layout import INPUT_NAME, SIGNATURE
from lensnet.artifacts.exports import ExportedModel
from lensnet.core.errors import LensnetError

METHODS = ("integrated_gradients", "gradcam", "attention_rollout")


def keras_model_path(exported: ExportedModel) -> Path | None:
    """A Keras model file for `exported`: beside the version, beside the export, or the run's checkpoint."""
    for folder in (exported.path, exported.path.parent):
        found = sorted(folder.glob("*.keras"))
        if found:
            return found[0]
    run = exported.card.get("run") or {}
    if run.get("path") and run.get("checkpoint"):
        candidate = Path(run["path"]) / run["checkpoint"]
        if candidate.is_file():
            return candidate
    return None


def _normalise(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(np.asarray(values, dtype=np.float32))
    values = np.clip(values, 0, None)
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else values


class Explainer:
    """Saliency maps for images (N, H, W, C) raw pixels, from one exported model."""

    def __init__(self, exported: ExportedModel, methods: tuple[str, ...] = METHODS, steps: int = 24) -> None:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise LensnetError(f"unknown interpretation method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        self.exported = exported
        self.steps = int(steps)
        self.spec = exported.spec
        self.notes: dict[str, str] = {}
        self.methods: list[str] = []
        self._signature = None
        self._keras = None
        self._model = None
        self._path: Path | None = None
        self._load_error = ""
        self._attention: list = []
        if "integrated_gradients" in methods:
            import tensorflow as tf

            try:
                self._loaded = tf.saved_model.load(os.fspath(exported.path))
                self._signature = self._loaded.signatures[SIGNATURE]
            except Exception as exc:  # noqa: BLE001  (a damaged SavedModel is named, not a traceback)
                raise LensnetError(f"cannot load SavedModel {exported.path} for gradients: {exc}") from None
            self.methods.append("integrated_gradients")
            self.notes["integrated_gradients"] = f"SavedModel {SIGNATURE} function of {exported.path}"
        if "gradcam" in methods:
            path = keras_model_path(exported)
            if path is None:
                self.notes["gradcam"] = "skipped: no Keras model beside the export or at the card's run checkpoint"
            else:
                self._open_keras(path)
        if "attention_rollout" in methods:
            self._open_attention()

    def _open_attention(self) -> None:
        import keras

        if self._model is None:
            path = keras_model_path(self.exported)
            if path is None:
                self.notes["attention_rollout"] = "skipped: no Keras model beside the export or at the run checkpoint"
                return
            self._load(path)
            if self._model is None:
                self.notes["attention_rollout"] = f"skipped: cannot load {path}"
                return
        # Keras lists nested layers only through this (private) walk; keras_hub blocks hold their attention
        # as attributes, not as sub-models.
        layers = [la for la in self._model._flatten_layers() if isinstance(la, keras.layers.MultiHeadAttention)]
        if not layers:
            self.notes["attention_rollout"] = "skipped: the model has no MultiHeadAttention layers"
            return
        self._attention = layers
        self.methods.append("attention_rollout")
        self.notes["attention_rollout"] = f"rollout over {len(layers)} MultiHeadAttention layer(s) of {self._path}"

    def attention_rollout(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        from lensnet.data.normalise import apply_normalisation

        recorded: list[np.ndarray] = []
        originals = {}
        for layer in self._attention:
            originals[id(layer)] = layer.call

            def recording(*args, _call=layer.call, **kwargs):
                kwargs["return_attention_scores"] = True
                output, scores = _call(*args, **kwargs)
                recorded.append(np.asarray(scores))
                return output

            layer.call = recording  # this instance only, for one forward pass
        try:
            normalised = apply_normalisation(tf.constant(images), self.exported.card["normalisation"])
            self._model(normalised, training=False)
        finally:
            for layer in self._attention:
                layer.call = originals[id(layer)]
        from lensnet.models.tokens import rollout

        tokens = recorded[0].shape[-1]
        side = int(np.sqrt(tokens))
        grid = np.asarray(rollout(recorded, tokens - side * side, (side, side)), dtype=np.float32)
        resized = tf.image.resize(grid[..., None], images.shape[1:3], method="bilinear").numpy()[..., 0]
        return np.stack([_normalise(m - m.min()) for m in resized])

    def _load(self, path: Path) -> None:
        import keras

        import lensnet.models  # noqa: F401  (registers custom layers)
        import lensnet.tasks  # noqa: F401

        try:
            self._model = keras.models.load_model(path, compile=False, safe_mode=True)
            self._path = path
        except Exception as exc:  # noqa: BLE001  (a foreign or damaged file: the methods that need it are skipped)
            self._load_error = f"{type(exc).__name__}"

    def _open_keras(self, path: Path) -> None:
        self._load(path)
        model = self._model
        if model is None:
            self.notes["gradcam"] = f"skipped: cannot load {path}: {self._load_error}"
            return
        # The last layer that returns a feature map (B, h, w, C) or tokens (B, T, D): the backbone of a
        # backbone -> pooling -> head task model. Nested models keep their own graph, so the features are
        # reached by running the top-level layers as a chain (checked against the model's own output).
        layers = model.layers[1:]
        index = None
        for i in range(len(layers) - 1, -1, -1):
            shape = tuple(layers[i].output.shape)
            if len(shape) in (3, 4) and shape[1] and shape[1] > 1:
                index = i
                break
        if index is None:
            self.notes["gradcam"] = f"skipped: {path} has no spatial feature map or token sequence"
            return
        probe = np.random.default_rng(0).standard_normal((1, *model.input_shape[1:])).astype(np.float32)
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, chained = self._chain(layers, index, tf.constant(probe), tape)
            target = self._target(tf.cast(chained, tf.float32))
        if not np.allclose(np.asarray(chained), np.asarray(model(probe, training=False)), atol=1e-4):
            self.notes["gradcam"] = f"skipped: {path} is not a chain of layers (a graph Grad-CAM cannot follow)"
            return
        grads = np.asarray(tape.gradient(target, features))
        side = int(np.sqrt(grads.shape[1])) if grads.ndim == 3 else 0
        if not np.any(grads[:, grads.shape[1] - side * side:] if grads.ndim == 3 else grads):
            # a class-token pooling reads no patch token: their Grad-CAM would be 0 everywhere
            self.notes["gradcam"] = (f"skipped: the output of {path} does not depend on the patch tokens of layer "
                                     f"{layers[index].name!r} (class-token pooling)")
            return
        self._keras = (layers, index)
        self.methods.append("gradcam")
        layer = layers[index]
        kind = "token Grad-CAM on" if len(layer.output.shape) == 3 else "Grad-CAM on"
        self.notes["gradcam"] = f"{kind} the output of layer {layer.name!r} of Keras model {path}"

    @staticmethod
    def _chain(layers: list, index: int, x: Any, tape: Any = None) -> tuple[Any, Any]:
        features = None
        for i, layer in enumerate(layers):
            x = layer(x, training=False)
            if i == index:
                features = x
                if tape is not None:
                    tape.watch(features)
        return features, x

    def _target(self, outputs: Any) -> Any:
        import tensorflow as tf

        if self.spec.kind == "probabilities" and self.spec.positive_class is None:
            index = tf.argmax(outputs, axis=-1)
            return tf.gather(outputs, index, axis=1, batch_dims=1)
        return outputs[:, 0]

    def integrated_gradients(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf
        from scipy.ndimage import gaussian_filter

        h, w = images.shape[1:3]
        sigma = max(h, w) / 8.0
        maps = []
        alphas = (np.arange(self.steps, dtype=np.float32) + 0.5) / self.steps  # midpoint rule
        for image in images:
            baseline = np.stack([gaussian_filter(image[..., c], sigma) for c in range(image.shape[-1])], -1)
            path = baseline[None] + alphas[:, None, None, None] * (image - baseline)[None]
            tensor = tf.constant(path.astype(np.float32))
            with tf.GradientTape() as tape:
                tape.watch(tensor)
                outputs = self._signature(**{INPUT_NAME: tensor})[self.exported.output_name]
                target = self._target(outputs)
            grads = tape.gradient(target, tensor).numpy().mean(axis=0)
            maps.append(_normalise(np.abs(grads * (image - baseline)).sum(axis=-1)))
        return np.stack(maps)

    def gradcam(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        from lensnet.data.normalise import apply_normalisation

        normalisation = self.exported.card["normalisation"]
        tensor = tf.constant(images)
        layers, index = self._keras
        with tf.GradientTape() as tape:
            features, outputs = self._chain(layers, index, apply_normalisation(tensor, normalisation), tape)
            target = self._target(tf.cast(outputs, tf.float32))
        grads = tape.gradient(target, features)
        features, grads = features.numpy().astype(np.float32), grads.numpy().astype(np.float32)
        if features.ndim == 3:  # tokens (N, T, D): drop prefix tokens, lay the rest on their square grid
            side = int(np.sqrt(features.shape[1]))
            skip = features.shape[1] - side * side
            features = features[:, skip:].reshape(len(images), side, side, -1)
            grads = grads[:, skip:].reshape(len(images), side, side, -1)
        weights = grads.mean(axis=(1, 2), keepdims=True)
        cams = np.maximum((weights * features).sum(axis=-1), 0)
        resized = tf.image.resize(cams[..., None], images.shape[1:3], method="bilinear").numpy()[..., 0]
        return np.stack([_normalise(m) for m in resized])

    def explain(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{method: maps (N, H, W)} for every method available for this export."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        out = {}
        if "integrated_gradients" in self.methods:
            out["integrated_gradients"] = self.integrated_gradients(images)
        if "gradcam" in self.methods:
            out["gradcam"] = self.gradcam(images)
        if "attention_rollout" in self.methods:
            out["attention_rollout"] = self.attention_rollout(images)
        return out


def concentration(maps: np.ndarray, mask: np.ndarray) -> float:
    """The fraction of the maps' total weight inside `mask` (H, W) bool (1.0 = all of it)."""
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum()
    return float(maps[..., mask].sum() / total) if total > 0 else 0.0
