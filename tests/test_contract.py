"""The task contract, proven by a task the trainer has never heard of (tests/contract_task.py).

`contract_two_loss` has its own model class and training step (cross-entropy + an auxiliary
brightness loss). It trains through `lensnet.fit` on one device and on two local worker processes
(MultiWorkerMirroredStrategy, the custom loop), then `python -m lensnet.export` and
`python -m lensnet.predict` serve it, with no change to the trainer, export or predict.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from contract_task import TwoLossModel  # registers the task and its model class
from workers import REPO, workers

from lensnet.core.errors import run_cli
from lensnet.fit import main as fit_main

FIT = ["--task", "contract_two_loss", "--model", "cnn_small", "--set", "model.args.filters=[8,16]",
       "--epochs", "2", "--batch-size", "32", "--seed", "0", "--set", "train.schedule=constant",
       # no weight decay: with aux_weight 0 the brightness head then keeps its initial weights exactly
       "--set", "train.weight_decay=0", "--no-progress", "--set", "run.verbose=2"]
DIGEST = re.compile(r"weights sha256 (\w+), optimizer sha256 (\w+)")
LOSS_RTOL = 0.005  # as tests/test_distributed.py: one device vs two workers differ in sum order and BN only
PLUGIN_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("contract") / "rings3"
    write_synthetic(path, 192, image_shape=(16, 16, 1), num_classes=3, seed=0, records_per_shard=32)
    return path


@pytest.fixture(scope="module")
def runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two one-device runs in this process: the default aux_weight, and aux_weight 0."""
    runs = tmp_path_factory.mktemp("contract_runs")
    for name, extra in (("one", []), ("noaux", ["--set", "task.aux_weight=0"])):
        code = run_cli(fit_main, [*FIT, "--data", str(dataset), "--runs", str(runs), "--run-name", name, *extra])
        assert code == 0, name
    return runs


def history(run: Path) -> list[dict]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def load(path: Path):
    import keras

    import lensnet.models  # noqa: F401  (registers the backbone layers)
    import lensnet.tasks  # noqa: F401

    return keras.models.load_model(path, compile=False, safe_mode=True)


@pytest.mark.slow
def test_fit_runs_the_task_models_own_step(runs: Path) -> None:
    run = runs / "one"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["task"] == "contract_two_loss"
    assert info["task_state"] == {"class_names": ["class0", "class1", "class2"]}
    assert info["output"]["kind"] == "probabilities"
    rows = history(run)
    assert len(rows) == 2 and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n"] == 48 and metrics["accuracy"] is not None

    # last.keras is the whole task model (resume); best.keras the plain inference function
    last, best = load(run / "checkpoints" / "last.keras"), load(run / "checkpoints" / "best.keras")
    assert isinstance(last, TwoLossModel) and last.aux_weight == 0.5
    assert not isinstance(best, TwoLossModel) and len(best.outputs) == 1 and best.output.shape[-1] == 3
    assert "brightness" not in [layer.name for layer in best.layers]

    # the auxiliary loss reached the weights: without it the brightness head keeps its initial values
    noaux = load(runs / "noaux" / "checkpoints" / "last.keras")
    kernel = [m.network.get_layer("brightness").get_weights()[0] for m in (last, noaux)]
    assert not np.array_equal(kernel[0], kernel[1])
    shared = [m.network.get_layer("probabilities").get_weights()[0] for m in (last, noaux)]
    assert not np.array_equal(shared[0], shared[1])  # the shared features moved differently too


@pytest.mark.slow
def test_multiworker_fit_runs_the_same_step(dataset: Path, runs: Path, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "contract_task", *FIT, "--data", str(dataset), "--runs", str(tmp_path),
            "--run-name", "mw", "--strategy", "multiworker"]
    results = workers(argv, tmp_path / "logs", env=PLUGIN_ENV)
    for code, out in results:
        assert code == 0, out[-3000:]
    (_, chief), (_, other) = results
    assert "2 replica(s) (multiworker)" in chief
    digests = [DIGEST.search(out) for out in (chief, other)]
    assert all(digests) and digests[0].groups() == digests[1].groups()  # bit for bit on both workers
    # the same objective as on one device (the custom loop holds no loss of its own)
    for row, ref in zip(history(tmp_path / "mw"), history(runs / "one")):
        for key in ("loss", "val_loss"):
            assert float(row[key]) == pytest.approx(float(ref[key]), rel=LOSS_RTOL), key


@pytest.mark.slow
def test_export_and_predict_need_no_task_code(dataset: Path, runs: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CONFIG")}
    env.update({"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})  # contract_task is NOT importable here
    export = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "lensnet.export", "--run", str(runs / "one"), "--out", str(export)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "predictions.csv"
    done = subprocess.run([sys.executable, "-m", "lensnet.predict", "--model", str(export), str(dataset),
                           "--split", "test", "--out", str(out), "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48
    assert {"p_class0", "p_class1", "p_class2"} <= set(rows[0])
    total = [sum(float(r[f"p_class{c}"]) for c in range(3)) for r in rows]
    assert np.allclose(total, 1.0, atol=1e-4)


@pytest.mark.slow
def test_unknown_task_option_is_one_line(capsys, dataset: Path, tmp_path: Path) -> None:
    code = run_cli(fit_main, [*FIT, "--data", str(dataset), "--runs", str(tmp_path), "--set", "task.aux=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "task.aux" in err and "aux_weight" in err


@pytest.mark.slow
def test_resume_replays_the_tasks_own_randomness(dataset: Path, runs: Path, tmp_path: Path) -> None:
    """`prepare` keys its noise on the BatchContext: one epoch + --resume ends where two straight epochs did."""
    argv = [*FIT, "--data", str(dataset), "--runs", str(tmp_path), "--run-name", "r"]
    argv[argv.index("--epochs") + 1] = "1"
    assert run_cli(fit_main, argv) == 0
    assert run_cli(fit_main, ["--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress"]) == 0
    resumed, straight = load(tmp_path / "r" / "checkpoints" / "last.keras"), load(runs / "one" / "checkpoints" /
                                                                                   "last.keras")
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
