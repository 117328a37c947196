"""Model registry: `create_model(name, input_shape, **overrides)` builds any backbone by name.

A backbone returns features (a map or tokens, see `lensnet.models.registry`);
`pool_features(backbone, features, mode=None)` pools them to (batch, D).

Importing this package registers every family, so `keras.models.load_model` can
rebuild a saved lensnet model (`import lensnet.models` before loading).

Layer: above core, beside data (the two never import each other). May import lensnet.core only.
"""

from lensnet.core.plugins import import_modules
from lensnet.models.backbone import Backbone
from lensnet.models.pooling import FeaturePooling, pool_features
from lensnet.models.registry import create_model, list_models, model_info, register_model

import_modules(__name__)  # every family file registers its models (one family per file, no list to edit)

__all__ = ["Backbone", "FeaturePooling", "create_model", "list_models", "model_info", "pool_features", "register_model"]
