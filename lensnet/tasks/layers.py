"""Serializable pieces of task heads and losses (loadable under Keras safe_mode)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="lensnet")
class Affine(keras.layers.Layer):
    """y = x * scale + offset with fixed constants: a regression head outputs physical units."""

    def __init__(self, scale: float = 1.0, offset: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.offset = float(offset)

    def call(self, inputs):
        return ops.cast(inputs, self.compute_dtype) * self.scale + self.offset

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


@keras.saving.register_keras_serializable(package="lensnet")
class ScaledRegressionLoss(keras.losses.Loss):
    """MSE, Huber or MAE on (y - pred) / scale, so targets of any unit train alike."""

    def __init__(self, kind: str = "mse", scale: float = 1.0, name: str = "scaled_regression_loss", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.kind = kind
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        err = (ops.cast(y_pred, "float32") - ops.cast(y_true, "float32")) / self.scale
        if self.kind == "mae":
            loss = ops.abs(err)
        elif self.kind == "huber":
            a = ops.abs(err)
            loss = ops.where(a <= 1.0, 0.5 * err**2, a - 0.5)
        else:
            loss = err**2
        return ops.mean(loss, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "scale": self.scale}


@keras.saving.register_keras_serializable(package="lensnet")
class PerImageNormalisation(keras.layers.Layer):
    """Normalise each image by its own statistics (lensnet.data.normalise `standard` or `minmax`), inside a model."""

    def __init__(self, method: str = "standard", **kwargs) -> None:
        super().__init__(**kwargs)
        self.method = str(method)

    def call(self, images):
        from lensnet.data.normalise import apply_normalisation

        return apply_normalisation(images, {"method": self.method})

    def get_config(self) -> dict:
        return {**super().get_config(), "method": self.method}


@keras.saving.register_keras_serializable(package="lensnet")
class InversePerImageNormalisation(keras.layers.Layer):
    """[normalised output, raw input] -> the output in the raw input's units (the inverse of PerImageNormalisation
    with the input's statistics): an image-to-image model fed raw pixels returns pixels in the same units."""

    def __init__(self, method: str = "standard", **kwargs) -> None:
        super().__init__(**kwargs)
        self.method = str(method)

    def call(self, inputs):
        from lensnet.data.normalise import invert_normalisation

        outputs, images = inputs
        return invert_normalisation(outputs, {"method": self.method}, images)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "method": self.method}
