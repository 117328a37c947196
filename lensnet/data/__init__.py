"""Datasets: record schema, shard writer, importers and the tf.data reader.

The reader API is re-exported lazily: importing `lensnet.data.schema` (as the
simulator's worker processes do) must not pull in TensorFlow.

    from lensnet.data import open_dataset, load, normalisation_spec, apply_normalisation

Layer: above core, beside models (the two never import each other). May import lensnet.core only.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetInfo": "lensnet.data.pipeline",
    "open_dataset": "lensnet.data.pipeline",
    "load": "lensnet.data.pipeline",
    "reader_error": "lensnet.data.pipeline",
    "normalisation_spec": "lensnet.data.normalise",
    "apply_normalisation": "lensnet.data.normalise",
    "augment_batch": "lensnet.data.augment",
    "check_dataset": "lensnet.data.check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lensnet.data' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
