"""The model registry: one name -> one builder with default hyper-parameters.

The idea is timm's `create_model(name, **overrides)`: the trainer, the tuner
and the exporter only ever call `create_model`, so adding a model is one
`@register_model` builder in a family module and nothing else changes.

Every registered model is a *backbone* (`lensnet.models.backbone.Backbone`): it
maps float32 images (H, W, C), already normalised by the data pipeline, to float32
*features*, not a pooled vector:

- a feature map (batch, h, w, C) for the CNN families and Swin (its last stage);
- tokens (batch, N, D) for ViT and DeiT: `num_prefix_tokens` class/distillation
  tokens first, then the `patch_grid` patch tokens row by row.

Its metadata (`feature_kind`, `num_prefix_tokens`, `patch_grid`, `feature_dim`,
`pyramid_outputs`, `default_pooling`) tells a task what it got. Tasks own what
follows: `lensnet.models.pooling.pool_features(backbone, backbone(images))` gives
(batch, D) with the backbone's default pooling, then their heads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras

from lensnet.core.errors import LensnetError

Builder = Callable[..., keras.Model]

# Accepted by every model, handled here rather than in each builder: the
# builders only ever create randomly initialised networks.
GENERIC_DEFAULTS: dict[str, Any] = {"weights": None}

# What a model maps images to. "backbone": features that a task pools (classification, regression...);
# "super_resolution": an image `scale` times larger (lensnet.models.upsampling). A task names the kind it
# builds on (`Task.model_kind`) and `create_model(..., kind=...)` refuses the others in one line.
MODEL_KINDS = ("backbone", "super_resolution")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    builder: Builder | None = None
    kind: str = "backbone"
    train_defaults: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "description": self.description,
            "defaults": {**copy.deepcopy(self.defaults), **GENERIC_DEFAULTS},
            "train_defaults": copy.deepcopy(self.train_defaults),
        }


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, family: str, description: str, defaults: Mapping[str, Any] | None = None, kind: str = "backbone",
    train_defaults: Mapping[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Register `builder(input_shape, **kwargs) -> keras.Model` under `name`.

    `defaults` lists every hyper-parameter a user may override; a key that is not
    in it is rejected by `create_model`, so typos fail loudly instead of being
    silently ignored. `train_defaults` are the model's own `train` settings (its recipe, e.g. a
    learning-rate warm-up for transformers): `lensnet.fit` applies them over its own defaults; the
    task preset, a config file and the command line still win.
    """
    defaults = dict(defaults or {})
    if kind not in MODEL_KINDS:
        raise ValueError(f"model {name!r}: kind must be one of {MODEL_KINDS}, got {kind!r}")
    clash = set(defaults) & set(GENERIC_DEFAULTS)
    if clash:
        raise ValueError(f"model {name!r}: defaults may not redefine generic keys {sorted(clash)}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, family, description, defaults, builder, kind, dict(train_defaults or {}))
        return builder

    return decorator


def _spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise LensnetError(f"unknown model {name!r}; valid models: {valid}")
    return _REGISTRY[name]


def list_models() -> list[dict[str, Any]]:
    """Every registered model as {"name", "family", "description", "defaults"}, sorted by name.

    Each is a backbone returning features (a map or tokens, see the module doc); build
    one to read its `feature_info()`.
    """
    return [_REGISTRY[n].info() for n in sorted(_REGISTRY)]


TRANSFORMER_RECIPE: dict[str, Any] = {"warmup_epochs": 1.0}
"""The `train_defaults` of every transformer family (ViT, DeiT, Swin, CvT, CCT): a linear warm-up.
Without it the first AdamW steps at lensnet's default learning rate throw a pre-norm transformer
out of the region where it trains (measured in lensnet.models.vit's docstring)."""

PLAIN_TRANSFORMER_RECIPE: dict[str, Any] = {**TRANSFORMER_RECIPE, "learning_rate_scale": 0.1}
"""ViT and DeiT (no convolutions) train at 0.1x the task's learning rate as well: at the substructure
preset's 1e-3 they sit at the label prior for two epochs. Measured on the Model II replica (14,400
images, 3 epochs of batch 64, `python -m lensnet.bench accuracy --data tfrecords/bench-deeplense_model_ii-18000-seed0
--dataset deeplense_model_ii --epochs 3 --models MODEL --set train.learning_rate_scale=S`; docs/transformers.md):
vit_tiny 0.868 at 1e-3, 0.927 at 0.3x, 0.935 at 0.1x; deit_tiny 0.885, 0.947, 0.955 (0.1x over 0.3x, paired
bootstrap: +0.009 and +0.008, both intervals above 0); a 4-block DeiT 0.775, 0.943, 0.946. CvT and CCT,
with convolutions, learn at 1e-3 (0.992, 0.996) and keep the task's rate."""


def train_defaults(name: str) -> dict[str, Any]:
    """The model's own `train` settings (empty for an unknown name: create_model reports that one)."""
    spec = _REGISTRY.get(name)
    return copy.deepcopy(spec.train_defaults) if spec else {}


def model_info(name: str) -> dict[str, Any]:
    """The `list_models()` entry of one model."""
    return _spec(name).info()


def _check_input_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = (
            len(shape) == 3
            and all(d > 0 for d in shape)
            and all(float(d) == float(s) for d, s in zip(shape, input_shape))
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise LensnetError(
            f"model {name!r} needs input_shape (height, width, channels) of positive integers, got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def create_model(name: str, input_shape: tuple[int, int, int], *, kind: str | None = None,
                 **overrides: Any) -> keras.Model:
    """Build the backbone `name` for images of `input_shape` (H, W, C).

    Returns a `Backbone` mapping (batch, H, W, C) float32 images to float32 features:
    a map (batch, h, w, C) or tokens (batch, N, D), described by its `feature_kind`,
    `num_prefix_tokens`, `patch_grid`, `feature_dim`, `pyramid_outputs` and
    `default_pooling`; `pool_features(backbone, backbone(images))` pools them to
    (batch, D). `overrides` replace entries of the model's defaults (see
    `model_info(name)["defaults"]`). `weights` may name a local `.weights.h5` file or
    keras-hub preset directory of the same architecture, for any input channels and image
    size (see `lensnet.models.transfer`); nothing is ever downloaded. `kind`, when given, is the
    kind of model the caller needs (MODEL_KINDS): another kind is a one-line error.
    """
    spec = _spec(name)
    if kind is not None and spec.kind != kind:
        fitting = ", ".join(sorted(n for n, s in _REGISTRY.items() if s.kind == kind))
        raise LensnetError(f"model {name!r} is a {spec.kind} model, but this task needs a {kind} model: {fitting}")
    shape = _check_input_shape(name, input_shape)
    valid_keys = {**spec.defaults, **GENERIC_DEFAULTS}
    unknown = sorted(set(overrides) - set(valid_keys))
    if unknown:
        raise LensnetError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; valid options: {', '.join(sorted(valid_keys))}"
        )
    kwargs = {**copy.deepcopy(spec.defaults), **overrides}
    weights = kwargs.pop("weights", None)
    assert spec.builder is not None
    try:
        model = spec.builder(shape, **kwargs)
    except LensnetError:
        raise
    except ValueError as exc:
        # Out-of-range hyper-parameters reach keras/keras-hub as ValueError; they are
        # the user's input, so they surface as one line, not a traceback.
        message = " ".join(str(exc).split())
        raise LensnetError(f"cannot build model {name!r} for input_shape {shape}: {message}") from exc
    if weights is not None:
        _load_local_weights(model, name, weights)
    return model


def _load_local_weights(model: keras.Model, name: str, weights: Any) -> None:
    from lensnet.models.transfer import load_pretrained

    load_pretrained(model, name, weights)
