"""What a run needs to be reproduced: package versions and seeds."""

from __future__ import annotations

import importlib.metadata
import platform
import random

import numpy as np

PACKAGES = (
    "lensnet", "tensorflow", "keras", "keras-hub", "keras-tuner", "lenstronomy", "numpy",
    "scipy", "numba", "astropy", "tf2onnx", "onnx", "onnxruntime", "pyyaml", "google-crc32c",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones are skipped)."""
    from lensnet import __version__

    versions = {"python": platform.python_version(), "lensnet": __version__}
    for name in PACKAGES:
        if name == "lensnet":
            continue
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def seed_everything(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy, TensorFlow and Keras; optionally make TF ops deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
