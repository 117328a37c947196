"""lensnet.tune on tiny synthetic data: each tuner, resume after kill -9, chief + workers, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lensnet.core.errors import run_cli
from lensnet.tune import main as tune_main

REPO = Path(__file__).resolve().parents[1]
TINY_CNN = ["--model", "cnn_small", "--set", "model.args.filters=[8,16]", "--set", "train.warmup_epochs=0"]
SPACE = """
train.learning_rate: {log_uniform: [1.0e-3, 1.0e-2]}
model.args.filters: {choice: [[8, 16], [16, 32]]}
data.augment: {choice: [d4, null]}
"""


def tune(capsys, *argv: str) -> tuple[int, str, str]:
    code = run_cli(tune_main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(directory: Path) -> list[dict]:
    with open(directory / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def hparams_events(log_dir: Path) -> tuple[list[str], dict[str, dict]]:
    """(hyper-parameter names of the experiment, {trial: hparams}) as TensorBoard's HParams plugin reads them."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    experiment, sessions = [], {}
    for path in log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("experiment"):
                    experiment = [h.name for h in data.experiment.hparam_infos]
                if data.HasField("session_start_info"):
                    sessions[path.parent.name] = dict(data.session_start_info.hparams)
    return experiment, sessions


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("tune") / "three"
    write_synthetic(path, 96, image_shape=(16, 16, 1), num_classes=3, seed=1, records_per_shard=32)
    return path


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.mark.slow
def test_random_search_summary_best_hparams_resume_and_retrain(capsys, three_class: Path, space: Path,
                                                               tmp_path: Path) -> None:
    directory = tmp_path / "tuning" / "random"
    argv = ["--task", "substructure", "--data", three_class, "--tuner", "random", "--max-trials", "3",
            "--epochs", "1", "--space", space, "--directory", directory, "--seed", "3", *TINY_CNN]
    code, out, err = tune(capsys, *argv)
    assert code == 0, err
    assert "objective val_macro_roc_auc (max)" in out
    for trial in ("0", "1", "2"):
        assert f"trial {trial} start: learning_rate=" in out and f"trial {trial} COMPLETED" in out
    table = rows(directory)
    assert [r["trial_id"] for r in table] == ["0", "1", "2"]
    assert all(r["status"] == "COMPLETED" and r["epochs"] == "1" and float(r["seconds"]) > 0 for r in table)
    assert {"train.learning_rate", "model.args.filters", "data.augment", "val_macro_roc_auc"} <= set(table[0])
    assert all(1e-3 <= float(r["train.learning_rate"]) <= 1e-2 for r in table)
    for r in table:
        run = directory / "trials" / r["trial_id"]
        assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.keras").is_file()
        config = json.loads((run / "run.json").read_text())
        assert config["status"] == "finished" and config["seed"] == 3

    # best.yaml is the best trial's resolved config, taken as is by lensnet.fit --config
    from lensnet.core.config import load_yaml
    from lensnet.training.config import resolve_fit_config

    best = max(table, key=lambda r: float(r["val_macro_roc_auc"]))
    trial_config = load_yaml(directory / "trials" / best["trial_id"] / "config.yaml")
    resolved = resolve_fit_config(None, directory / "best.yaml", {})
    assert resolved["run"]["name"] is None and resolved["run"]["dir"] == "runs"
    for section in ("task", "data", "model", "train"):
        assert resolved[section] == trial_config[section], section
    assert f"best: trial {best['trial_id']}" in out

    experiment, sessions = hparams_events(directory / "logs")
    assert set(experiment) == {"train.learning_rate", "model.args.filters", "data.augment"}
    assert set(sessions) == {"0", "1", "2"}

    # the same command again: nothing is retrained; --retrain-best trains best.yaml as a normal run
    stamp = (directory / "trials" / "0" / "metrics.json").stat().st_mtime_ns
    code, out, err = tune(capsys, *argv, "--retrain-best", "--runs", tmp_path / "runs", "--run-name", "best")
    assert code == 0, err
    assert "resuming: 3 trial(s) completed" in out and " start: " not in out
    assert (directory / "trials" / "0" / "metrics.json").stat().st_mtime_ns == stamp
    retrained = load_yaml(tmp_path / "runs" / "best" / "config.yaml")
    assert retrained["model"] == trial_config["model"] and retrained["train"] == trial_config["train"]
    assert (tmp_path / "runs" / "best" / "metrics.json").is_file()

    # the directory holds this search: another one is refused before anything runs
    code, _, err = tune(capsys, *[a if a != "random" else "bayesian" for a in argv])
    assert code == 2 and "holds another search (tuner differs" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bayesian_regression_minimises_val_mae(capsys, synthetic_dataset: Path, space: Path, tmp_path: Path) -> None:
    directory = tmp_path / "bayes"
    code, out, err = tune(capsys, "--task", "regression", "--target", "amplitude", "--data", synthetic_dataset,
                          "--tuner", "bayesian", "--initial-points", "1", "--max-trials", "3", "--epochs", "1",
                          "--space", space, "--directory", directory, *TINY_CNN)
    assert code == 0, err
    assert "objective val_mae (min)" in out
    table = rows(directory)
    assert [r["status"] for r in table] == ["COMPLETED"] * 3  # trials 1 and 2 come from the Gaussian process
    best = json.loads((directory / "keras_tuner" / "oracle.json").read_text())
    assert best["end_order"] == ["0", "1", "2"]
    scores = {r["trial_id"]: float(r["val_mae"]) for r in table}
    assert f"best: trial {min(scores, key=scores.get)}," in out


