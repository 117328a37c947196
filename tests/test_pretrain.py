"""Self-supervised pretraining (issue 10): SimCLR, BYOL and MAE through `lensnet.fit --task pretrain`,
bit-identical resume, MAE's masked-patch loss, lens views, and fine-tuning / linear probing from a
pretraining run (`--init`, `--freeze backbone`) with its one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import run_cli
from lensnet.fit import main as fit_main

TINY_CNN = ["--model", "cnn_small", "--set", "model.args.filters=[8,16]", "--set", "task.projection_dim=16",
            "--set", "task.projection_hidden=32"]
TINY_VIT = ["--model", "vit_tiny", "--set", "model.args.patch_size=4", "--set", "model.args.num_layers=1",
            "--set", "model.args.hidden_dim=16", "--set", "model.args.num_heads=2", "--set", "model.args.mlp_dim=32",
            "--set", "task.decoder_dim=16", "--set", "task.decoder_depth=1", "--set", "task.decoder_heads=2"]
METHODS = {"simclr": TINY_CNN, "byol": TINY_CNN, "mae": TINY_VIT}
COMMON = ["--batch-size", "16", "--seed", "0", "--no-progress", "--set", "run.verbose=0",
          "--set", "train.precise_bn_batches=2", "--set", "train.schedule=constant"]


def pretrain_argv(data: Path, runs: Path, name: str, method: str, epochs: int) -> list[str]:
    return ["--task", "pretrain", "--set", f"task.method={method}", *METHODS[method], *COMMON, "--data", str(data),
            "--runs", str(runs), "--run-name", name, "--epochs", str(epochs)]


def load(path: Path):
    import keras

    import lensnet.models  # noqa: F401
    import lensnet.tasks  # noqa: F401

    return keras.models.load_model(path, compile=False, safe_mode=True)


@pytest.fixture(scope="module")
def runs(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per method: two straight epochs, and one epoch then --resume to two."""
    runs = tmp_path_factory.mktemp("pretrain_runs")
    for method in METHODS:
        assert run_cli(fit_main, pretrain_argv(synthetic_dataset, runs, method, method, 2)) == 0, method
        assert run_cli(fit_main, pretrain_argv(synthetic_dataset, runs, f"{method}_r", method, 1)) == 0, method
        assert run_cli(fit_main, ["--resume", str(runs / f"{method}_r"), "--epochs", "2", "--no-progress"]) == 0
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_and_resumes_bit_identically(runs: Path, method: str) -> None:
    run = runs / method
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["task"] == "pretrain"
    seen = info["task_state"]["seen"]
    assert seen["split"] == "train" and seen["count"] == 32 and len(seen["ids_sha256"]) == 64
    assert info["output"]["kind"] == "values" and info["output"]["columns"][0] == "emb_0"
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 16 and metrics["embedding_std"] > 0
    assert (run / "plots" / "embedding_pca.png").is_file()
    if method == "mae":
        assert (run / "plots" / "mae_reconstructions.png").is_file()
        assert any((run / "logs" / "reconstructions").iterdir())

    straight, resumed = (load(r / "checkpoints" / "last.keras") for r in (run, runs / f"{method}_r"))
    assert len(straight.weights) == len(resumed.weights)
    for a, b in zip(straight.weights, resumed.weights):  # BYOL's EMA target included
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    best = load(run / "checkpoints" / "best.keras")  # the plain embedding network
    assert len(best.outputs) == 1 and best.output.shape[-1] == len(info["output"]["columns"])


