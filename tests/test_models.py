"""Model registry: every backbone builds tiny, returns features (a map or tokens) with the
metadata a task needs, pools through the shared head, round-trips, traces with batch None,
and bad names, options and shapes fail as one-line LensnetErrors."""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY

from lensnet.core.errors import LensnetError
from lensnet.models import create_model, list_models, model_info, pool_features, register_model
from lensnet.models import registry as registry_module

TINY_SHAPE = (16, 16)
# Backbones (features for a task to pool); super-resolution models are tested in test_super_resolution.py.
NAMES = [entry["name"] for entry in list_models() if entry["kind"] == "backbone"]
EXPECTED = {
    "cnn_small",
    "resnet18",
    "resnet34",
    "effnetv2_b0",
    "effnetv2_s",
    "vit_tiny",
    "vit_small",
    "deit_tiny",
    "swin_tiny",
    "cvt_tiny",
    "cvt_13",
    "cct_7",
    "cct_2",
    "p4cnn_small",
    "d4cnn_small",
}


def _tiny(name: str, channels: int = 1) -> keras.Model:
    return create_model(name, (*TINY_SHAPE, channels), **TINY[name])


def _images(batch: int, channels: int, size: tuple[int, int] = TINY_SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *size, channels)).astype("float32")


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- registry content -------------------------------------------------------


def test_list_models_content():
    entries = list_models()
    assert [e["name"] for e in entries] == sorted(e["name"] for e in entries)
    assert EXPECTED <= set(NAMES)
    for entry in entries:
        assert set(entry) == {"name", "family", "kind", "description", "defaults", "train_defaults"}
        assert entry["kind"] in ("backbone", "super_resolution")
        assert entry["family"] and entry["description"]
        assert entry["defaults"]["weights"] is None  # never pretrained unless a local file is given
    families = {e["name"]: e["family"] for e in entries}
    assert families["resnet18"] == "resnet" and families["vit_tiny"] == "vit" and families["swin_tiny"] == "swin"
    assert families["cct_2"] == "cct" and families["p4cnn_small"] == families["d4cnn_small"] == "equivariant"
    assert model_info("vit_tiny") == next(e for e in entries if e["name"] == "vit_tiny")
    assert model_info("vit_small")["defaults"]["hidden_dim"] == 384
    assert {e["name"] for e in entries if e["kind"] == "super_resolution"} == {"bicubic", "edsr", "rcan", "swinir"}


def test_every_model_has_tiny_test_overrides():
    # A newly registered model must say here how to build it small, so that it is tested.
    assert set(NAMES) == set(TINY)


def test_model_info_is_a_copy():
    model_info("cnn_small")["defaults"]["filters"].append(999)
    assert 999 not in model_info("cnn_small")["defaults"]["filters"]


def test_register_model_adds_a_model_without_touching_anything_else():
    @register_model("_test_mlp", family="test", description="flatten + dense", defaults={"units": 4})
    def _build(input_shape, units):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(units)(keras.layers.Flatten()(inputs)))

    try:
        model = create_model("_test_mlp", (4, 4, 1), units=3)
        assert model.output_shape == (None, 3)
        assert "_test_mlp" in [e["name"] for e in list_models()]
        with pytest.raises(ValueError):
            register_model("_test_mlp", family="test", description="", defaults={})(_build)
    finally:
        registry_module._REGISTRY.pop("_test_mlp", None)


# --- every model, tiny ------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_builds_tiny_and_outputs_finite_features(name, channels):
    model = _tiny(name, channels)
    x = _images(3, channels)
    y = model(x, training=False)
    assert y.dtype == "float32"
    assert tuple(y.shape) == (3, *model.output_shape[1:])
    assert len(y.shape) == (4 if model.feature_kind == "map" else 3)
    assert model.input_shape == (None, *TINY_SHAPE, channels)
    assert np.all(np.isfinite(np.asarray(y)))
    pooled = pool_features(model, y)
    assert tuple(pooled.shape) == (3, model.feature_dim) and pooled.dtype == "float32"
    # The batch dimension stays free: a different batch size works on the same model.
    assert tuple(model(x[:1], training=False).shape) == (1, *model.output_shape[1:])