@pytest.mark.slow
def test_hyperband_warm_starts_from_an_earlier_trial(capsys, synthetic_dataset: Path, space: Path,
                                                     tmp_path: Path) -> None:
    # max_epochs 3, factor 3: three 1-epoch trials, then the best continues to epoch 3
    directory = tmp_path / "hb"
    code, out, err = tune(capsys, "--task", "lens_finding", "--set", "task.positive_class=class1",
                          "--data", synthetic_dataset, "--tuner", "hyperband", "--max-epochs", "3",
                          "--max-trials", "4", "--objective", "val_loss", "--space", space,
                          "--directory", directory, *TINY_CNN)
    assert code == 0, err
    assert "objective val_loss (min)" in out
    table = rows(directory)
    assert [r["status"] for r in table] == ["COMPLETED"] * 4
    assert [r["epochs"] for r in table] == ["1", "1", "1", "3"]
    parent = table[3]["warm_start_from"]
    first_round = {r["trial_id"]: float(r["val_loss"]) for r in table[:3]}
    assert parent == min(first_round, key=first_round.get)
    assert f"[epochs 2-3, continuing trial {parent}]" in out
    child, source = directory / "trials" / "3", directory / "trials" / parent
    history = (child / "history.csv").read_text().splitlines()
    assert len(history) == 4 and history[1] == (source / "history.csv").read_text().splitlines()[1]
    for key in ("train.learning_rate", "model.args.filters", "data.augment"):
        assert table[3][key] == table[int(parent)][key]
    assert json.loads((child / "run.json").read_text())["epochs_done"] == 3


