"""Self-supervised pretraining (issues 10, 25): SimCLR, BYOL, DINO and MAE through `lensnet.fit --task
pretrain`, bit-identical resume (BYOL's and DINO's cosine EMA schedules included), MAE's masked-patch
loss, DINO's loss, centre and teacher temperature, lens views, and fine-tuning / linear probing from a
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
# a fixed schedule horizon: the 1-epoch run that is resumed to 2 follows the 2-epoch run's EMA schedule
SCHEDULE = ["--set", "task.schedule_epochs=2"]
TINY_DINO = [*TINY_CNN, *SCHEDULE, "--set", "task.prototypes=16", "--set", "task.local_crops=1",
             "--set", "task.teacher_temperature=0.07"]
METHODS = {"simclr": TINY_CNN, "byol": [*TINY_CNN, *SCHEDULE], "dino": TINY_DINO, "mae": TINY_VIT}
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
    m = float(model.momentum(1))
    assert model.ema < m < 1
    model.update_target(m)
    for (t, o), old in zip(pairs, before):
        np.testing.assert_allclose(np.asarray(t), m * old + (1 - m) * np.asarray(o), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ema_follows_the_cosine_schedule(runs: Path) -> None:
    """BYOL's tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2: 0.996 at step 0, 1 at the end, read from the
    optimizer's step counter in the training step."""
    import keras
    import tensorflow as tf

    from lensnet.tasks.ssl_models import cosine_momentum

    assert float(cosine_momentum(0.996, 0, 100)) == pytest.approx(0.996)
    assert float(cosine_momentum(0.996, 50, 100)) == pytest.approx(0.998)
    assert float(cosine_momentum(0.996, 100, 100)) == pytest.approx(1.0)
    assert float(cosine_momentum(0.996, 500, 100)) == pytest.approx(1.0)
    assert float(cosine_momentum(0.996, 70, 0)) == pytest.approx(0.996)  # constant schedule
    values = [float(cosine_momentum(0.9, k, 10)) for k in range(11)]
    assert values == sorted(values)

    model = load(runs / "byol" / "checkpoints" / "last.keras")
    assert model.ema == 0.996 and model.total_steps == 4  # 2 epochs of 2 steps (task.schedule_epochs=2)
    model.compile(optimizer=keras.optimizers.Adam(0.0))  # lr 0: only the EMA moves the target
    images = tf.random.stateless_normal([4, 16, 16, 1], [1, 1])
    y = {"view1": images, "view2": images[::-1]}
    for step, moves in ((model.total_steps, False), (0, True)):
        model.optimizer.iterations.assign(step)
        before = [np.asarray(t).copy() for t, _ in model.pairs()]
        model.compute_step(images, y, None, training=True)
        # kernels only: the target's forward pass in training mode also moves its BatchNorm statistics
        changed = any(not np.allclose(np.asarray(t), b) for (t, _), b in zip(model.pairs(), before)
                      if len(t.shape) > 1)
        assert changed == moves, step  # at the horizon the momentum is 1: the target stays where it is


@pytest.mark.slow
def test_dino_loss_centre_and_teacher_temperature(runs: Path) -> None:
    import tensorflow as tf

    model = load(runs / "dino" / "checkpoints" / "last.keras")
    centre = model.centre.get_layer("centre").centre
    assert np.abs(np.asarray(centre)).sum() > 0  # training moved the centre (an EMA of the teacher's logits)
    assert float(model.teacher_temperature_at(0)) == pytest.approx(0.04)
    assert float(model.teacher_temperature_at(model.teacher_warmup_steps)) == pytest.approx(0.07)
    assert 0 < model.teacher_warmup_steps < model.total_steps

    # the loss: the teacher's centred, sharpened softmax of global crop i against the student's other crops
    rng = np.random.default_rng(0)
    s0, s1, s2 = (rng.normal(size=(3, 16)).astype("float32") for _ in range(3))
    teacher = rng.normal(size=(6, 16)).astype("float32")
    loss, probs = model.dino_loss([tf.constant(s0), tf.constant(s1), tf.constant(s2)], tf.constant(teacher), 0)

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    t = softmax((teacher - np.asarray(centre)) / 0.04)
    np.testing.assert_allclose(probs.numpy(), t, rtol=1e-4, atol=1e-6)
    ce = [-(t[i * 3:(i + 1) * 3] * np.log(softmax(s / model.student_temperature))).sum(1)
          for i, s in ((0, s1), (0, s2), (1, s0), (1, s2))]  # never (teacher 0, student 0) nor (1, 1)
    np.testing.assert_allclose(loss.numpy(), np.mean(ce, axis=0), rtol=1e-4)

    # weight-normalised prototypes: scaling the kernel changes nothing, and unit inputs give cosines
    layer = model.network.get_layer("student_encoder").get_layer("dino_prototypes")
    x = tf.math.l2_normalize(tf.constant(rng.normal(size=(5, layer.kernel.shape[0])), tf.float32), axis=1)
    before = layer(x).numpy()
    assert np.abs(before).max() <= 1 + 1e-5
    layer.kernel.assign(layer.kernel * 7.0)
    np.testing.assert_allclose(layer(x).numpy(), before, rtol=1e-5, atol=1e-6)