@pytest.mark.parametrize("name", NAMES)
def test_save_load_safe_mode_and_graph_mode(name, tmp_path):
    model = _tiny(name, 1)
    x = _images(4, 1, seed=1)
    expected = np.asarray(model(x, training=False))

    # Graph mode with an unknown batch size, as SavedModel/ONNX export traces it.
    fn = tf.function(lambda t: model(t, training=False), input_signature=[tf.TensorSpec([None, *TINY_SHAPE, 1])])
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-5)

    path = os.fspath(tmp_path / f"{name}.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    assert type(reloaded) is type(model)
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)

    # get_config holds every constructor argument: from_config rebuilds the same graph.
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x, training=False)), expected)
    assert clone.get_config() == model.get_config()


def test_backbone_inside_a_task_model_round_trips(tmp_path):
    # What the trainer does: backbone + head in one functional model, saved and reloaded.
    backbone = _tiny("vit_tiny", 3)
    inputs = keras.Input((*TINY_SHAPE, 3))
    outputs = keras.layers.Dense(2, name="head")(pool_features(backbone, backbone(inputs)))
    model = keras.Model(inputs, outputs)
    x = _images(2, 3)
    path = os.fspath(tmp_path / "task.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_gives_float32_features(name, mixed_precision):
    model = _tiny(name, 3)
    assert model.dtype_policy.name == "mixed_float16"
    y = model(_images(2, 3), training=False)
    assert y.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(y)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn_small", "swin_tiny", "cvt_tiny"])
def test_builds_and_trains_under_mirrored_strategy(name):
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        backbone = _tiny(name, 1)
        inputs = keras.Input((*TINY_SHAPE, 1))
        model = keras.Model(inputs, keras.layers.Dense(1)(pool_features(backbone, backbone(inputs))))
        model.compile(optimizer="adam", loss="mse")
    history = model.fit(_images(4, 1), np.zeros((4, 1), "float32"), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_local_weights_override(tmp_path):
    model = _tiny("cnn_small", 1)
    path = os.fspath(tmp_path / "cnn.weights.h5")
    model.save_weights(path)
    again = create_model("cnn_small", (*TINY_SHAPE, 1), weights=path, **TINY["cnn_small"])
    x = _images(2, 1)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))
    with pytest.raises(LensnetError, match="not found"):
        create_model("cnn_small", (*TINY_SHAPE, 1), weights=os.fspath(tmp_path / "missing.weights.h5"))


# --- errors -----------------------------------------------------------------


def test_unknown_name_lists_valid_models():
    with pytest.raises(LensnetError) as info:
        create_model("resnet9000", (64, 64, 1))
    message = str(info.value)
    assert "resnet9000" in message
    assert all(name in message for name in NAMES)
    with pytest.raises(LensnetError, match="resnet9000"):
        model_info("resnet9000")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_override_names_the_key_and_the_valid_ones(name):
    with pytest.raises(LensnetError) as info:
        create_model(name, (64, 64, 1), not_an_option=3)
    message = str(info.value)
    assert "not_an_option" in message and name in message
    for key in model_info(name)["defaults"]:
        assert key in message


@pytest.mark.parametrize(
    "name, shape, overrides",
    [
        ("cnn_small", (4, 4, 1), {}),
        ("resnet18", (16, 16, 1), {}),
        ("resnet34", (16, 16, 3), {}),
        ("effnetv2_b0", (16, 16, 1), {}),
        ("effnetv2_s", (24, 24, 3), {}),
        ("vit_tiny", (64, 64, 1), {"patch_size": 6}),
        ("vit_small", (150, 150, 3), {"patch_size": 8}),
        ("deit_tiny", (100, 100, 1), {"patch_size": 16}),
        ("swin_tiny", (150, 150, 1), {}),
        ("swin_tiny", (64, 64, 1), {"patch_size": 4}),
        ("cct_2", (34, 34, 1), {}),
        ("p4cnn_small", (60, 60, 1), {}),
        ("d4cnn_small", (64, 48, 1), {}),
    ],
)
def test_incompatible_input_shape_names_shape_and_model(name, shape, overrides):
    with pytest.raises(LensnetError) as info:
        create_model(name, shape, **overrides)
    message = str(info.value)
    assert str(shape) in message and name in message
    assert "\n" not in message


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 0), (64, "x", 1), None, (64.5, 64, 1)])
def test_malformed_input_shape(shape):
    with pytest.raises(LensnetError, match="input_shape"):
        create_model("cnn_small", shape)