@pytest.mark.slow
def test_invalid_combination_fails_its_trial_not_the_search(capsys, synthetic_dataset: Path,
                                                            tmp_path: Path) -> None:
    space = tmp_path / "vit.yaml"
    space.write_text("model.args.num_heads: {choice: [3, 4]}\ntrain.learning_rate: {log_uniform: [1.0e-3, 1.0e-2]}\n")
    directory = tmp_path / "vit"
    code, out, err = tune(capsys, "--task", "lens_finding", "--set", "task.positive_class=class1",
                          "--data", synthetic_dataset, "--model", "vit_tiny", "--set", "model.args.hidden_dim=16",
                          "--set", "model.args.num_layers=1", "--set", "model.args.mlp_dim=16",
                          "--tuner", "random", "--max-trials", "4", "--epochs", "1", "--seed", "1",
                          "--space", space, "--directory", directory)
    assert code == 0, err
    table = rows(directory)
    assert len(table) == 4
    failed = [r for r in table if r["status"] == "FAILED"]
    assert failed and len(failed) < 4
    assert all(r["model.args.num_heads"] == "3" and "divisible by num_heads 3" in r["message"] for r in failed)
    assert all(r["model.args.num_heads"] == "4" for r in table if r["status"] == "COMPLETED")
    assert "FAILED: model 'vit_tiny': hidden_dim 16 must be divisible by num_heads 3" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("space_text", "extra", "message"),
    [
        ("train.learnig_rate: {log_uniform: [1.0e-4, 1.0e-2]}", [], "key 'train.learnig_rate' (did you mean"),
        ("train.learning_rate: {uniform: [0.01, 0.01]}", [], "train.learning_rate: empty range [0.01, 0.01]"),
        ("model.dropout: {uniform: [0.5, 0.1]}", [], "model.dropout: empty range [0.5, 0.1]"),
        ("model.dropout: {loguniform: [0.1, 0.5]}", [], "unknown distribution 'loguniform' (did you mean"),
        ("model.dropout: {choice: []}", [], "model.dropout: empty choice"),
        ("model.args.num_heads: {choice: [2, 4]}", [], "'num_heads' is not an option of model 'cnn_small'"),
        ("data.augment: {choice: [d4, rot90]}", [], "data.augment='rot90' is refused: data.augment must be one of"),
        ("train.learning_rate: {uniform: [-0.1, 0.1]}", [], "train.learning_rate=-0.1 is refused"),
        ("run.seed: {int: [0, 3]}", [], "run.seed cannot be tuned"),
        ("model.dropout: 0.3", [], "model.dropout: expected one distribution"),
        ("model.dropout: {uniform: [0.0, 0.5]}", ["--objective", "val_f1"],
         "objective 'val_f1' is not a metric task substructure logs"),
        ("model.dropout: {uniform: [0.0, 0.5]}", ["--objective", "val_loss:up"], "direction must be max or min"),
        ("model.dropout: {uniform: [0.0, 0.5]}", ["--role", "worker", "--oracle-address", "127.0.0.1:9"],
         "a worker needs --tuner-id"),
        ("model.dropout: {uniform: [0.0, 0.5]}", ["--tuner-id", "w0"], "need --role"),
    ],
)
def test_bad_input_is_one_line_before_any_trial(capsys, three_class: Path, tmp_path: Path, space_text: str,
                                                extra: list[str], message: str) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text(space_text + "\n")
    directory = tmp_path / "bad"
    code, out, err = tune(capsys, "--task", "substructure", "--data", three_class, "--space", space,
                          "--directory", directory, "--epochs", "1", *TINY_CNN, *extra)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not directory.exists()  # nothing was searched or written


def test_default_spaces_fit_every_model_at_64px(synthetic_info) -> None:
    from lensnet.models import list_models
    from lensnet.tasks import task_from_config
    from lensnet.training.config import resolve_fit_config
    from lensnet.tuning.space import check_space, default_space_path, load_space

    for entry in [e for e in list_models() if e["kind"] == "backbone"]:  # lens finding tunes backbones
        base = resolve_fit_config("lens_finding", None, {"model": {"name": entry["name"]},
                                                        "task": {"positive_class": "class1"}})
        task = task_from_config(base, synthetic_info)
        path = default_space_path(entry["name"], "lens_finding")
        assert path.stem in (entry["family"], "default")
        check_space(load_space(path), base, task, (64, 64, 3))


def _command(data: Path, space: Path, directory: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lensnet.tune", "--task", "substructure", "--data", str(data),
            "--space", str(space), "--directory", str(directory), "--epochs", "2", "--no-progress",
            *TINY_CNN, *extra]


