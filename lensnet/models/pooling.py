"""Pooling: backbone features -> one vector per image, the shared first piece of every task head.

PROVISIONAL (contract branch): today's backbones still pool inside themselves and return (B, D), so
this only pools what is not pooled yet. The models branch replaces this file with the real pooling
head (avg | max | cls | prefix_mean | tokens_avg, per-backbone default); the signature stays.
"""

from __future__ import annotations

from typing import Any

import keras


def pool_features(backbone: keras.Model, features: Any, mode: str | None = None) -> Any:
    """(B, D) from a backbone's features: as they are when already pooled, else a global average."""
    del backbone, mode  # the provisional version knows one pooling only
    rank = len(features.shape)
    if rank == 2:
        return features
    if rank == 3:
        return keras.layers.GlobalAveragePooling1D(name="pool_tokens")(features)
    return keras.layers.GlobalAveragePooling2D(name="pool_map")(features)