@pytest.mark.parametrize(
    "name, overrides, fragment",
    [
        ("vit_tiny", {"hidden_dim": 100}, "divisible by num_heads"),
        ("vit_tiny", {"pooling": "mean"}, "pooling"),
        ("vit_tiny", {"pooling": "cls", "use_class_token": False}, "pooling"),
        ("cnn_small", {"pooling": "cls"}, "pooling"),
        ("cnn_small", {"bn_momentum": 1.5}, "bn_momentum"),
        ("resnet18", {"stage_filters": [64, 128]}, "same non-zero length"),
        ("swin_tiny", {"num_heads": [5, 6, 12, 24]}, "divisible"),
        ("effnetv2_b0", {"stackwise_block_types": ["cba"] + ["fused"] * 2 + ["unfused"] * 2 + ["mystery"]}, "mystery"),
        ("p4cnn_small", {"group": "C8"}, "group 'C8' is not supported"),
        ("d4cnn_small", {"kernel_size": 4}, "kernel_size must be odd"),
        ("cct_2", {"hidden_dim": 100, "num_heads": 3}, "divisible by num_heads"),
    ],
)
def test_bad_hyper_parameters_are_user_errors(name, overrides, fragment):
    with pytest.raises(LensnetError, match=fragment):
        create_model(name, (64, 64, 1), **overrides)


# --- automatic patch sizes (documented in vit.py and swin.py) ---------------


@pytest.mark.parametrize("size, patch", [(64, 8), (96, 8), (128, 8), (150, 10), (100, 10), (75, 15)])
def test_vit_auto_patch_size(size, patch):
    from lensnet.models.vit import resolve_patch_size

    assert resolve_patch_size((size, size, 1), None, "vit_tiny") == (patch, patch)
    assert resolve_patch_size((size, size, 1), "auto", "vit_tiny") == (patch, patch)  # YAML-friendly spelling


@pytest.mark.parametrize("size, patch", [(64, 2), (96, 3), (128, 4)])
def test_swin_auto_patch_size(size, patch):
    from lensnet.models.swin import resolve_swin_patch_size

    assert resolve_swin_patch_size((size, size, 1), None, 4, 4, "swin_tiny") == patch
    assert resolve_swin_patch_size((size, size, 1), "auto", 4, 4, "swin_tiny") == patch


def test_vit_builds_at_150px_with_automatic_patch():
    model = create_model("vit_tiny", (150, 150, 1), num_layers=1)
    assert model.patch_size == (10, 10) and model.patch_grid == (15, 15)
    assert model(_images(1, 1, size=(150, 150))).shape == (1, 1 + 15 * 15, 192)


# --- default sizes: build only, one forward pass ----------------------------


@pytest.mark.parametrize("name", NAMES)
def test_default_size_builds_at_64px(name, record_property):
    start = time.perf_counter()
    model = create_model(name, (64, 64, 1))
    y = model(_images(1, 1, size=(64, 64)), training=False)
    params = int(model.count_params())
    record_property("params", params)
    record_property("seconds", round(time.perf_counter() - start, 2))
    assert tuple(y.shape) == (1, *model.output_shape[1:])
    assert np.all(np.isfinite(np.asarray(y)))
    if name in ("cnn_small", "cct_2", "p4cnn_small", "d4cnn_small"):  # the small CPU models
        assert 100_000 <= params <= 500_000
    else:
        assert 1_000_000 < params < 40_000_000


# --- features, metadata and the shared pooling head ---------------------------