@pytest.mark.slow
def test_kill_and_resume_with_mirrored_trials(three_class: Path, space: Path, tmp_path: Path) -> None:
    directory = tmp_path / "killed"
    command = _command(three_class, space, directory, "--tuner", "random", "--max-trials", "3", "--cpu-devices", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = directory / "trials" / "1" / "checkpoints" / "state.json"  # trial 0 done, trial 1 half-way
    try:
        deadline = time.time() + 300
        while not state.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    assert state.exists()
    oracle = json.loads((directory / "keras_tuner" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {"tuner0": "1"} and oracle["end_order"] == ["0"]
    stamp = (directory / "trials" / "0" / "metrics.json").stat().st_mtime_ns

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout
    assert "resuming: 1 trial(s) completed, 0 failed (kept); interrupted trial(s) 1 run again first" in out
    assert "trial 1: resuming its run after epoch 1" in out and "trial 0 start" not in out
    assert "2 replica(s) (mirrored)" in out  # every trial of the process mirrors over the two logical CPUs
    table = rows(directory)
    assert [(r["trial_id"], r["status"]) for r in table] == [("0", "COMPLETED"), ("1", "COMPLETED"),
                                                             ("2", "COMPLETED")]
    assert (directory / "trials" / "0" / "metrics.json").stat().st_mtime_ns == stamp  # kept, not retrained
    history = list(csv.DictReader(open(directory / "trials" / "1" / "history.csv")))
    assert [h["epoch"] for h in history] == ["0", "1"]  # epoch 1 from before the kill, epoch 2 after
    oracle = json.loads((directory / "keras_tuner" / "oracle.json").read_text())
    assert oracle["end_order"] == ["0", "1", "2"] and oracle["ongoing_trials"] == {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_account_for_every_trial_once(three_class: Path, space: Path, tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    port = _free_port()
    command = _command(three_class, space, directory, "--tuner", "bayesian", "--initial-points", "2",
                       "--max-trials", "4")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    address = ["--oracle-address", f"127.0.0.1:{port}"]
    # one worker by flags, the other by KerasTuner's own environment variables
    kt_env = {**env, "KERASTUNER_TUNER_ID": "w1", "KERASTUNER_ORACLE_IP": "127.0.0.1",
              "KERASTUNER_ORACLE_PORT": str(port)}
    specs = {"w0": (command + ["--role", "worker", "--tuner-id", "w0", *address], env),
             "w1": (command, kt_env),
             "chief": (command + ["--role", "chief", *address], env)}
    procs, logs = {}, []

    def start(name: str, attempt: int = 0) -> None:
        argv, environ = specs[name]
        log = open(tmp_path / f"{name}.{attempt}.log", "w")
        logs.append(log)
        procs[name] = subprocess.Popen(argv, cwd=tmp_path, env=environ, stdout=log, stderr=subprocess.STDOUT)

    try:
        for name in specs:
            start(name)
        # kill -9 the worker of trial 0 after its first epoch; restarted under the same id, it gets trial 0 back
        state = directory / "trials" / "0" / "checkpoints" / "state.json"
        deadline = time.time() + 300
        while not state.exists() and time.time() < deadline and procs["chief"].poll() is None:
            time.sleep(0.02)
        assert state.exists(), (tmp_path / "chief.0.log").read_text()[-3000:]
        owner = re.search(r"trial 0 start on (w\d)", (tmp_path / "chief.0.log").read_text()).group(1)
        procs[owner].send_signal(signal.SIGKILL)
        procs[owner].wait(timeout=60)
        start(owner, 1)
        deadline = time.time() + 400
        for name, proc in procs.items():
            code = proc.wait(timeout=max(1.0, deadline - time.time()))
            assert code == 0, (tmp_path / f"{name}.{1 if name == owner else 0}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for log in logs:
            log.close()
    table = rows(directory)
    assert sorted(r["trial_id"] for r in table) == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" and r["epochs"] == "2" for r in table)
    assert {r["tuner"] for r in table} == {"w0", "w1"} and table[0]["tuner"] == owner
    for r in table:
        assert (directory / "trials" / r["trial_id"] / "metrics.json").is_file()
    restarted = (tmp_path / f"{owner}.1.log").read_text()
    assert "trial 0: resuming its run after epoch 1" in restarted
    ran = []
    for log in (f"{owner}.1.log", f"{'w1' if owner == 'w0' else 'w0'}.0.log"):
        line = next(line for line in (tmp_path / log).read_text().splitlines() if "trials run here:" in line)
        ran += line.split("trials run here: ")[1].split(". The chief")[0].split(", ")
    assert sorted(ran) == ["0", "1", "2", "3"]  # each trial ran to the end on exactly one worker
    oracle = json.loads((directory / "keras_tuner" / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == ["0", "1", "2", "3"]
    chief = (tmp_path / "chief.0.log").read_text()
    assert "search finished" in chief and (directory / "best.yaml").is_file()
