"""The C4/D4 group-equivariant family: logits invariant under the group's rotations (and flips) of the
input, also after training moved the batch-norm statistics; the group layers round-trip; bad group,
kernel or image size is one `error:` line with exit status 2."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from lensnet.core.errors import LensnetError, run_cli
from lensnet.models import create_model, pool_features
from lensnet.models.equivariant import GROUPS, GroupConv2D


def _transforms(group: str):
    """The group's action on images (batch, h, w, c): 4 rotations, then (D4) the same after a mirror."""
    for flip in ((False, True) if group == "D4" else (False,)):
        for k in range(4):
            yield (k, flip), lambda x, k=k, flip=flip: np.ascontiguousarray(
                np.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2)))


def _classifier(name: str, size: int = 16) -> keras.Model:
    backbone = create_model(name, (size, size, 1), filters=[4, 8])
    inputs = keras.Input((size, size, 1))
    return keras.Model(inputs, keras.layers.Dense(3)(pool_features(backbone, backbone(inputs))))


@pytest.mark.parametrize("name, group", [("p4cnn_small", "C4"), ("d4cnn_small", "D4")])
def test_logits_are_invariant_under_the_group_also_after_training(name, group):
    keras.utils.set_random_seed(0)
    net = _classifier(name)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 1)).astype("float32")
    # a few steps move BN statistics, scales and filters away from their symmetric initial values
    net.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(True))
    net.fit(x, rng.integers(0, 3, 8), epochs=3, verbose=0)
    reference = net.predict(x, verbose=0)
    assert np.abs(reference).max() > 1e-2  # not trivially constant
    for element, transform in _transforms(group):
        np.testing.assert_allclose(net.predict(transform(x), verbose=0), reference, atol=1e-4, err_msg=str(element))


def test_c4_is_not_invariant_to_flips_and_a_plain_cnn_is_not_invariant_to_rotations():
    """The invariance test can fail: the symmetries a network does not have show up."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 1)).astype("float32")
    p4 = _classifier("p4cnn_small")
    assert np.abs(p4.predict(x[:, :, ::-1].copy(), verbose=0) - p4.predict(x, verbose=0)).max() > 1e-3
    cnn = _classifier("cnn_small")
    assert np.abs(cnn.predict(np.rot90(x, 1, axes=(1, 2)).copy(), verbose=0) - cnn.predict(x, verbose=0)).max() > 1e-3


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_conv_is_equivariant_layer_by_layer(group):
    """Rotating the input rotates the lifted map and permutes its group axis: the defining property."""
    keras.utils.set_random_seed(0)
    lift = GroupConv2D(2, 3, group, lift=True)
    conv = GroupConv2D(3, 3, group)
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 1)).astype("float32")
    order = len(GROUPS[group])

    def invariant(y):  # max over the group axis, then the map is only rotated
        y = np.asarray(y).reshape(*y.shape[:3], order, -1)
        return y.max(axis=3)

    out = conv(lift(x))
    rotated = conv(lift(np.rot90(x, 1, axes=(1, 2)).copy()))
    np.testing.assert_allclose(invariant(rotated), np.rot90(invariant(out), 1, axes=(1, 2)), atol=1e-5)


def test_group_layers_round_trip(tmp_path: Path):
    keras.utils.set_random_seed(0)
    net = _classifier("d4cnn_small")
    path = tmp_path / "m.keras"
    net.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), net.predict(x, verbose=0), atol=1e-6)
    layer = next(lay for lay in create_model("p4cnn_small", (16, 16, 1), filters=[4]).layers
                 if isinstance(lay, GroupConv2D))
    assert GroupConv2D.from_config(layer.get_config()).get_config() == layer.get_config()


def test_unsupported_group_names_the_supported_ones():
    with pytest.raises(LensnetError, match=r"group 'C8' is not supported.*C4 \(order 4\), D4 \(order 8\)"):
        create_model("p4cnn_small", (32, 32, 1), group="C8")


@pytest.mark.parametrize("argv, message", [
    (["--model", "p4cnn_small", "--set", "model.args.group=C8"], "group 'C8' is not supported"),
    (["--model", "d4cnn_small", "--set", "model.args.filters=[4,8,16,32,64]"], "divisible by 16"),
    (["--model", "vit_tiny", "--set", "model.args.patch_size=6"], "patch_size 6x6 does not divide"),
    (["--model", "cct_2", "--set", "model.args.tokenizer_layers=3"], "divisible by 8"),
])
def test_bad_model_options_are_one_line_exit_2(capsys, tmp_path: Path, argv, message):
    from lensnet.data.synthetic import write_synthetic
    from lensnet.fit import main as fit_main

    data = tmp_path / "data"
    write_synthetic(data, 32, image_shape=(20, 20, 1), num_classes=3, seed=1, records_per_shard=32)
    code = run_cli(fit_main, ["--task", "substructure", "--data", str(data), "--runs", str(tmp_path / "runs"),
                              "--run-name", "bad", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs" / "bad").exists()
