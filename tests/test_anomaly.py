"""Anomaly task: the reader trains on one class only, the VAE's KL term is in its loss, a run goes
through fit, export, predict and serve with the anomaly score, and bad input is one error line."""

from __future__ import annotations

import csv
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import LensnetError, run_cli
from lensnet.fit import main as fit_main

SHAPE = (16, 16, 1)
FIT = ["--task", "anomaly", "--epochs", "1",
       "--batch-size", "16", "--seed", "0", "--no-progress", "--set", "run.verbose=2",
       "--set", "train.precise_bn_batches=2"]
CNN = ["--model", "cnn_small", "--set", "model.args.filters=[8,16]"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("anomaly") / "rings3"
    write_synthetic(path, 144, image_shape=SHAPE, num_classes=3, seed=0, records_per_shard=16)
    return path


def fit(dataset: Path, runs: Path, name: str, *extra: str) -> int:
    model = [] if "--model" in extra else CNN
    return run_cli(fit_main, [*FIT, *model, "--data", str(dataset), "--runs", str(runs), "--run-name", name,
                              "--set", "task.normal_class=class0", *extra])


def test_reader_keeps_only_the_requested_classes(dataset: Path) -> None:
    from lensnet.data import load, open_dataset
    from lensnet.data.pipeline import split_count

    info = open_dataset(dataset)
    per_class = info.manifest["splits"]["train"]["per_class"]
    assert split_count(info, "train", ["class1"]) == per_class["class1"] < info.counts["train"]
    for cache in (False, True):
        batches = load(info, "train", batch_size=8, fields=("label", "class_name"), classes=["class1"], seed=3,
                       cache=cache, shuffle_buffer=16)
        labels = np.concatenate([b["label"].numpy() for b in batches])
        assert labels.size == per_class["class1"] and set(labels.tolist()) == {1}
    with pytest.raises(LensnetError, match="no class 'lens'.*class0, class1, class2"):
        load(info, "train", classes=["lens"])


def test_training_stream_never_yields_another_class(dataset: Path) -> None:
    """Several epochs of the task's own prepared training stream: every record is the normal class."""
    from lensnet.data import open_dataset
    from lensnet.tasks.base import task_from_config
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.data import batches_per_epoch, train_batches, train_records

    info = open_dataset(dataset)
    config = resolve_fit_config("anomaly", overrides={"task": {"normal_class": "class2"},
                                                      "data": {"batch_size": 8, "path": str(dataset),
                                                               "augment": "d4"}})
    task = task_from_config(config, info)
    n = info.manifest["splits"]["train"]["per_class"]["class2"]
    assert task.train_classes() == ["class2"] and train_records(info, task, config) == n
    steps = batches_per_epoch(info, "train", 8, task.train_classes())
    seen = 0
    for x, y, _ in train_batches(info, task, config, 0, cache=False).take(3 * steps):
        assert not np.any(y["anomaly"].numpy())  # anomaly = 1 for any class but the normal one
        seen += len(x)
    assert seen == 3 * n  # three full epochs of exactly the normal records


def test_vae_kl_weight_changes_the_loss(dataset: Path) -> None:
    from lensnet.data import load, open_dataset
    from lensnet.models import create_model
    from lensnet.tasks.anomaly import Anomaly, AnomalyModel
    from lensnet.tasks.base import BatchContext

    info = open_dataset(dataset)
    task = Anomaly.from_config({"model": "vae", "normal_class": "class0", "latent_dim": 4})
    task.setup(info)
    model = task.build(lambda shape: create_model("cnn_small", shape, filters=[8, 16]), info,
                       {"model": {"name": "cnn_small"}})
    batch = next(iter(load(info, "train", batch_size=8, fields=task.fields, shuffle=False)))
    x, y, w = task.prepare(batch, BatchContext(seed=0, epoch=0, step=0, training=True))
    losses = {}
    for beta in (0.0, 1.0, 4.0):
        same = AnomalyModel(model.network, kind="vae", beta=beta, sigma=0.1)  # the same weights
        losses[beta] = float(same.compute_step(x, y, w, training=True)[0])
    assert losses[0.0] < losses[1.0] < losses[4.0]  # the KL term (> 0) is in the loss, scaled by beta
    kl = losses[1.0] - losses[0.0]
    # float32 sums of thousands: compare to the loss's own rounding, not to the small difference
    assert losses[4.0] - losses[0.0] == pytest.approx(4 * kl, abs=1e-5 * losses[4.0])


@pytest.mark.parametrize("extra", [
    ["--set", "task.model=vae", "--set", "task.score=elbo", "--set", "task.beta=0.5"],
    ["--set", "task.model=transformer", "--model", "vit_tiny", "--set", "model.args.num_layers=1",
     "--set", "model.args.hidden_dim=16", "--set", "model.args.num_heads=2", "--set", "model.args.mlp_dim=16",
     "--set", "model.args.patch_size=4"],
], ids=["vae_elbo", "transformer"])
@pytest.mark.slow
def test_other_models_fit_score_and_export(dataset: Path, tmp_path: Path, extra: list[str]) -> None:
    assert fit(dataset, tmp_path, "run", *extra) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"class1", "class2"}
    assert metrics["roc_auc"] is not None and 0.0 <= metrics["roc_auc"] <= 1.0
    # SavedModel and ONNX agree with Keras (a negative ELBO is in the thousands: relative tolerance)
    from lensnet.export import main as export_main

    assert run_cli(export_main, ["--run", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0


@pytest.mark.slow
def test_fit_export_predict_serve_the_score(dataset: Path, tmp_path: Path) -> None:
    from lensnet.export import main as export_main
    from lensnet.predict import main as predict_main
    from lensnet.serving.server import ModelServer, serve_in_thread

    assert fit(dataset, tmp_path / "runs", "ae") == 0
    run = tmp_path / "runs" / "ae"
    info = json.loads((run / "run.json").read_text())
    assert info["output"]["kind"] == "score" and info["task_state"] == {"normal_class": "class0"}
    with open(run / "history.csv") as handle:
        row = next(csv.DictReader(handle))
    assert {"loss", "val_loss", "val_roc_auc", "val_pr_auc", "val_normal_loss"} <= set(row)
    metrics = json.loads((run / "metrics.json").read_text())
    n_test = json.loads((dataset / "manifest.json").read_text())["splits"]["test"]["count"]
    assert metrics["n"] == n_test and metrics["normal_class"] == "class0"
    assert set(metrics["per_class"]) == {"class1", "class2"}
    for figure in ("roc", "pr", "score_histogram", "reconstructions"):
        assert (run / "plots" / f"{figure}.png").is_file(), figure

    assert run_cli(export_main, ["--run", str(run), "--out", str(tmp_path / "export")]) == 0
    out = tmp_path / "scores.csv"
    assert run_cli(predict_main, ["--model", str(tmp_path / "export"), str(dataset), "--split", "test",
                                  "--out", str(out), "--no-progress"]) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n_test and "score" in rows[0]
    scores = np.array([float(r["score"]) for r in rows])
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)

    batch = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype("float32")
    with serve_in_thread(ModelServer(tmp_path / "export"), poll_seconds=0) as base:
        request = urllib.request.Request(f"{base}/v1/models/export:predict", method="POST",
                                         data=json.dumps({"instances": batch.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    predictions = np.array(body["predictions"])
    assert predictions.shape == (2, 1) and np.all(predictions >= 0)


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("anomaly") / "odd"
    write_synthetic(path, 24, image_shape=(18, 18, 1), num_classes=2, seed=0, records_per_shard=8)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "fragments"), [
    (["--set", "task.normal_class=no_sub"], ["no_sub", "class0, class1, class2"]),
    (["--set", "model.args.filters=[8,16,32]", "--set", "task.normal_class=class0"], ["18x18", "4x4"]),
    (["--set", "task.score=elbo"], ["task.score=elbo", "vae"]),
], ids=["normal_class_missing", "size_not_divisible", "elbo_without_vae"])
def test_bad_input_is_one_line_and_writes_nothing(capsys, dataset: Path, odd_dataset: Path, tmp_path: Path,
                                                  extra: list[str], fragments: list[str]) -> None:
    runs = tmp_path / "runs"
    data = odd_dataset if "18x18" in fragments else dataset
    code = run_cli(fit_main, [*FIT, *CNN, "--data", str(data), "--runs", str(runs), "--run-name", "bad", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err
    assert not runs.exists() or not any(runs.iterdir())


def test_score_export_tolerance_is_relative_to_the_largest_score() -> None:
    from lensnet.artifacts.outputs import OutputSpec

    spec = OutputSpec("score", "anomaly_score", columns=("anomaly_score",))
    assert spec.handler.tolerance(spec, np.array([[5000.0], [-20.0]]), 1e-4) == pytest.approx(0.5)
    assert spec.handler.tolerance(spec, np.array([[0.01]]), 1e-4) == pytest.approx(1e-4)