@pytest.mark.slow
def test_byol_target_follows_the_online_network_by_ema(runs: Path) -> None:
    model = load(runs / "byol" / "checkpoints" / "last.keras")
    pairs = model.pairs()
    assert any(not np.array_equal(np.asarray(t), np.asarray(o)) for t, o in pairs)  # the target lags
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(t) in trainable for t, _ in pairs)  # the optimizer never touches the target
    before = [np.asarray(t).copy() for t, _ in pairs]
    model.update_target()
    for (t, o), old in zip(pairs, before):
        np.testing.assert_allclose(np.asarray(t), model.ema * old + (1 - model.ema) * np.asarray(o), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.slow
def test_byol_target_normalises_with_batch_statistics(runs: Path) -> None:
    """BYOL's target network normalises with the batch's statistics, as the online one; a non-trainable
    Keras BatchNormalization would silently use its moving averages (the collapse this guards against)."""
    import keras
    import tensorflow as tf

    model = load(runs / "byol" / "checkpoints" / "last.keras")
    norms = [layer for layer in model.target._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.trainable for layer in norms)
    images = 5.0 + 3.0 * tf.random.stateless_normal([8, *model.target.input_shape[1:]], [5, 6])
    batch = model.target(images, training=True)["projection"]
    moving = model.target(images, training=False)["projection"]
    assert not np.allclose(np.asarray(batch), np.asarray(moving), atol=1e-3)

    # precise BatchNorm recalibrates what the model's call runs (the online network), never the target
    from lensnet.training.precise_bn import recalibrate_batch_norm

    before = [np.asarray(v).copy() for v in model.target.weights]
    assert recalibrate_batch_norm(model, [images], 1) == 1
    for v, old in zip(model.target.weights, before):
        np.testing.assert_array_equal(np.asarray(v), old)


@pytest.mark.slow
def test_mae_loss_counts_masked_patches_only(runs: Path) -> None:
    import tensorflow as tf

    from lensnet.tasks.ssl_models import masked_patch_loss

    model = load(runs / "mae" / "checkpoints" / "last.keras")
    images = tf.random.stateless_normal([4, 16, 16, 1], [1, 2])
    noise = tf.random.stateless_uniform([4, 16], [3, 4])
    per_patch, mask = model.per_patch_error(images, noise)
    mask = mask.numpy()
    assert mask.sum(axis=1).tolist() == [16 - model.num_visible] * 4 and model.num_visible == 4  # 75% masked
    loss, _ = model.compute_step(images, {"noise": noise}, tf.ones([4]), training=False)
    expected = np.mean([per_patch.numpy()[i][mask[i] == 1].mean() for i in range(4)])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    unmasked = float(tf.reduce_mean(masked_patch_loss(per_patch, tf.ones_like(per_patch))))
    assert unmasked != pytest.approx(float(loss), rel=1e-4)  # counting every patch changes the loss
    # the visible patches never enter the loss: changing their error leaves it as it was
    bumped = per_patch + 10.0 * (1.0 - mask)
    assert float(tf.reduce_mean(masked_patch_loss(bumped, mask))) == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.slow
def test_mae_encoder_sees_the_visible_tokens_only(runs: Path) -> None:
    import tensorflow as tf

    model = load(runs / "mae" / "checkpoints" / "last.keras")
    images = tf.random.stateless_normal([2, 16, 16, 1], [5, 6])
    keep, _, _ = model.split(tf.random.stateless_uniform([2, 16], [7, 8]))
    encoded = model.encoder.encode(images, keep)
    assert tuple(encoded.shape) == (2, 1 + model.num_visible, 16)  # class token + the kept patches
    # with every patch kept, it is the registry backbone itself
    everything = tf.tile(tf.range(16)[None], [2, 1])
    full = model.network.get_layer(model.backbone_name)(images)
    np.testing.assert_allclose(model.encoder.encode(images, everything).numpy(), full.numpy(), atol=1e-5)


@pytest.mark.slow
def test_swin_pretrains_the_simmim_way(synthetic_dataset: Path, tmp_path: Path) -> None:
    swin = ["--model", "swin_tiny", "--set", "model.args.patch_size=2", "--set", "model.args.window_size=2",
            "--set", "model.args.depths=[1,1]", "--set", "model.args.num_heads=[1,1]", "--set",
            "model.args.embed_dim=8"]
    argv = ["--task", "pretrain", "--set", "task.method=mae", *swin, *COMMON, "--data", str(synthetic_dataset),
            "--runs", str(tmp_path), "--run-name", "swin", "--epochs", "1"]
    assert run_cli(fit_main, argv) == 0
    model = load(tmp_path / "swin" / "checkpoints" / "last.keras")
    assert type(model).__name__ == "MaskedMapModel" and model.grid == (4, 4) and model.num_visible == 4
    assert (tmp_path / "swin" / "plots" / "mae_reconstructions.png").is_file()


def test_lens_views_are_seeded_and_keep_channels() -> None:
    import tensorflow as tf

    from lensnet.data.views import ViewOptions, lens_views

    options = ViewOptions(symmetry="d4", shift=2, blur=1.0, flux=1.25, noise=0.1)
    for channels in (1, 3):
        images = tf.random.stateless_normal([5, 16, 16, channels], [0, channels])
        a, b = lens_views(images, [1, 2], options), lens_views(images, [1, 2], options)
        c = lens_views(images, [1, 3], options)
        assert a.shape == images.shape
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert not np.allclose(a.numpy(), c.numpy())
    # without blur, noise, flux and shift a view is an exact grid symmetry: the pixel values are kept
    plain = ViewOptions(symmetry="d4", shift=0, blur=0.0, flux=1.0, noise=0.0)
    images = tf.random.stateless_normal([3, 8, 8, 3], [9, 9])
    out = lens_views(images, [4, 4], plain).numpy()
    for x, y in zip(images.numpy(), out):
        np.testing.assert_array_equal(np.sort(x.ravel()), np.sort(y.ravel()))
        np.testing.assert_array_equal(np.sort(x[..., 0].ravel()), np.sort(y[..., 0].ravel()))  # bands not mixed


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (["--set", "task.mask_ratio=1.0", *TINY_VIT], "task.mask_ratio must be in (0, 1)"),
    (["--set", "task.mask_ratio=0", *TINY_VIT], "task.mask_ratio must be in (0, 1)"),
    (["--set", "task.mask_ratio=0.99", *TINY_VIT], "leaves 0 of 16 patches visible"),
    (["--model", "cnn_small"], "MAE needs a model of the vit, deit or swin family"),
    (["--set", "task.method=swav", *TINY_VIT], "task.method must be one of"),
])
def test_bad_pretrain_options_are_one_line(capsys, synthetic_dataset: Path, tmp_path: Path, extra, message) -> None:
    argv = ["--task", "pretrain", "--set", "task.method=mae", *COMMON, "--data", str(synthetic_dataset),
            "--runs", str(tmp_path), "--run-name", "bad", "--epochs", "1", *extra]
    code = run_cli(fit_main, argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "bad").exists()