def test_dino_views_are_two_global_and_local_crops(synthetic_info) -> None:
    import tensorflow as tf

    from lensnet.tasks.base import BatchContext
    from lensnet.tasks.pretrain import Pretrain, PretrainConfig

    task = Pretrain(PretrainConfig(method="dino", local_crops=3))
    task.setup(synthetic_info)
    images = tf.random.stateless_normal([4, 16, 16, 1], [2, 2])
    context = BatchContext(seed=0, epoch=0, step=0, training=True)
    x, y, _ = task.prepare({"image": images}, context)
    assert tuple(y["local"].shape) == (4, 3, 16, 16, 1) and tuple(y["view1"].shape) == (4, 16, 16, 1)
    again = task.prepare({"image": images}, context)[1]
    np.testing.assert_array_equal(again["local"].numpy(), y["local"].numpy())  # seeded
    # a local crop is a zoom into a small part: its pixels vary less between neighbours than a global view's
    local_rough = np.abs(np.diff(y["local"].numpy(), axis=2)).mean()
    global_rough = np.abs(np.diff(y["view1"].numpy(), axis=2)).mean()
    assert local_rough < 0.8 * global_rough


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
def test_init_from_a_run_of_the_same_task_keeps_its_head(synthetic_dataset: Path, synthetic_info,
                                                         tmp_path: Path) -> None:
    """Fine-tuning a trained classifier on new data starts from all of it, head included; a run of
    another task (a pretraining run) gives only its backbone."""
    from lensnet.tasks.base import task_from_config
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.model import build_task_model, load_init_weights

    assert run_cli(fit_main, supervised_argv(synthetic_dataset, tmp_path, "first")) == 0
    trained = load(tmp_path / "first" / "checkpoints" / "best.keras").get_weights()
    config = resolve_fit_config("substructure", None, {"model": {"name": "cnn_small", "args": {"filters": [8, 16]},
                                                                 "init": str(tmp_path / "first")}})
    model = build_task_model(task_from_config(config, synthetic_info), config, synthetic_info)
    assert len(model.get_weights()) == len(trained) > len(backbone_weights(model))
    for a, b in zip(model.get_weights(), trained):
        np.testing.assert_array_equal(a, b)
    plain = resolve_fit_config("substructure", None, {"model": {"name": "cnn_small", "args": {"filters": [8, 16]}}})
    fresh = build_task_model(task_from_config(plain, synthetic_info), plain, synthetic_info)
    elsewhere = {**plain, "task": {**plain["task"], "name": "regression"}}  # the same network, another task
    assert load_init_weights(fresh, tmp_path / "first", elsewhere) == "backbone"
    source = backbone_weights(load(tmp_path / "first" / "checkpoints" / "best.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(backbone_weights(fresh), source))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), trained))


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
@pytest.mark.parametrize("method", ["byol", "dino"])
def test_ema_methods_train_on_two_workers(synthetic_dataset: Path, tmp_path: Path, method: str) -> None:
    """The EMA lives in compute_step, so the multi-worker custom loop applies it too. With ema 0 and two
    steps, the target ends as the online network after step 1: one Adam step (lr x sign of the gradient,
    the same on one device and on two workers) away from its starting copy, which it would still be
    without the EMA."""
    import re
    import sys

    from workers import workers

    constant = ["--set", "task.ema=0.0", "--set", "task.ema_schedule=constant"]
    one = [*pretrain_argv(synthetic_dataset, tmp_path, "one", method, 1), *constant]
    assert run_cli(fit_main, one) == 0
    argv = [sys.executable, "-m", "lensnet.fit", *pretrain_argv(synthetic_dataset, tmp_path, "mw", method, 1),
            "--strategy", "multiworker", "--set", "run.verbose=2", *constant]
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


def test_view_defaults_follow_the_dataset_preset(synthetic_info, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view left at null takes the measured default of the dataset's preset (its manifest name); a set one wins."""
    import lensnet.data.views as views
    from lensnet.tasks.pretrain import Pretrain, PretrainConfig

    monkeypatch.setitem(views.PRESET_VIEWS, synthetic_info.name, {"view_crop": 0.5, "view_shift": 0})
    task = Pretrain(PretrainConfig())
    task.setup(synthetic_info)
    assert task.views.crop == 0.5 and task.views.shift == 0 and task.views.flux == views.GENERIC_VIEWS["view_flux"]
    assert task.state()["views"]["crop"] == 0.5  # run.json records the views used
    task = Pretrain(PretrainConfig(view_crop=0.9))
    task.setup(synthetic_info)
    assert task.views.crop == 0.9 and task.views.shift == 0
    monkeypatch.delitem(views.PRESET_VIEWS, synthetic_info.name)
    task = Pretrain(PretrainConfig())
    task.setup(synthetic_info)
    assert task.views.crop == views.GENERIC_VIEWS["view_crop"] and task.views.shift == views.GENERIC_VIEWS["view_shift"]
