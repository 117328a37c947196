"""Transfer from local pretrained weights (`model.weights`): a .weights.h5 or a keras-hub preset
directory saved by the test itself, loaded into another image size (position embeddings
interpolated) and channel count (documented kernel rule); bad weights are one-line errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import TINY

from lensnet.core.errors import LensnetError, run_cli
from lensnet.models import create_model
from lensnet.models.transfer import adapt_channels


def _vit(shape, name="vit_tiny"):
    return create_model(name, shape, **TINY[name])


def _get(model, fragment):
    return next(np.asarray(w) for w in model.weights if fragment in w.path)


@pytest.mark.parametrize("name", ["vit_tiny", "deit_tiny"])
def test_weights_load_into_another_size_and_channel_count(tmp_path, name):
    source = _vit((16, 16, 3), name)  # 4x4 patch grid, RGB
    path = os.fspath(tmp_path / "source.weights.h5")
    source.save_weights(path)
    target = create_model(name, (32, 32, 1), weights=path, **TINY[name])  # 8x8 grid, 1 channel
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    assert np.isfinite(np.asarray(target(x))).all()

    kernel_src, kernel_dst = _get(source, "patch_embedding/kernel"), _get(target, "patch_embedding/kernel")
    np.testing.assert_allclose(kernel_dst, kernel_src.sum(axis=2, keepdims=True), rtol=1e-6)
    prefix = source.num_prefix_tokens
    pos_src = next(np.asarray(w) for w in source.weights if prefix + 16 in w.shape)
    pos_dst = next(np.asarray(w) for w in target.weights if prefix + 64 in w.shape)
    pos_src, pos_dst = pos_src.reshape(-1, pos_src.shape[-1]), pos_dst.reshape(-1, pos_dst.shape[-1])
    assert pos_dst.shape[0] == prefix + 64 and pos_src.shape[0] == prefix + 16
    np.testing.assert_array_equal(pos_dst[:prefix], pos_src[:prefix])  # class (and distillation) tokens kept
    grid_src = pos_src[prefix:].reshape(4, 4, -1)
    grid_dst = pos_dst[prefix:].reshape(8, 8, -1)
    np.testing.assert_allclose(grid_dst.mean(axis=(0, 1)), grid_src.mean(axis=(0, 1)), atol=0.05)
    # every other weight is copied as it is
    same = [(a, b) for a, b in zip(source.weights, target.weights) if a.shape == b.shape]
    assert len(same) == len(source.weights) - 2  # all but the patch kernel and the position table
    for a, b in same:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_keras_hub_preset_directory_loads(tmp_path):
    source = _vit((16, 16, 1))
    source.get_layer("vit").save_to_preset(os.fspath(tmp_path / "preset"))
    target = create_model("vit_tiny", (24, 24, 3), weights=os.fspath(tmp_path / "preset"), **TINY["vit_tiny"])
    kernel = _get(target, "patch_embedding/kernel")
    np.testing.assert_allclose(kernel, np.repeat(_get(source, "patch_embedding/kernel"), 3, axis=2) / 3, rtol=1e-6)
    assert np.isfinite(np.asarray(target(np.ones((1, 24, 24, 3), "float32")))).all()


def test_channel_rule_keeps_the_response_to_a_grey_image():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 5)).astype("float32")
    grey = np.random.default_rng(2).normal(size=(3, 3)).astype("float32")
    rgb_response = np.einsum("hwco,hw->o", kernel, grey)
    np.testing.assert_allclose(np.einsum("hwco,hw->o", adapt_channels(kernel, 1), grey), rgb_response, rtol=1e-5)
    np.testing.assert_allclose(np.einsum("hwco,hw->o", adapt_channels(kernel, 6), grey), rgb_response, rtol=1e-5)


def test_weights_for_another_architecture_or_missing_are_one_line_errors(tmp_path):
    cnn = create_model("cnn_small", (16, 16, 1), **TINY["cnn_small"])
    path = os.fspath(tmp_path / "cnn.weights.h5")
    cnn.save_weights(path)
    with pytest.raises(LensnetError, match="another architecture"):
        create_model("vit_tiny", (16, 16, 1), weights=path, **TINY["vit_tiny"])
    wide = create_model("vit_tiny", (16, 16, 1), **{**TINY["vit_tiny"], "mlp_dim": 64})
    wide.save_weights(os.fspath(tmp_path / "wide.weights.h5"))
    with pytest.raises(LensnetError, match="another architecture"):
        create_model("vit_tiny", (16, 16, 1), weights=os.fspath(tmp_path / "wide.weights.h5"), **TINY["vit_tiny"])
    with pytest.raises(LensnetError, match="not a keras-hub preset"):
        create_model("vit_tiny", (16, 16, 1), weights=os.fspath(tmp_path), **TINY["vit_tiny"])


@pytest.mark.slow
def test_fit_with_model_weights(capsys, synthetic_dataset, tmp_path):
    from lensnet.fit import main as fit_main

    source = _vit((32, 32, 3))
    path = os.fspath(tmp_path / "pretrained.weights.h5")
    source.save_weights(path)
    args = [f"--set=model.args.{k}={json.dumps(v)}" for k, v in TINY["vit_tiny"].items()]
    common = ["--task", "substructure", "--model", "vit_tiny", "--data", str(synthetic_dataset), "--epochs", "1",
              "--runs", os.fspath(tmp_path / "runs"), "--no-progress", *args]
    code = run_cli(fit_main, [*common, "--run-name", "ok", "--set", f"model.weights={path}"])
    _, err = capsys.readouterr()
    assert code == 0, err
    code = run_cli(fit_main, [*common, "--run-name", "bad", "--set", f"model.weights={tmp_path / 'nope.weights.h5'}"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "bad").exists()