# (feature_kind, num_prefix_tokens, patch_grid, feature_dim, default_pooling) of each TINY model at 16 px.
FEATURES = {
    "cnn_small": ("map", 0, (8, 8), 8, "avg"),
    "resnet18": ("map", 0, (2, 2), 8, "avg"),
    "resnet34": ("map", 0, (2, 2), 8, "avg"),
    "effnetv2_b0": ("map", 0, (4, 4), 8, "avg"),
    "effnetv2_s": ("map", 0, (4, 4), 8, "avg"),
    "vit_tiny": ("tokens", 1, (4, 4), 16, "cls"),
    "vit_small": ("tokens", 1, (4, 4), 16, "cls"),
    "deit_tiny": ("tokens", 2, (4, 4), 16, "cls"),
    "swin_tiny": ("map", 0, (4, 4), 16, "avg"),
    "cvt_tiny": ("tokens", 1, (2, 2), 16, "cls"),
    "cvt_13": ("tokens", 1, (2, 2), 16, "cls"),
    "cct_7": ("tokens", 1, (4, 4), 16, "cls"),  # the prefix token is the sequence-pooled one
    "cct_2": ("tokens", 1, (4, 4), 16, "cls"),
    "p4cnn_small": ("map", 0, (8, 8), 8, "avg"),
    "d4cnn_small": ("map", 0, (8, 8), 8, "avg"),
}


@pytest.mark.parametrize("name", NAMES)
def test_feature_metadata(name):
    model = _tiny(name)
    kind, prefix, grid, dim, pooling = FEATURES[name]
    assert (model.feature_kind, model.num_prefix_tokens, model.patch_grid) == (kind, prefix, grid)
    assert (model.feature_dim, model.default_pooling) == (dim, pooling)
    if kind == "map":
        assert model.output_shape == (None, *grid, dim)
    else:  # prefix tokens first, then one token per patch
        assert model.output_shape == (None, prefix + grid[0] * grid[1], dim)
    info = model.feature_info()
    assert info["feature_kind"] == kind and info["patch_grid"] == list(grid)
    # The metadata survives a rebuild from the config (as after loading a saved model).
    clone = type(model).from_config(model.get_config())
    assert clone.feature_info() == info


@pytest.mark.parametrize("name", ["cnn_small", "resnet18"])
def test_pyramid_outputs_give_every_stage(name):
    model = _tiny(name)
    assert list(model.pyramid_outputs) == ["stage0", "stage1"]
    extractor = keras.Model(model.input, model.pyramid_outputs)
    stages = extractor(_images(2, 1))
    assert stages["stage1"].shape[1:3] == model.patch_grid
    assert stages["stage0"].shape[1] == 2 * stages["stage1"].shape[1]


def test_cvt_convolutional_attention_and_class_token_in_the_last_stage():
    from lensnet.models.cvt import ConvAttention

    model = _tiny("cvt_tiny")
    attentions = [layer for layer in model.layers if isinstance(layer, ConvAttention)]
    assert len(attentions) == 3 and [a.num_prefix_tokens for a in attentions] == [0, 0, 1]
    assert not any("position" in w.path for w in model.weights)  # no position embedding
    # keys and values come from a stride-2 depthwise projection: a quarter of the query positions
    weights, _ = attentions[0].attention_weights(keras.ops.ones((1, 8 * 8, 8)))
    assert tuple(weights.shape) == (1, 1, 64, 16)
    avg = create_model("cvt_tiny", (16, 16, 1), **{**TINY["cvt_tiny"], "use_class_token": False})
    assert (avg.num_prefix_tokens, avg.default_pooling) == (0, "avg")
    with pytest.raises(LensnetError, match="divisible"):
        create_model("cvt_tiny", (16, 16, 1), **{**TINY["cvt_tiny"], "num_heads": [3, 1, 2]})


