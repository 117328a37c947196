"""Iterative erasing (train.erasing): the most salient patches are erased with the background level,
saliency is rollout for ViT/DeiT and Grad-CAM otherwise, masks are reproducible and survive a resume,
and bad options are one-line errors before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY

from lensnet.core.errors import run_cli
from lensnet.fit import main as fit_main
from lensnet.training.erasing import Eraser, Saliency, erase, patch_mask


def fit(capsys, *argv: str) -> tuple[int, str, str]:
    code = run_cli(fit_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def network(name: str, **args: object) -> keras.Model:
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(0)
    backbone = create_model(name, (16, 16, 1), **{**TINY[name], **args})
    inputs = keras.Input((16, 16, 1), name="images")
    head = keras.layers.Dense(3, activation="softmax", name="head")
    return keras.Model(inputs, head(pool_features(backbone, backbone(inputs))))


def test_the_most_salient_cells_are_erased_with_the_background_level():
    saliency = np.zeros((2, 4, 4), "float32")
    saliency[0, 1, 2] = 5.0
    saliency[0, 3, 3] = 4.0
    saliency[1, 0, 0] = 1.0
    saliency[1, 2, 1] = 2.0
    mask = np.asarray(patch_mask(saliency, 0.125))  # 2 of 16 cells
    assert mask.sum(axis=(1, 2)).tolist() == [2.0, 2.0]
    assert mask[0, 1, 2] == mask[0, 3, 3] == mask[1, 0, 0] == mask[1, 2, 1] == 1.0
    images = np.random.default_rng(0).normal(3.0, 1.0, (2, 16, 16, 1)).astype("float32")
    images[:, 0, :] = images[:, -1, :] = images[:, :, 0] = images[:, :, -1] = 1.5  # the frame: the sky
    out = np.asarray(erase(images, mask))
    np.testing.assert_allclose(out[0, 4:8, 8:12], 1.5)  # cell (1, 2) of a 4x4 grid on 16 px
    np.testing.assert_array_equal(out[0, :4, :4], images[0, :4, :4])  # untouched elsewhere
    assert np.asarray(patch_mask(saliency, 0.0)).sum() == 0


@pytest.mark.parametrize("name, args, kind", [
    ("vit_tiny", {}, "rollout"), ("deit_tiny", {}, "rollout"), ("cnn_small", {}, "gradcam"),
    ("cvt_tiny", {"use_class_token": False}, "gradcam"),
    # pooled by its class token, CvT's patch tokens get no gradient: Grad-CAM would be all zero
    ("cvt_tiny", {}, "input_gradient")])
def test_saliency_is_rollout_for_vit_and_gradcam_otherwise(name, args, kind):
    saliency = Saliency(network(name, **args))
    assert saliency.kind() == kind
    images = tf.random.stateless_normal((3, 16, 16, 1), seed=[1, 2])
    maps = np.asarray(saliency(images))
    assert maps.shape == (3, *saliency.grid) and np.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.max(axis=(1, 2)) > 0).all()  # it singles out some patch of every image


def test_masks_follow_the_seed_the_step_and_the_snapshot():
    net = network("vit_tiny")
    images = tf.random.stateless_normal((4, 16, 16, 1), seed=[3, 4])
    random = Eraser(net, "random", every=1, fraction=0.25, seed=7, steps_per_epoch=2)
    a, b = np.asarray(random.masks(images, tf.constant(5))), np.asarray(random.masks(images, tf.constant(5)))
    np.testing.assert_array_equal(a, b)
    assert a.sum(axis=(1, 2)).tolist() == [4.0] * 4  # a quarter of the 4x4 patches
    assert not np.array_equal(a, np.asarray(random.masks(images, tf.constant(6))))
    assert np.array_equal(np.asarray(random(images, tf.constant(1))), np.asarray(images))  # epoch 0: untouched

    attention = Eraser(net, "attention", every=1, fraction=0.25, seed=7, steps_per_epoch=2)
    before = np.asarray(attention.masks(images, tf.constant(2)))
    net.get_layer("head").set_weights([w * 0 for w in net.get_layer("head").get_weights()])
    for w in net.trainable_weights:
        w.assign(w * 1.7)
    np.testing.assert_array_equal(before, np.asarray(attention.masks(images, tf.constant(2))))  # frozen snapshot
    attention.refresh()  # the next window's snapshot follows the network
    assert np.asarray(attention.masks(images, tf.constant(2))).sum() == before.sum()


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("erase") / "three"
    write_synthetic(path, 96, image_shape=(16, 16, 1), num_classes=3, seed=1, records_per_shard=32)
    return path


COMMON = ["--task", "substructure", "--model", "cnn_small", "--set", "model.args.filters=[4,8]",
          "--set", "train.schedule=constant", "--set", "train.warmup_epochs=0", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["attention", "random"])
def test_resumed_run_erases_the_same_patches(capsys, three_class, tmp_path, mode):
    erasing = ["--set", f"train.erasing.mode={mode}", "--set", "train.erasing.every=2",
               "--set", "train.erasing.fraction=0.25"]
    code, _, err = fit(capsys, *COMMON, *erasing, "--data", str(three_class), "--epochs", "4",
                       "--runs", str(tmp_path), "--run-name", "straight")
    assert code == 0, err
    # stopped after epoch 3 (inside the window that began at epoch 3), then resumed to 4
    code, _, err = fit(capsys, *COMMON, *erasing, "--data", str(three_class), "--epochs", "3",
                       "--runs", str(tmp_path), "--run-name", "stopped")
    assert code == 0, err
    if mode == "attention":
        assert (tmp_path / "stopped" / "checkpoints" / "erasing_snapshot.weights.h5").is_file()
    code, _, err = fit(capsys, "--resume", str(tmp_path / "stopped"), "--epochs", "4", "--no-progress")
    assert code == 0, err

    import lensnet.models  # noqa: F401
    import lensnet.tasks  # noqa: F401

    a = keras.models.load_model(tmp_path / "straight" / "checkpoints" / "last.keras", safe_mode=True)
    b = keras.models.load_model(tmp_path / "stopped" / "checkpoints" / "last.keras", safe_mode=True)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    plain = tmp_path / "plain"
    code, _, err = fit(capsys, *COMMON, "--data", str(three_class), "--epochs", "4", "--runs", str(tmp_path),
                       "--run-name", "plain")
    assert code == 0, err
    c = keras.models.load_model(plain / "checkpoints" / "last.keras", safe_mode=True)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights()))  # it did erase
    assert json.loads((tmp_path / "straight" / "run.json").read_text())["epochs_done"] == 4


@pytest.mark.slow
def test_bench_erasing_gives_each_auc_its_interval_and_each_mode_its_difference_from_none(
        capsys, three_class, tmp_path, monkeypatch):
    from lensnet.bench.__main__ import main as bench_main

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    code = run_cli(bench_main, ["erasing", "--data", str(three_class), "--model", "cnn_small", "--epochs", "2",
                                "--every", "1", "--batch-size", "32", "--bootstrap", "100", "--seed", "0",
                                "--set", "model.args.filters=[4,8]", "--set", "train.precise_bn_batches=0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (result,) = (tmp_path / "results").glob("erasing-*.json")
    rows = {r["mode"]: r for r in json.loads(result.read_text())["rows"]}
    assert list(rows) == ["none", "random", "attention"]
    assert all(1 <= row["best_epoch"] <= 2 for row in rows.values())  # which checkpoint the figures are of
    for mode, row in rows.items():
        for key in ("macro_auc", "macro_auc_masked10"):
            assert row[f"{key}_lo"] <= row[key] <= row[f"{key}_hi"], row
            if mode == "none":
                assert f"{key}_minus_none" not in row
            else:
                assert row[f"{key}_minus_none"] == pytest.approx(row[key] - rows["none"][key], abs=1e-3)
                assert row[f"{key}_diff_lo"] <= row[f"{key}_minus_none"] <= row[f"{key}_diff_hi"], row


@pytest.mark.parametrize("setting, message", [
    ("train.erasing.fraction=1.0", "train.erasing.fraction must be in [0, 1)"),
    ("train.erasing.fraction=-0.1", "train.erasing.fraction must be in [0, 1)"),
    ("train.erasing.mode=gradcam", "train.erasing.mode must be one of"),
    ("train.erasing.every=0", "train.erasing.every must be a positive integer"),
])
def test_bad_erasing_options_are_one_line_errors(capsys, three_class, tmp_path, setting, message):
    code, _, err = fit(capsys, *COMMON, "--set", setting, "--data", str(three_class), "--runs", str(tmp_path),
                       "--run-name", "bad")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "bad").exists()
