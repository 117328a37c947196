"""Distributed training end to end: MirroredStrategy on a CPU split into two logical devices, and
MultiWorkerMirroredStrategy with two local worker processes sharing one run directory (as on a
cluster with a shared filesystem).

Every run is a `python -m lensnet.fit` subprocess: logical devices and the cluster must be fixed
before TensorFlow starts, and each worker is a process of its own.

Tolerance of "the same metrics as one device": all runs see the same global batches and
augmentations (`lensnet.data.load` is keyed by seed and epoch) from the same initial weights.
They differ only in the order of floating-point sums and in BatchNormalization, which normalises
each replica's half batch with its own statistics (Keras does not synchronise them across
replicas). Measured on this tiny run: losses differ by at most 0.25%, test accuracy by one of
the 64 test images (0.016), test macro ROC AUC by 0.006; changing the seed instead moves them
by ~1%, 0.23 and 0.07. Hence 0.5% on losses and 0.03 (under two test images) on test metrics.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
from workers import launch, workers

FIT = [
    sys.executable, "-m", "lensnet.fit", "--task", "substructure", "--model", "cnn_small",
    "--set", "model.args.filters=[8,16]", "--epochs", "2", "--batch-size", "32", "--seed", "0",
    "--set", "train.schedule=constant",  # the resume test needs a schedule that does not depend on --epochs
    "--no-progress", "--set", "run.verbose=2",
]
LOSS_RTOL = 0.005
METRIC_ATOL = 0.03
CHANCE_AUC = 0.5
DIGEST = re.compile(r"weights sha256 (\w+), optimizer sha256 (\w+)")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    # 4 ring classes: two epochs learn them well above chance without saturating the test metrics
    path = tmp_path_factory.mktemp("distributed") / "rings4"
    write_synthetic(path, 256, image_shape=(16, 16, 1), num_classes=4, seed=0, records_per_shard=32)
    return path


def history(run: Path) -> list[dict]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def assert_same_training(run: Path, reference: Path) -> None:
    """`run` trained like `reference` (see the module docstring for the tolerances) and learned."""
    rows, ref_rows = history(run), history(reference)
    assert len(rows) == len(ref_rows) == 2
    for row, ref in zip(rows, ref_rows):
        for key in ("loss", "val_loss"):
            assert float(row[key]) == pytest.approx(float(ref[key]), rel=LOSS_RTOL), (key, row["epoch"])
    got, want = metrics(run), metrics(reference)
    for key in ("accuracy", "macro_roc_auc"):
        assert abs(got[key] - want[key]) <= METRIC_ATOL, (key, got[key], want[key])
    assert got["macro_roc_auc"] > CHANCE_AUC + 0.1 and want["macro_roc_auc"] > CHANCE_AUC + 0.1


def assert_complete_run(run: Path, epochs: int = 2) -> None:
    for name in ("config.yaml", "run.json", "metrics.json", "history.csv", "checkpoints/best.keras",
                 "checkpoints/last.keras", "checkpoints/state.json", "plots/roc.png"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_done"] == epochs
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epochs_done"] == epochs


@pytest.fixture(scope="module")
def one_and_two_devices(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run on one device and mirrored over two logical CPUs, side by side."""
    runs = tmp_path_factory.mktemp("mirrored")
    common = [*FIT, "--data", str(dataset), "--runs", str(runs)]
    (code1, out1), (code2, out2) = launch([
        ([*common, "--run-name", "one", "--strategy", "default"], {}),
        ([*common, "--run-name", "two", "--strategy", "mirrored", "--cpu-devices", "2"], {}),
    ], runs / "logs")
    assert code1 == 0, out1
    assert code2 == 0, out2
    assert "1 replica(s) (default)" in out1
    assert "2 replica(s) (mirrored)" in out2
    return runs / "one", runs / "two"


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(one_and_two_devices: tuple[Path, Path]) -> None:
    one, two = one_and_two_devices
    assert_complete_run(one)
    assert_complete_run(two)
    assert_same_training(two, one)


@pytest.fixture(scope="module")
def multiworker(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    runs = tmp_path_factory.mktemp("multiworker")
    results = workers([*FIT, "--data", str(dataset), "--runs", str(runs), "--run-name", "mw",
                       "--strategy", "multiworker"], runs / "logs")
    for code, out in results:
        assert code == 0, out
    return runs / "mw", [out for _, out in results]


@pytest.mark.slow
def test_multiworker_two_processes_end_with_identical_weights(
        multiworker: tuple[Path, list[str]], one_and_two_devices: tuple[Path, Path]) -> None:
    run, (chief, other) = multiworker
    assert "2 replica(s) (multiworker)" in chief
    digests = [DIGEST.search(out) for out in (chief, other)]
    assert all(digests), (chief, other)
    assert digests[0].groups() == digests[1].groups()  # model and optimizer state, bit for bit

    assert_complete_run(run)
    assert "test:" in chief and "test:" not in other  # only the chief scores and writes
    assert len(list((run / "logs" / "train").iterdir())) == 1  # one TensorBoard writer: the chief's
    assert_same_training(run, one_and_two_devices[0])

    import keras

    import lensnet.models  # noqa: F401  (registers the layers of the saved model)
    import lensnet.tasks  # noqa: F401
    from lensnet.training.custom_loop import weights_digest

    saved = keras.models.load_model(run / "checkpoints" / "last.keras", compile=False, safe_mode=True)
    assert weights_digest(saved.weights) == digests[0].group(1)  # the checkpoint is what the workers hold


@pytest.mark.slow
def test_multiworker_resume_equals_uninterrupted_run(dataset: Path, tmp_path: Path,
                                                     multiworker: tuple[Path, list[str]]) -> None:
    """One epoch, then --resume to two: both workers end exactly where the uninterrupted run did."""
    base = [*FIT, "--data", str(dataset), "--runs", str(tmp_path), "--run-name", "r"]
    base[base.index("--epochs") + 1] = "1"
    for code, out in workers([*base, "--strategy", "multiworker"], tmp_path / "logs1"):
        assert code == 0, out
    run = tmp_path / "r"
    resumed = workers([sys.executable, "-m", "lensnet.fit", "--resume", str(run), "--epochs", "2", "--no-progress"],
                      tmp_path / "logs2")
    for code, out in resumed:
        assert code == 0, out
        assert "epochs 2-2" in out
    assert_complete_run(run)
    assert len(history(run)) == 2
    uninterrupted = DIGEST.search(multiworker[1][0]).groups()
    for _, out in resumed:
        assert DIGEST.search(out).groups() == uninterrupted