def test_cct_tokenizer_norm_centres_the_tokens_and_round_trips():
    """`tokenizer_norm` (on in the registry, off for the paper's CCT) puts a BatchNormalization after each
    tokenizer pool: in training mode the tokens entering the blocks are centred per channel, which the paper's
    ReLU/max-pool tokens are not (issue 22: their shared positive part keeps CCT at the label prior)."""
    from lensnet.models.cct import CCTBackbone

    images = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype("float32")

    def token_means(model):
        tokens = keras.Model(model.input, model.get_layer("tokens").output)(images, training=True)
        return np.abs(np.asarray(tokens).mean(axis=(0, 1)))

    paper = create_model("cct_2", (16, 16, 1), **TINY["cct_2"], tokenizer_norm=False)  # the paper's tokenizer
    normed = create_model("cct_2", (16, 16, 1), **TINY["cct_2"], bn_momentum=0.5)
    assert normed.tokenizer_norm and CCTBackbone((16, 16, 1), hidden_dim=8, num_heads=2).tokenizer_norm is False
    assert not any("tokenizer_bn" in layer.name for layer in paper.layers)
    assert [layer.momentum for layer in normed.layers if "tokenizer_bn" in layer.name] == [0.5, 0.5]
    assert token_means(paper).max() > 0.1 and token_means(normed).max() < 1e-3
    again = normed.__class__.from_config(normed.get_config())
    again.set_weights(normed.get_weights())
    np.testing.assert_allclose(np.asarray(again(images)), np.asarray(normed(images)), atol=1e-5)
    with pytest.raises(LensnetError, match="bn_momentum"):
        create_model("cct_2", (16, 16, 1), **TINY["cct_2"], bn_momentum=1.0)


def test_cct_dense_initializer_reaches_the_blocks_and_round_trips():
    """The registry's CCT starts its blocks' dense kernels Glorot-uniform (std ~0.1 at these widths); the paper's
    truncated-normal(0.02) is `dense_initializer=None`, the constructor's default (issue 22)."""
    from lensnet.models.cct import CCTBackbone

    def fc1_std(model):
        return float(np.std(np.asarray(model.get_layer("block0").fc1.kernel)))

    registry = create_model("cct_2", (16, 16, 1), **{**TINY["cct_2"], "hidden_dim": 64})
    paper = create_model("cct_2", (16, 16, 1), **{**TINY["cct_2"], "hidden_dim": 64}, dense_initializer=None)
    assert registry.dense_initializer == "glorot_uniform" and fc1_std(registry) > 0.08
    assert fc1_std(paper) < 0.025 and CCTBackbone((16, 16, 1), hidden_dim=8, num_heads=2).dense_initializer is None
    block = registry.get_layer("block0")
    assert block.__class__.from_config(block.get_config()).kernel_initializer == "glorot_uniform"
    with pytest.raises(LensnetError, match="initializer"):
        create_model("cct_2", (16, 16, 1), **TINY["cct_2"], dense_initializer="nope")


