"""lensnet.fit / lensnet.evaluate end to end on tiny synthetic data (16 px, tiny CNN)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import LensnetError, run_cli
from lensnet.fit import main as fit_main

TINY = ["--set", "model.args.filters=[8,16]", "--set", "train.warmup_epochs=0"]
REPO = Path(__file__).resolve().parents[1]


def fit(capsys, *argv: str) -> tuple[int, str, str]:
    code = run_cli(fit_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("fit") / "three"
    write_synthetic(path, 192, image_shape=(16, 16, 1), num_classes=3, seed=1, records_per_shard=32)
    return path


@pytest.mark.slow
def test_lens_finding_run_directory(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    code, out, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "2",
                         "--runs", str(tmp_path), "--run-name", "lf", "--set", "task.positive_class=class1", *TINY)
    assert code == 0, err
    run = tmp_path / "lf"
    for name in ("config.yaml", "versions.json", "run.json", "history.csv", "metrics.json",
                 "checkpoints/best.keras", "checkpoints/last.keras", "checkpoints/state.json",
                 "plots/roc.png", "plots/pr.png", "plots/confusion_matrix.png", "plots/learning_curves.png",
                 "plots/samples.png"):
        assert (run / name).is_file(), name
    for logs in ("train", "validation", "eval", "hparams"):
        assert any((run / "logs" / logs).iterdir()), logs
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("roc_auc", "pr_auc", "accuracy", "tpr_at_0_fp", "tpr_at_10_fp"):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["output"]["kind"] == "probabilities"
    assert info["output"]["positive_class"] == "class1" and info["epochs_done"] == 2
    versions = json.loads((run / "versions.json").read_text())
    assert "tensorflow" in versions and "keras" in versions
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "learning_rate" in history[0] and "val_roc_auc" in history[0]
    assert "metrics" in out and str(run) in out


@pytest.mark.slow
def test_output_to_a_file_shows_steps_within_each_epoch(capsys, three_class: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    """Keras prints one line per epoch when the output is not a terminal; a CPU epoch can take minutes,
    so timed step lines (here every step: interval 0) show that training is alive."""
    from lensnet.core import progress

    monkeypatch.setattr(progress, "DEFAULT_EVERY_SECONDS", 0.0)
    code, out, err = fit(capsys, "--task", "substructure", "--model", "cnn_small", "--data", str(three_class),
                         "--epochs", "2", "--batch-size", "32", "--runs", str(tmp_path), "--run-name", "steps",
                         "--set", "run.verbose=auto", "--set", "train.precise_bn_batches=0", *TINY)
    assert code == 0, err
    lines = out.splitlines()
    for epoch in (1, 2):
        steps = [line for line in lines if line.startswith(f"epoch {epoch}/2: ")]
        assert len(steps) >= 2, out
        assert all(" step (" in line and ", loss " in line for line in steps), steps
        done = [line.split(": ")[1].split(" ")[0].split("/") for line in steps]
        assert [int(d) for d, _ in done] == list(range(1, len(done) + 1)), steps  # every step, in order
        assert done[-1][0] == done[-1][1], steps  # the last training step of the epoch
    assert not any(line.startswith("epoch 3/2") for line in lines)


@pytest.mark.slow
def test_substructure_learns_and_evaluate_on_other_dataset(capsys, three_class: Path, tmp_path: Path) -> None:
    code, _, err = fit(capsys, "--task", "substructure", "--model", "cnn_small", "--data", str(three_class),
                       "--epochs", "6", "--lr", "0.005", "--runs", str(tmp_path), "--run-name", "sub", *TINY)
    assert code == 0, err
    metrics = json.loads((tmp_path / "sub" / "metrics.json").read_text())
    assert metrics["macro_roc_auc"] > 0.8  # rings of three radii: learnable in a few epochs
    assert set(metrics["per_class_roc_auc"]) == {"class0", "class1", "class2"}
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n"]

    from lensnet.evaluate import main as evaluate_main

    code = run_cli(evaluate_main, ["--run", str(tmp_path / "sub"), "--data", str(three_class), "--split", "val"])
    out, err = capsys.readouterr()
    assert code == 0, err
    scored = json.loads((tmp_path / "sub" / "eval" / "synthetic-val" / "metrics.json").read_text())
    assert scored["split"] == "val" and scored["n"] == 48

    code = run_cli(evaluate_main, ["--run", str(tmp_path / "sub"), "--data", str(three_class), "--split", "val",
                                   "--tta", "d4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    averaged = json.loads((tmp_path / "sub" / "eval" / "synthetic-val-tta-d4" / "metrics.json").read_text())
    assert averaged["tta"] == "d4" and averaged["n"] == 48 and averaged["macro_roc_auc"] > 0.8


def test_tta_views_are_the_symmetry_group() -> None:
    import tensorflow as tf

    from lensnet.data.augment import d4_transforms, flips_transforms, group_views

    images = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    for method, reference in (("flips", flips_transforms), ("d4", d4_transforms)):
        views = [v.numpy() for v in group_views(tf.constant(images), method)]
        for k in range(2):
            expected = sorted(x.tobytes() for x in reference(images[k]))
            assert sorted(v[k].tobytes() for v in views) == expected


@pytest.mark.slow
def test_regression_masks_nan_targets(capsys, three_class: Path, tmp_path: Path) -> None:
    # `amplitude` is NaN for class0: those records must be masked, not zero-filled
    code, _, err = fit(capsys, "--task", "regression", "--target", "amplitude", "--model", "cnn_small",
                       "--data", str(three_class), "--epochs", "2", "--runs", str(tmp_path), "--run-name", "reg",
                       *TINY)
    assert code == 0, err
    metrics = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert metrics["n_masked"] == 16 and metrics["n"] == 32
    assert all(np.isfinite(metrics[k]) for k in ("mae", "rmse", "r2"))
    rows = (tmp_path / "reg" / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert np.isfinite(float(values["loss"])) and np.isfinite(float(values["val_mae"]))
    assert (tmp_path / "reg" / "plots" / "scatter.png").is_file()

    from lensnet.evaluate import main as evaluate_main

    capsys.readouterr()
    code = run_cli(evaluate_main, ["--run", str(tmp_path / "reg"), "--tta", "flips"])
    err = capsys.readouterr().err
    assert code == 2 and "--tta averages class probabilities" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "lens_finding", "--model", "no_such_net"], "unknown model 'no_such_net'"),
        (["--task", "no_such_task"], "unknown task 'no_such_task'"),
        (["--task", "regression", "--target", "no_such_param"], "unknown target 'no_such_param'"),
        (["--task", "lens_finding", "--set", "train.no_such_key=1"], "unknown config key 'train.no_such_key'"),
        (["--task", "lens_finding", "--model", "vit_tiny", "--set", "model.args.patch_size=5"], "patch"),
        (["--task", "lens_finding", "--set", "train.optimizer=adagrad"], "train.optimizer"),
        # each task has its own config section: another task's option is an unknown key
        (["--task", "substructure", "--set", "task.target=radius"], "unknown config key 'task.target'"),
        (["--task", "regression", "--target", "radius", "--set", "task.loss=l7"], "task.loss 'l7'"),
    ],
)
def test_bad_input_is_one_line_before_training(capsys, synthetic_dataset: Path, tmp_path: Path, argv, message) -> None:
    positive = ["--set", "task.positive_class=class1"] if "lens_finding" in argv else []
    code, out, err = fit(capsys, *argv, "--data", str(synthetic_dataset), "--runs", str(tmp_path),
                         "--run-name", "bad", *positive)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert message in err
    assert not (tmp_path / "bad").exists()  # nothing was trained or written


def test_missing_dataset_and_empty_split_and_all_nan_target(capsys, tmp_path: Path) -> None:
    from lensnet.data.synthetic import write_synthetic

    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "dataset directory not found" in err

    no_val = tmp_path / "no_val"
    write_synthetic(no_val, 32, splits={"train": 0.5, "test": 0.5})
    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(no_val), "--set", "task.positive_class=class1")
    assert code == 2 and "split 'val'" in err

    one_class = tmp_path / "one_class"  # amplitude is NaN for class0, the only class here
    write_synthetic(one_class, 32, num_classes=1)
    code, _, err = fit(capsys, "--task", "regression", "--target", "amplitude", "--data", str(one_class))
    assert code == 2 and "NaN in every record" in err


def test_list_models_and_tasks(capsys) -> None:
    code, out, _ = fit(capsys, "--list-models")
    assert code == 0
    for name in ("resnet18", "effnetv2_b0", "vit_tiny", "vit_small", "swin_tiny", "cnn_small"):
        assert name in out
    code, out, _ = fit(capsys, "--list-tasks")
    assert code == 0 and all(t in out for t in ("lens_finding", "substructure", "regression"))


@pytest.mark.slow
def test_class_weight_and_mixed_precision_train(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "1",
                       "--runs", str(tmp_path), "--run-name", "mp", "--set", "task.positive_class=class1",
                       "--set", "train.class_weight=balanced", "--set", "train.mixed_precision=true",
                       "--set", "train.optimizer=lamb", "--set", "train.clipnorm=1.0", *TINY)
    assert code == 0, err
    import keras

    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    keras.mixed_precision.set_global_policy("float32")
    metrics = json.loads((tmp_path / "mp" / "metrics.json").read_text())
    assert metrics["roc_auc"] is not None


def _fit_command(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lensnet.fit", "--task", "substructure", "--model", "cnn_small",
            "--data", str(data), "--epochs", "4", "--runs", str(runs), "--run-name", name, "--no-progress",
            "--set", "train.schedule=cosine", "--set", "train.warmup_epochs=1", *TINY, *extra]


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, three_class: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    straight = subprocess.run(_fit_command(three_class, tmp_path, "straight"), cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    # kill -9 as soon as the first epoch is checkpointed, wherever the run then is
    victim = subprocess.Popen(_fit_command(three_class, tmp_path, "killed"), cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if victim.poll() is None:
        victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert state.exists()

    resumed = subprocess.run([sys.executable, "-m", "lensnet.fit", "--resume", str(tmp_path / "killed"),
                              "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    import keras

    import lensnet.models  # noqa: F401
    import lensnet.tasks  # noqa: F401

    a = keras.models.load_model(tmp_path / "straight" / "checkpoints" / "last.keras", safe_mode=True)
    b = keras.models.load_model(tmp_path / "killed" / "checkpoints" / "last.keras", safe_mode=True)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert ma["macro_roc_auc"] == mb["macro_roc_auc"] and ma["confusion_matrix"] == mb["confusion_matrix"]
    history = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    assert len(history) == 5  # header + 4 epochs, none repeated


@pytest.mark.slow
def test_default_dataset_is_simulated_when_missing(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = fit(capsys, "--task", "lens_finding", "--epochs", "1", "--no-progress",
                         "--set", "data.default_num=40", "--set", "data.batch_size=16", *TINY)
    assert code == 0, err
    assert "simulating the default 'lens_finding' dataset" in out
    assert (tmp_path / "tfrecords" / "lens_finding" / "manifest.json").is_file()
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()


@pytest.mark.slow
def test_plateau_schedule_and_early_stopping_state_is_saved(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "6",
                       "--runs", str(tmp_path), "--run-name", "es", "--set", "task.positive_class=class1",
                       "--set", "train.schedule=plateau", "--set", "train.plateau.patience=1",
                       "--set", "train.early_stopping.patience=2", "--set", "train.optimizer=sgd",
                       "--set", "train.label_smoothing=0.1", "--lr", "1e-6", *TINY)
    assert code == 0, err
    state = json.loads((tmp_path / "es" / "checkpoints" / "state.json").read_text())
    assert set(state["callbacks"]) == {"ResumableEarlyStopping", "ResumableReduceLROnPlateau"}
    # with a learning rate this small nothing improves: the plateau halves it, early stopping ends the run
    assert state["epochs_done"] < 6
    assert state["learning_rate"] < 1e-6


@pytest.mark.slow
def test_corrupt_shard_is_named(capsys, synthetic_dataset: Path, copy_dataset, tmp_path: Path) -> None:
    data = copy_dataset(synthetic_dataset)
    shard = sorted(data.glob("train-*.tfrecord"))[1]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(data), "--epochs", "1",
                       "--runs", str(tmp_path), "--set", "task.positive_class=class1", *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert shard.name in err and "corrupt" in err


@pytest.mark.slow
def test_evaluate_refuses_a_dataset_the_model_cannot_take(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    from lensnet.data.synthetic import write_synthetic
    from lensnet.evaluate import main as evaluate_main

    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "1",
                       "--runs", str(tmp_path), "--run-name", "one", "--set", "task.positive_class=class1", *TINY)
    assert code == 0, err
    rgb = tmp_path / "rgb"
    write_synthetic(rgb, 32, image_shape=(16, 16, 3))
    code = run_cli(evaluate_main, ["--run", str(tmp_path / "one"), "--data", str(rgb)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "(16, 16, 3)" in err and "(16, 16, 1)" in err
    three = tmp_path / "three"
    write_synthetic(three, 48, num_classes=3)
    code = run_cli(evaluate_main, ["--run", str(tmp_path / "one"), "--data", str(three)])
    err = capsys.readouterr().err
    assert code == 2 and "needs exactly 2 classes" in err


@pytest.mark.slow
def test_evaluate_reads_only_the_split_it_scores(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    """A held-out set imported with only a test split (`lensnet.convert ... --splits test=1.0`) scores."""
    from lensnet.data.synthetic import write_synthetic
    from lensnet.evaluate import main as evaluate_main

    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "1",
                       "--runs", str(tmp_path), "--run-name", "one", "--set", "task.positive_class=class1", *TINY)
    assert code == 0, err
    held_out = tmp_path / "held_out"
    write_synthetic(held_out, 24, splits={"test": 1.0}, seed=5)
    code = run_cli(evaluate_main, ["--run", str(tmp_path / "one"), "--data", str(held_out), "--split", "test"])
    out, err = capsys.readouterr()
    assert code == 0, err
    scored = json.loads((tmp_path / "one" / "eval" / "synthetic-test" / "metrics.json").read_text())
    assert scored["n"] == 24 and scored["roc_auc"] is not None
    code = run_cli(evaluate_main, ["--run", str(tmp_path / "one"), "--data", str(held_out), "--split", "val"])
    err = capsys.readouterr().err
    assert code == 2 and "split 'val' is empty or missing" in err


@pytest.mark.slow
def test_evaluate_scores_an_ensemble_as_the_mean_of_its_members(capsys, synthetic_dataset: Path,
                                                                 tmp_path: Path) -> None:
    """--run A --run B scores the mean of A's and B's probabilities, each on its own normalisation."""
    import shutil

    from sklearn.metrics import roc_auc_score

    from lensnet.evaluate import main as evaluate_main
    from lensnet.training.evaluation import open_run_on, predict_split

    for name, seed, normalise in (("a", "0", "standard"), ("b", "1", "minmax")):
        code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "1",
                           "--seed", seed, "--runs", str(tmp_path), "--run-name", name, "--set",
                           f"data.normalise={normalise}", "--set", "task.positive_class=class1", *TINY)
        assert code == 0, err
    probabilities = []
    for name in ("a", "b"):
        run, task, info, model = open_run_on(tmp_path / name, None, "test")
        scored = predict_split(model, task, info, "test", run.normalisation, progress=False)
        probabilities.append(scored["y_pred"][:, 0])  # a lens finder returns P(positive class)
        saved = np.load(tmp_path / name / "predictions.npz", allow_pickle=False)  # fit's own test scores
        assert list(saved["ids"]) == scored["ids"] and np.array_equal(saved["y_true"], scored["y_true"])
        np.testing.assert_allclose(saved["y_pred"][:, 0], probabilities[-1], rtol=1e-6)
    y_true = scored["y_true"]
    assert roc_auc_score(y_true, probabilities[0]) != roc_auc_score(y_true, probabilities[1])

    code = run_cli(evaluate_main, ["--run", str(tmp_path / "a"), "--run", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert code == 0, err
    ensemble = json.loads((tmp_path / "a" / "eval" / "synthetic-test-ensemble2" / "metrics.json").read_text())
    assert ensemble["roc_auc"] == pytest.approx(roc_auc_score(y_true, np.mean(probabilities, axis=0)))
    assert [m["run"] for m in ensemble["ensemble"]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    saved = np.load(tmp_path / "a" / "eval" / "synthetic-test-ensemble2" / "predictions.npz", allow_pickle=False)
    np.testing.assert_allclose(saved["y_pred"][:, 0], np.mean(probabilities, axis=0), rtol=1e-6)

    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")  # the mean of one model's copies is that model
    code = run_cli(evaluate_main, ["--run", str(tmp_path / "a"), "--run", str(tmp_path / "a_copy"), "--out",
                                   str(tmp_path / "twice")])
    assert code == 0, capsys.readouterr().err
    alone = json.loads((tmp_path / "a" / "metrics.json").read_text())
    twice = json.loads((tmp_path / "twice" / "metrics.json").read_text())
    assert twice["roc_auc"] == pytest.approx(alone["roc_auc"]) and twice["n"] == alone["n"]

    code, _, err = fit(capsys, "--task", "substructure", "--model", "cnn_small", "--data", str(synthetic_dataset),
                       "--epochs", "1", "--runs", str(tmp_path), "--run-name", "sub", *TINY)
    assert code == 0, err
    for runs, message in (((tmp_path / "a", tmp_path / "sub"), "cannot join an ensemble"),
                          ((tmp_path / "a", tmp_path / "a"), "the same run is given twice")):
        code = run_cli(evaluate_main, [arg for run in runs for arg in ("--run", str(run))])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_preset_model_arguments_stay_with_the_preset_model() -> None:
    from lensnet.training.config import resolve_fit_config

    preset = resolve_fit_config("lens_finding")["model"]
    assert preset["name"] == "cnn_small" and preset["args"] == {"convs_per_stage": 1}
    other = resolve_fit_config("lens_finding", overrides={"model": {"name": "vit_tiny"}})["model"]
    assert other["args"] == {}  # cnn_small's arguments would be unknown options of vit_tiny
    tweaked = resolve_fit_config("lens_finding", overrides={"model": {"args": {"filters": [8]}}})["model"]
    assert tweaked["args"] == {"convs_per_stage": 1, "filters": [8]}


@pytest.mark.slow
@pytest.mark.parametrize("batches", [0, 2])
def test_checkpoints_hold_precise_batch_norm_statistics(capsys, synthetic_dataset: Path, tmp_path: Path,
                                                        batches: int) -> None:
    """With train.precise_bn_batches=N the saved model's BN statistics are the average batch statistics
    of the first N unaugmented training batches under its own weights (recalibrating it again changes
    nothing); with 0 they are Keras's lagging moving averages."""
    from lensnet.data import open_dataset
    from lensnet.tasks.base import task_from_config
    from lensnet.tasks.checkpoints import load_model
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.data import eval_batches
    from lensnet.training.precise_bn import batch_norm_layers, recalibrate_batch_norm

    code, _, err = fit(capsys, "--task", "lens_finding", "--data", str(synthetic_dataset), "--epochs", "1",
                       "--runs", str(tmp_path), "--run-name", "bn", "--set", "task.positive_class=class1",
                       "--set", f"train.precise_bn_batches={batches}", "--set", "data.batch_size=8", *TINY)
    assert code == 0, err
    model = load_model(tmp_path / "bn")
    saved = [np.array(v) for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
    assert saved
    config = resolve_fit_config("lens_finding", tmp_path / "bn" / "config.yaml")
    info = open_dataset(synthetic_dataset)
    recalibrate_batch_norm(model, eval_batches(info, task_from_config(config, info), config, "train"), 2)
    again = [np.array(v) for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
    close = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(saved, again))
    assert close == bool(batches)


@pytest.mark.slow
def test_auto_augmentation_follows_the_dataset_symmetry(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    """data.augment=auto (the substructure default) takes the manifest's symmetry: rot180 for a DeepLense
    replica (its fixed macro model is not invariant under quarter turns), d4 when none is recorded."""
    import yaml

    from lensnet.simulate.dataset import simulate_dataset

    replica = tmp_path / "replica"
    simulate_dataset("deeplense_model_ii", replica, num=30, seed=0, overrides={"image": {"size": 16}},
                     progress=False)
    for data, name, expected in ((replica, "rep", "rot180"), (synthetic_dataset, "syn", "d4")):
        code, _, err = fit(capsys, "--task", "substructure", "--model", "cnn_small", "--data", str(data),
                           "--epochs", "1", "--runs", str(tmp_path), "--run-name", name, "--set",
                           "data.batch_size=8", *TINY)
        assert code == 0, err
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert config["data"]["augment"] == expected


@pytest.mark.parametrize("targets, augment, refused", [
    (["e1"], "d4", "e1"), (["gamma2"], "flips", "gamma2"), (["center_x"], "rot180", "center_x"),
    (["source_e1"], "rot180", None),  # spin-2: a half turn maps ellipticity and shear onto themselves
    (["e1", "gamma1", "theta_E"], "rot180", None), (["e1"], None, None), (["theta_E"], "d4", None),
    (["theta_E"], "auto", None), (["e1"], "auto", "e1"),  # before fit resolves `auto` to the dataset's group
])
def test_targets_an_augmentation_would_change_are_refused(targets, augment, refused) -> None:
    from lensnet.tasks.regression import check_targets_survive

    if refused is None:
        check_targets_survive(targets, augment)
        return
    with pytest.raises(LensnetError, match=f"target '{refused}' changes under .* data.augment='{augment}'"):
        check_targets_survive(targets, augment)