def backbone_weights(model) -> list[np.ndarray]:
    from lensnet.models.backbone import find_backbone

    return [np.asarray(w).copy() for w in find_backbone(model).weights]


def supervised_argv(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["--task", "substructure", "--model", "cnn_small", "--set", "model.args.filters=[8,16]", *COMMON,
            "--data", str(data), "--runs", str(runs), "--run-name", name, "--epochs", "1", *extra]


@pytest.mark.slow
def test_fine_tune_starts_from_the_pretrained_weights(runs: Path, synthetic_info) -> None:
    from lensnet.tasks.base import task_from_config
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.model import build_task_model

    pretrained = backbone_weights(load(runs / "byol" / "checkpoints" / "best.keras"))
    for init in (str(runs / "byol"), None):
        config = resolve_fit_config("substructure", None, {"model": {"name": "cnn_small", "args": {"filters": [8, 16]},
                                                                     "init": init}})
        model = build_task_model(task_from_config(config, synthetic_info), config, synthetic_info)
        same = [np.array_equal(a, b) for a, b in zip(backbone_weights(model), pretrained)]
        assert all(same) if init else not all(same)


@pytest.mark.slow
def test_linear_probe_leaves_the_backbone_unchanged(runs: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    argv = supervised_argv(synthetic_dataset, tmp_path, "probe", "--init", str(runs / "simclr"), "--freeze",
                           "backbone")
    assert run_cli(fit_main, argv) == 0
    config = (tmp_path / "probe" / "config.yaml").read_text()
    assert f"init: {runs / 'simclr'}" in config and "freeze: backbone" in config
    pretrained = backbone_weights(load(runs / "simclr" / "checkpoints" / "best.keras"))
    probe = load(tmp_path / "probe" / "checkpoints" / "last.keras")
    for a, b in zip(backbone_weights(probe), pretrained):  # BatchNorm statistics included
        np.testing.assert_array_equal(a, b)
    head = probe.network.get_layer("class_probabilities").get_weights()[0]
    assert np.abs(head).sum() > 0
    # a resumed probe restores its own checkpoint, never the init run (which may be gone)
    moved = tmp_path / "moved"
    shutil.copytree(runs / "simclr", moved)
    text = (tmp_path / "probe" / "config.yaml").read_text().replace(str(runs / "simclr"), str(moved))
    (tmp_path / "probe" / "config.yaml").write_text(text)
    shutil.rmtree(moved)
    assert run_cli(fit_main, ["--resume", str(tmp_path / "probe"), "--epochs", "2", "--no-progress"]) == 0
    for a, b in zip(backbone_weights(load(tmp_path / "probe" / "checkpoints" / "last.keras")), pretrained):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_init_from_another_architecture_is_one_line(capsys, runs: Path, synthetic_dataset: Path,
                                                    tmp_path: Path) -> None:
    code = run_cli(fit_main, supervised_argv(synthetic_dataset, tmp_path, "bad", "--init", str(runs / "mae")))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "vit_tiny" in err and "cnn_small" in err
    assert not (tmp_path / "bad").exists()
    code = run_cli(fit_main, supervised_argv(synthetic_dataset, tmp_path, "bad", "--init", str(tmp_path / "nope")))
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_embedding_exports_and_predicts(runs: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    from lensnet.export import main as export_main
    from lensnet.predict import main as predict_main

    export = tmp_path / "export"
    assert run_cli(export_main, ["--run", str(runs / "simclr"), "--out", str(export)]) == 0
    out = tmp_path / "emb.csv"
    assert run_cli(predict_main, ["--model", str(export), str(synthetic_dataset), "--split", "test", "--out",
                                  str(out), "--no-progress"]) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and {"emb_0", "emb_15"} <= set(rows[0])


@pytest.mark.slow
def test_byol_trains_on_two_workers_with_its_ema(synthetic_dataset: Path, tmp_path: Path) -> None:
    """The EMA lives in compute_step, so the multi-worker custom loop applies it too. With ema 0 and two
    steps, the target ends as the online network after step 1: one Adam step (lr x sign of the gradient,
    the same on one device and on two workers) away from its starting copy, which it would still be
    without the EMA."""
    import re
    import sys

    from workers import workers

    one = [*pretrain_argv(synthetic_dataset, tmp_path, "one", "byol", 1), "--set", "task.ema=0.0"]
    assert run_cli(fit_main, one) == 0
    argv = [sys.executable, "-m", "lensnet.fit", *pretrain_argv(synthetic_dataset, tmp_path, "mw", "byol", 1),
            "--strategy", "multiworker", "--set", "run.verbose=2", "--set", "task.ema=0.0"]
    results = workers(argv, tmp_path / "logs")
    for code, out in results:
        assert code == 0, out[-3000:]
    digest = re.compile(r"weights sha256 (\w+), optimizer sha256 (\w+)")
    found = [digest.search(out) for _, out in results]
    assert all(found) and found[0].groups() == found[1].groups()  # both workers end bit-identical
    mw, ref = (load(tmp_path / name / "checkpoints" / "last.keras") for name in ("mw", "one"))
    lr = 1e-3
    for (t_mw, _), (t_ref, _) in zip(mw.pairs(), ref.pairs()):
        if len(t_mw.shape) > 1:  # kernels (BatchNorm statistics differ with the replicas' batch size)
            gap = np.abs(np.asarray(t_mw) - np.asarray(t_ref))
            assert np.median(gap) < 0.5 * lr, t_mw.path


def test_init_without_model_takes_the_init_runs_model(tmp_path: Path) -> None:
    from lensnet.core.config import dump_yaml
    from lensnet.training.config import resolve_fit_config

    init = tmp_path / "pretrained"
    init.mkdir()
    (init / "config.yaml").write_text(dump_yaml({"model": {"name": "vit_tiny", "args": {"patch_size": 4}}}))
    config = resolve_fit_config("substructure", None, {"model": {"init": str(init)}})
    assert config["model"]["name"] == "vit_tiny" and config["model"]["args"] == {"patch_size": 4}
    config = resolve_fit_config("substructure", None, {"model": {"init": str(init), "name": "cnn_small"}})
    assert config["model"]["name"] == "cnn_small"  # an explicit --model wins (and must then match)