def test_shifted_patches_stack_the_four_half_patch_diagonal_shifts_and_normalise_each_patch():
    """Shifted patch tokenisation (Lee et al. 2021): channel 0 is the image, channels 1-4 the image moved
    half a patch down-right, down-left, up-right and up-left (zero-filled); each patch's vector over its
    pixels and five channels has mean 0 and variance 1 before the learned scale and offset."""
    from lensnet.models.layers import ShiftedPatches

    image = np.zeros((1, 8, 8, 1), "float32")
    image[0, 3, 4, 0] = 1.0
    layer = ShiftedPatches(4, epsilon=0.0)
    out = np.asarray(layer(image))
    assert out.shape == (1, 8, 8, 5)
    # undo the per-patch normalisation: within a patch, the bright pixel is its maximum
    spots = [tuple(np.argwhere(out[0, :, :, c] == out[0, :, :, c].max())[0]) for c in range(5)]
    assert spots == [(3, 4), (5, 6), (5, 2), (1, 6), (1, 2)]
    patches = out.reshape(2, 4, 2, 4, 5).transpose(0, 2, 1, 3, 4).reshape(4, -1)
    np.testing.assert_allclose(patches.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(patches.var(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("tokenizer", ["shifted", "conv"])
@pytest.mark.parametrize("name", ["vit_tiny", "deit_tiny"])
def test_tokenizers_round_trip_and_the_block_walks_use_them(name, tokenizer, tmp_path):
    """`tokenizer="shifted"` (the patch embedding sees the 5C-channel shifted stack) and `"conv"` (a
    stride-2 conv stem down to the token grid, embedded at patch 1): the model keeps its token grid, saves
    and reloads in safe mode, and code that calls the inner layers (token walks, MAE's visible-token
    encoder) goes through the same tokenizer as the model."""
    from lensnet.models.masked import VisibleTokenEncoder
    from lensnet.models.tokens import block_tokens

    model = create_model(name, (*TINY_SHAPE, 1), **TINY[name], tokenizer=tokenizer)
    plain = create_model(name, (*TINY_SHAPE, 1), **TINY[name])
    assert model.get_config()["tokenizer"] == tokenizer and plain.get_config()["tokenizer"] == "patch"
    assert model.output_shape == plain.output_shape and model.patch_grid == plain.patch_grid == (4, 4)
    kinds = {"shifted": "ShiftedPatches", "conv": "ConvStem"}
    assert type(model.get_layer("tokenizer")).__name__ == kinds[tokenizer]
    x = _images(3, 1)
    expected = np.asarray(model(x, training=False))
    path = os.fspath(tmp_path / "tokenizer.keras")
    model.save(path)
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(path, safe_mode=True)(x, training=False)),
                                  expected)
    family = name.split("_")[0]
    final_norm = model.get_layer(family).get_layer(f"{family}_encoder").layer_norm
    walked = np.asarray(final_norm(block_tokens(model, x, -1)))
    np.testing.assert_allclose(walked, expected, rtol=1e-4, atol=1e-4)
    keep = np.tile(np.arange(16)[None], (3, 1))
    encoded = np.asarray(VisibleTokenEncoder(model).encode(x, keep))
    np.testing.assert_allclose(final_norm(encoded), expected, rtol=1e-4, atol=1e-4)


def test_locality_attention_masks_the_diagonal_scales_by_its_temperature_and_round_trips(tmp_path):
    """`attention="locality"` (Lee et al. 2021): no token attends to itself; the learned temperature
    multiplies the plain attention logits (scores = softmax(e^t * logits) over the other tokens); the model
    saves and reloads in safe mode; the block walks go through the same attention."""
    from lensnet.models.tokens import attention_maps, block_tokens

    model = create_model("vit_tiny", (*TINY_SHAPE, 1), **TINY["vit_tiny"], attention="locality")
    plain = create_model("vit_tiny", (*TINY_SHAPE, 1), **TINY["vit_tiny"])
    assert model.get_config()["attention"] == "locality" and plain.get_config()["attention"] == "global"
    assert model.output_shape == plain.output_shape
    x = _images(3, 1)
    maps = [np.asarray(m) for m in attention_maps(model, x)]
    assert all(np.diagonal(m, axis1=-2, axis2=-1).max() == 0.0 for m in maps)
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, atol=1e-5)
    assert np.diagonal(np.asarray(attention_maps(plain, x)[0]), axis1=-2, axis2=-1).min() > 0.0

    block = model.get_layer("vit").get_layer("vit_encoder").encoder_layers[0]
    tokens = np.asarray(model.get_layer("vit").get_layer("vit_patching_and_embedding")(x))
    y = block.layer_norm_1(tokens)
    cold = np.asarray(block.mha(y, y, return_attention_scores=True)[1])
    block.mha.temperature.assign(np.log(3.0))
    hot = np.asarray(block.mha(y, y, return_attention_scores=True)[1])
    off = ~np.eye(tokens.shape[1], dtype=bool)
    # log(hot) - 3 log(cold) is the same within each row (the softmax's normaliser) over the other tokens
    gap = np.where(off, np.log(np.where(off, hot, 1.0)) - 3.0 * np.log(np.where(off, cold, 1.0)), np.nan)
    np.testing.assert_allclose(np.nanmax(gap, -1) - np.nanmin(gap, -1), 0.0, atol=1e-3)

    expected = np.asarray(model(x, training=False))
    path = os.fspath(tmp_path / "locality.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)
    final_norm = model.get_layer("vit").get_layer("vit_encoder").layer_norm
    np.testing.assert_allclose(np.asarray(final_norm(block_tokens(model, x, -1))), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(LensnetError, match="attention must be one of global, locality, got 'local'"):
        create_model("vit_tiny", (*TINY_SHAPE, 1), **TINY["vit_tiny"], attention="local")


def test_conv_stem_halves_the_grid_per_layer_and_needs_a_power_of_two_patch():
    from lensnet.models.layers import ConvStem

    stem = ConvStem(8, hidden_dim=192, bn_momentum=0.8)
    out = stem(np.zeros((2, 64, 64, 1), "float32"))
    assert out.shape == (2, 8, 8, 96)
    assert [c.filters for c in stem.convs] == [24, 48, 96] and all(n.momentum == 0.8 for n in stem.norms)
    with pytest.raises(LensnetError, match="power-of-two patch_size"):
        create_model("vit_tiny", (30, 30, 1), **{**TINY["vit_tiny"], "patch_size": 6}, tokenizer="conv")
    with pytest.raises(LensnetError, match="tokenizer must be one of patch, shifted, conv"):
        create_model("deit_tiny", (*TINY_SHAPE, 1), **TINY["deit_tiny"], tokenizer="overlap")


def test_deit_keeps_class_and_distillation_tokens():
    model = _tiny("deit_tiny")
    y = np.asarray(model(_images(2, 1), training=False))
    assert y.shape == (2, 2 + 16, 16)
    assert not np.allclose(y[:, 0], y[:, 1])  # two different tokens, no longer averaged away
    np.testing.assert_allclose(np.asarray(pool_features(model, y)), y[:, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pool_features(model, y, "prefix_mean")), y[:, :2].mean(1), rtol=1e-5,
                               atol=1e-6)


def test_pool_features_modes_compute_what_they_say():
    tokens_model = _tiny("vit_tiny")
    t = np.asarray(tokens_model(_images(3, 1), training=False))
    expected = {"cls": t[:, 0], "prefix_mean": t[:, :1].mean(1), "tokens_avg": t[:, 1:].mean(1),
                "avg": t[:, 1:].mean(1), "max": t[:, 1:].max(1)}
    for mode, want in expected.items():
        np.testing.assert_allclose(np.asarray(pool_features(tokens_model, t, mode)), want, rtol=1e-5, atol=1e-6)
    map_model = _tiny("cnn_small")
    m = np.asarray(map_model(_images(3, 1), training=False))
    np.testing.assert_allclose(np.asarray(pool_features(map_model, m)), m.mean((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pool_features(map_model, m, "max")), m.max((1, 2)), rtol=1e-6)


def test_cnn_pooling_argument_sets_the_default_pooling():
    # `--set model.args.pooling=max` keeps doing what it did: max-pooled features.
    model = create_model("cnn_small", (*TINY_SHAPE, 1), **{**TINY["cnn_small"], "pooling": "max"})
    assert model.default_pooling == "max" and model.get_config()["pooling"] == "max"
    m = np.asarray(model(_images(2, 1), training=False))
    np.testing.assert_allclose(np.asarray(pool_features(model, m)), m.max((1, 2)), rtol=1e-6)


def test_vit_without_class_token():
    model = create_model("vit_tiny", (*TINY_SHAPE, 1), **{**TINY["vit_tiny"], "use_class_token": False,
                                                        "pooling": "tokens_avg"})
    assert model.num_prefix_tokens == 0 and model.output_shape == (None, 16, 16)
    assert pool_features(model, model(_images(2, 1))).shape == (2, 16)


@pytest.mark.parametrize("name, mode", [("cnn_small", "cls"), ("vit_tiny", "median"), ("swin_tiny", "prefix_mean")])
def test_pool_features_rejects_a_mode_that_does_not_apply(name, mode):
    model = _tiny(name)
    with pytest.raises(LensnetError, match=f"pooling '{mode}'.*{name}"):
        pool_features(model, model.output, mode)


def test_pool_features_passes_a_plain_vector_through():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    assert pool_features(plain, plain.output) is plain.output


def test_task_model_with_pooling_head_round_trips_in_safe_mode(tmp_path, mixed_precision):
    backbone = _tiny("deit_tiny", 1)
    inputs = keras.Input((*TINY_SHAPE, 1))
    features = backbone(inputs)
    pooled = pool_features(backbone, features)
    assert pooled.dtype == "float32"  # float32 under mixed precision too
    distill = pool_features(backbone, features, "prefix_mean")  # two pooling heads in one model
    model = keras.Model(inputs, keras.layers.Concatenate()([pooled, distill]))
    x = _images(2, 1)
    path = os.fspath(tmp_path / "pooled.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("name", ["cnn_small", "resnet18"])
def test_bn_momentum_reaches_every_batch_norm(name):
    assert model_info(name)["defaults"]["bn_momentum"] == 0.9
    model = create_model(name, (*TINY_SHAPE, 1), **{**TINY[name], "bn_momentum": 0.8})
    layers = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert layers and all(la.momentum == 0.8 for la in layers)
    assert model.get_config()["bn_momentum"] == 0.8


def _swin_block_reference(weights, x, side, window, shift, heads, region_mask=True):
    """A Swin block from the paper's definition, without window partitioning: token p attends token q iff on
    the grid rolled by -shift both fall in the same window and (shifted blocks) come from the same region of
    the unrolled image; relative position bias, pre-norm residual attention and GELU MLP as in timm."""
    from scipy.special import erf

    def norm(v, name):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) * weights[
            f"{name}/gamma"] + weights[f"{name}/beta"]

    batch, length, dim = x.shape
    head_dim = dim // heads
    qkv = norm(x, "norm1") @ weights["attention_qkv/kernel"] + weights["attention_qkv/bias"]
    q, k, v = (qkv[..., i * dim:(i + 1) * dim].reshape(batch, length, heads, head_dim) for i in range(3))
    rows, cols = np.divmod(np.arange(length), side)
    rows, cols = (rows - shift) % side, (cols - shift) % side
    same = (rows // window)[:, None] * side + (cols // window)[:, None] == (rows // window) * side + cols // window
    if shift and region_mask:
        region = np.digitize(rows, [side - window, side - shift]) * 3 + np.digitize(cols, [side - window, side - shift])
        same &= region[:, None] == region[None]
    d_row = (rows % window)[:, None] - rows % window + window - 1
    d_col = (cols % window)[:, None] - cols % window + window - 1
    bias = weights["relative_position_bias_table"][d_row * (2 * window - 1) + d_col].transpose(2, 0, 1)
    logits = np.einsum("bphd,bqhd->bhpq", q, k) / np.sqrt(head_dim) + bias
    logits = np.where(same, logits, -np.inf)
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    out = np.einsum("bhpq,bqhd->bphd", attention, v).reshape(batch, length, dim)
    x = x + out @ weights["attention_projection/kernel"] + weights["attention_projection/bias"]
    hidden = norm(x, "norm2") @ weights["fc1/kernel"] + weights["fc1/bias"]
    hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))
    return x + hidden @ weights["fc2/kernel"] + weights["fc2/bias"]


@pytest.mark.parametrize("block", [0, 1])  # window attention, then shifted window attention with its mask
def test_swin_blocks_match_a_reference_swin_block(block):
    """lensnet's Swin (keras-hub's blocks) computes the Swin block of the paper, shifted-window mask included.
    Issue 22 suspected the mask (Keras warns that WindowAttention "was passed an input with a mask": it is the
    explicit attention mask, which does reach the layer). The unmasked reference differs, so a missing or
    misplaced mask fails here."""
    backbone = create_model("swin_tiny", (16, 16, 1), embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=4,
                            patch_size=2)
    layer = backbone.get_layer("swin").stages[0].blocks[block]
    assert (layer.window_size, layer.shift_size) == (4, 2 * block)
    rng = np.random.default_rng(0)
    for variable in layer.weights:  # non-trivial values everywhere (biases and the bias table start at ~0)
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    weights = {"/".join(v.path.split("/")[-2:]) if v.name in ("kernel", "bias", "gamma", "beta") else v.name:
               np.asarray(v, "float64") for v in layer.weights}
    x = rng.normal(size=(2, 64, 8)).astype("float32")
    got = np.asarray(layer(x))
    np.testing.assert_allclose(got, _swin_block_reference(weights, x.astype("float64"), 8, 4, 2 * block, 2),
                               atol=1e-4)
    if block:
        unmasked = _swin_block_reference(weights, x.astype("float64"), 8, 4, 2, 2, region_mask=False)
        assert np.abs(got - unmasked).max() > 1e-2
