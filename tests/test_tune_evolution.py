"""lensnet.tune --tuner pbt | evolution and --prune median on tiny synthetic data: search, lineage, resume after
kill -9 with the same result, one chief + two workers, and the median-stopping rule on a planted bad trial."""

from __future__ import annotations

import csv
import json
import os
import signal
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
KEYS = ("train.learning_rate", "model.args.filters", "data.augment")
PBT = ["--tuner", "pbt", "--population", "3", "--rounds", "2", "--epochs", "1", "--seed", "2"]
EVOLUTION = ["--tuner", "evolution", "--population", "2", "--sample-size", "2", "--max-trials", "4", "--epochs", "1",
             "--seed", "2"]


def rows(directory: Path) -> list[dict]:
    with open(directory / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("evo") / "three"
    write_synthetic(path, 96, image_shape=(16, 16, 1), num_classes=3, seed=1, records_per_shard=32)
    return path


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evo-space") / "space.yaml"
    path.write_text(SPACE)
    return path


def _command(data: Path, space: Path, directory: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lensnet.tune", "--task", "substructure", "--data", str(data),
            "--space", str(space), "--directory", str(directory), "--no-progress", *TINY_CNN, *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def searched(three_class: Path, space: Path, tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted search per tuner: the reference the resumed and distributed searches are checked against."""
    out = {}
    for name, argv in (("pbt", PBT), ("evolution", EVOLUTION)):
        directory = tmp_path_factory.mktemp(name) / "search"
        done = subprocess.run(_command(three_class, space, directory, *argv), cwd=directory.parent, env=_env(),
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        out[name] = directory
    return out


def test_pbt_round_two_exploits_the_best_member_and_explores(searched: dict[str, Path]) -> None:
    table = rows(searched["pbt"])
    assert [r["status"] for r in table] == ["COMPLETED"] * 6
    first, second = table[:3], table[3:]
    assert [r["member"] for r in table] == ["0", "1", "2", "0", "1", "2"]
    assert [r["epochs"] for r in table] == ["1"] * 3 + ["2"] * 3
    last = {r["member"]: json.loads((searched["pbt"] / "trials" / r["trial_id"] / "tuning.json").read_text())
            ["last_value"] for r in first}
    best, worst = max(last, key=last.get), min(last, key=last.get)
    by_member = {r["member"]: r for r in second}
    for member, row in by_member.items():
        parent = next(r for r in first if r["trial_id"] == row["warm_start_from"])
        assert row["lineage"] == f"{parent['trial_id']}>{row['trial_id']}"
        assert row["model.args.filters"] == parent["model.args.filters"]  # the architecture is inherited
        ratio = float(row["train.learning_rate"]) / float(parent["train.learning_rate"])
        if member == worst:  # exploit: the weights and values of the best, explore: the rate x0.8 or x1.25
            assert parent["member"] == best
            assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.25) or float(
                row["train.learning_rate"]) in (pytest.approx(1e-3), pytest.approx(1e-2))
        else:  # the others continue their own run with their own values
            assert parent["member"] == member and ratio == 1.0 and row["data.augment"] == parent["data.augment"]
    # a continuing trial's history starts with its parent's epoch
    child = by_member[worst]
    parent_history = (searched["pbt"] / "trials" / child["warm_start_from"] / "history.csv").read_text().splitlines()
    history = (searched["pbt"] / "trials" / child["trial_id"] / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[1] == parent_history[1]


def test_evolution_mutates_one_value_of_a_tournament_winner(searched: dict[str, Path]) -> None:
    table = rows(searched["evolution"])
    assert [r["status"] for r in table] == ["COMPLETED"] * 4
    assert table[0]["lineage"] == "0" and table[1]["lineage"] == "1"  # the random initial population
    for child in table[2:]:
        parent = next(r for r in table if r["trial_id"] == child["lineage"].split(">")[-2])
        assert int(parent["trial_id"]) < int(child["trial_id"])
        assert sum(child[k] != parent[k] for k in KEYS) == 1
        assert child["warm_start_from"] == ""  # values inherited, not weights: the child trains from scratch
        assert child["epochs"] == "1"
    # with a population of 2 and a sample of 2 the tournament is the best of the two alive trials
    third_parent = table[2]["lineage"].split(">")[-2]
    first_two = {r["trial_id"]: float(r["val_macro_roc_auc"]) for r in table[:2]}
    assert third_parent == max(first_two, key=first_two.get)


def _same_search(a: Path, b: Path) -> None:
    left, right = rows(a), rows(b)
    assert len(left) == len(right)
    for x, y in zip(left, right):
        for key in ("trial_id", "status", "member", "lineage", "epochs", *KEYS):
            assert x[key] == y[key], (key, x, y)
        assert float(x["val_macro_roc_auc"]) == pytest.approx(float(y["val_macro_roc_auc"]), abs=1e-6)


@pytest.mark.parametrize(("tuner", "argv", "victim"), [("pbt", PBT, "4"), ("evolution", EVOLUTION, "2")])
def test_kill_and_resume_gives_the_same_search(three_class: Path, space: Path, searched: dict[str, Path],
                                               tmp_path: Path, tuner: str, argv: list[str], victim: str) -> None:
    directory = tmp_path / "killed"
    command = _command(three_class, space, directory, *argv)
    proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = directory / "trials" / victim / "config.yaml"  # the trial's run has begun
    try:
        deadline = time.time() + 600
        while not started.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert started.exists()
    oracle = json.loads((directory / "keras_tuner" / "oracle.json").read_text())
    assert victim not in oracle["end_order"]
    resumed = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming:" in resumed.stdout and "trial 0 start" not in resumed.stdout
    _same_search(searched[tuner], directory)


def _chief_and_two_workers(command: list[str], tmp_path: Path) -> None:
    """Run `command` as a chief and two workers (w0, w1) on localhost; logs in tmp_path/<name>.log."""
    from tests.test_tune import _free_port

    address = ["--oracle-address", f"127.0.0.1:{_free_port()}"]
    specs = {"chief": command + ["--role", "chief", *address],
             "w0": command + ["--role", "worker", "--tuner-id", "w0", *address],
             "w1": command + ["--role", "worker", "--tuner-id", "w1", *address]}
    procs, logs = {}, {}
    try:
        for name, cmd in specs.items():
            logs[name] = open(tmp_path / f"{name}.log", "w")
            procs[name] = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=logs[name], stderr=subprocess.STDOUT)
        deadline = time.time() + 2400  # generous: the CI machine is shared; a hang still ends here
        for name, proc in procs.items():
            code = proc.wait(timeout=max(1.0, deadline - time.time()))
            assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for log in logs.values():
            log.close()


@pytest.mark.parametrize(("tuner", "argv"), [("pbt", PBT), ("evolution", EVOLUTION)])
def test_chief_and_two_workers(three_class: Path, space: Path, tmp_path: Path, tuner: str, argv: list[str]) -> None:
    directory = tmp_path / "shared"
    _chief_and_two_workers(_command(three_class, space, directory, *argv), tmp_path)
    table = rows(directory)
    expected = 6 if tuner == "pbt" else 4
    assert [r["status"] for r in table] == ["COMPLETED"] * expected
    assert {r["tuner"] for r in table} <= {"w0", "w1"} and len({r["tuner"] for r in table}) == 2
    if tuner == "pbt":  # round 2 started only once round 1 had ended: every member continues a round-1 trial
        assert [r["epochs"] for r in table] == ["1"] * 3 + ["2"] * 3
        assert {r["warm_start_from"] for r in table[3:]} <= {"0", "1", "2"}
    else:
        assert all(len(r["lineage"].split(">")) == 2 for r in table[2:])
    ran = []
    for name in ("w0", "w1"):
        line = next(x for x in (tmp_path / f"{name}.log").read_text().splitlines() if "trials run here:" in x)
        ran += [t for t in line.split("trials run here: ")[1].split(". The chief")[0].split(", ") if t != "none"]
    assert sorted(ran, key=int) == [r["trial_id"] for r in table]
    assert (directory / "best.yaml").is_file()


# ---- pruning ---------------------------------------------------------------------------------------------------


def test_median_rule_stops_below_the_median_after_the_grace_period() -> None:
    from lensnet.tuning.pruning import MedianStopping

    rule = MedianStopping(grace=1, min_peers=3)
    peers = [{1: 0.6, 2: 0.7}, {1: 0.5, 2: 0.8}, {1: 0.7, 2: 0.75}]
    assert not rule.should_stop({1: 0.1}, peers, 1, "max")  # grace
    assert rule.should_stop({1: 0.1, 2: 0.2}, peers, 2, "max")
    assert not rule.should_stop({1: 0.1, 2: 0.76}, peers, 2, "max")  # above the median 0.75
    assert not rule.should_stop({1: 0.1, 2: 0.2}, peers[:2], 2, "max")  # too few peers reached epoch 2
    assert rule.should_stop({1: 2.0, 2: 1.9}, [{2: 1.0}, {2: 1.2}, {2: 1.1}], 2, "min")
    assert not rule.should_stop({1: 0.9, 2: 1.9}, [{2: 1.0}, {2: 1.2}, {2: 1.1}], 2, "min")  # best so far counts


def test_oracle_prunes_a_planted_bad_trial_never_the_best(tmp_path: Path) -> None:
    """Four trials report their curves to a random-search oracle with the median rule, as workers would over gRPC;
    the planted trial falls behind after the grace epochs and is stopped, the best one never."""
    from lensnet.tuning.pruning import EPOCH_KEY, MedianStopping
    from lensnet.tuning.space import SearchSpace, load_space
    from lensnet.tuning.tuner import SearchOptions, TrialSetup, make_oracle

    (tmp_path / "s.yaml").write_text(SPACE)
    space: SearchSpace = load_space(tmp_path / "s.yaml")
    setup = TrialSetup(base={}, space=space, objective="val_auc", direction="max", directory=tmp_path)
    oracle = make_oracle("random", setup, SearchOptions(max_trials=5, seed=0, max_failures=3, max_epochs=4,
                                                        pruner=MedianStopping(grace=1, min_peers=2)))
    oracle._set_project_dir(str(tmp_path), "kt")
    curves = {"good": [0.6, 0.7, 0.8, 0.85], "fair": [0.6, 0.65, 0.7, 0.72], "best": [0.55, 0.75, 0.9, 0.95],
              "bad": [0.58, 0.55, 0.5, 0.5], "late": [0.5, 0.68, 0.86, 0.9]}
    stopped = {}
    for name, curve in curves.items():
        trial = oracle.create_trial(name)
        for epoch, value in enumerate(curve, start=1):
            reply = oracle.update_trial(trial.trial_id, {"val_auc": value, EPOCH_KEY: epoch}, step=epoch)
            if reply.status == "STOPPED":
                stopped[name] = epoch
                break
        trial.status = "COMPLETED"
        oracle.update_trial(trial.trial_id, {"val_auc": max(curve[: stopped.get(name, 4)])})
        oracle.end_trial(trial)
    assert stopped == {"bad": 2}
    best = oracle.get_best_trials(1)[0]
    assert best.score == 0.95 and best.trial_id == "2" and oracle.pruned() == {"3": 2}
    # the curves survive a reload (a resumed chief decides on the same history)
    oracle.save()
    again = make_oracle("random", setup, SearchOptions(max_trials=5, seed=0, max_failures=3, max_epochs=4,
                                                       pruner=MedianStopping(grace=1, min_peers=2)))
    again._set_project_dir(str(tmp_path), "kt")
    again.reload()
    assert again.curves()["3"] == {1: 0.58, 2: 0.55} and again.pruned() == {"3": 2}


def test_pruned_search_stops_the_planted_trial(capsys, three_class: Path, tmp_path: Path) -> None:
    """End to end: the per-epoch report of each trial reaches the oracle and a stop ends the trial's run early."""
    space = tmp_path / "planted.yaml"
    # 1e-9 learns nothing: its loss stays where it starts while the others' falls
    space.write_text("train.learning_rate: {choice: [3.0e-3, 1.0e-9]}\nmodel.dropout: {uniform: [0.0, 0.1]}\n")
    directory = tmp_path / "pruned"
    code = run_cli(tune_main, [str(a) for a in [
        "--task", "substructure", "--data", three_class, "--space", space, "--directory", directory,
        "--tuner", "evolution", "--population", "3", "--sample-size", "2", "--max-trials", "5", "--epochs", "3",
        "--batch-size", "16", "--objective", "loss", "--prune", "median", "--prune-min-peers", "2", "--seed", "1",
        *TINY_CNN]])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = rows(directory)
    assert all(r["status"] == "COMPLETED" for r in table)
    planted = [r for r in table if float(r["train.learning_rate"]) < 1e-6]
    assert any(int(r["trial_id"]) >= 2 for r in planted), "the seed must plant a trial after two peers"
    for r in planted:
        if int(r["trial_id"]) >= 2:  # trials run one after the other here: two peers have reached epoch 2
            assert r["pruned_at"] == "2" and r["epochs"] == "2"
            assert f"trial {r['trial_id']} COMPLETED" in out and "pruned after epoch 2" in out
    best = min(table, key=lambda r: float(r["loss"]))
    assert best["pruned_at"] == "" and best["epochs"] == "3"
    settings = (directory / "search.yaml").read_text()
    assert "pruning:" in settings and "rule: median" in settings


def test_bench_tune_counts_only_the_epochs_a_trial_trained(tmp_path: Path) -> None:
    from lensnet.bench.tune import summarise, tuner_options

    (tmp_path / "summary.csv").write_text(
        "trial_id,status,val_auc,epochs,warm_start_from,pruned_at\n"
        "0,COMPLETED,0.6,3,,\n1,COMPLETED,0.7,3,,2\n2,FAILED,,1,,\n3,COMPLETED,0.8,9,1,\n")
    row = summarise("hyperband", tmp_path, "val_auc", "max", 1.0, budget=12)
    assert row["epochs"] == 3 + 3 + 1 + 6 and row["pruned"] == 1  # trial 3 continued trial 1 from epoch 3
    assert row["best_val_auc"] == 0.8 and row["best_at_half_budget"] == 0.7  # after 6 epochs
    assert row["trace"] == "3:0.6000 6:0.7000 7:0.7000 13:0.8000"
    assert tuner_options("pbt", 12, 3, 2)[-1] == "2"  # 2 members x 2 rounds x 3 epochs
    for name in ("random", "random+median", "bayesian", "hyperband", "evolution"):  # a budget, not a trial cap
        options = tuner_options(name, 12, 3, 2)
        assert options[options.index("--epoch-budget") + 1] == "12" and "--max-trials" not in options
    with pytest.raises(Exception, match="unknown tuner 'sgd'"):
        tuner_options("sgd", 12, 3, 2)


# ---- the epoch budget ------------------------------------------------------------------------------------------


def test_epoch_budget_stops_a_pruned_search_at_the_budget_and_survives_a_reload(tmp_path: Path) -> None:
    """Random search with median pruning and a budget of 8 epochs, trials of 3: the pruned trial (2 epochs) leaves
    room for no other, where a trial cap would start more trials (or, at 3, overshoot)."""
    from lensnet.tuning.pruning import EPOCH_KEY, MedianStopping
    from lensnet.tuning.space import load_space
    from lensnet.tuning.tuner import SearchOptions, TrialSetup, make_oracle

    (tmp_path / "s.yaml").write_text(SPACE)
    setup = TrialSetup(base={}, space=load_space(tmp_path / "s.yaml"), objective="val_auc", direction="max",
                       directory=tmp_path)

    def oracle() -> object:
        made = make_oracle("random", setup, SearchOptions(max_trials=None, seed=0, max_failures=3, max_epochs=3,
                                                          pruner=MedianStopping(grace=1, min_peers=2),
                                                          epoch_budget=8))
        made._set_project_dir(str(tmp_path), "kt")
        return made

    search = oracle()
    curves = [[0.6, 0.7, 0.8], [0.65, 0.75, 0.85], [0.6, 0.5, 0.5], [0.9, 0.95, 0.97]]
    started = []
    for curve in curves:
        trial = search.create_trial("t")
        if trial.status == "STOPPED":
            break
        started.append(trial.trial_id)
        for epoch, value in enumerate(curve, start=1):
            if search.update_trial(trial.trial_id, {"val_auc": value, EPOCH_KEY: epoch}).status == "STOPPED":
                break
        trial.status = "COMPLETED"
        search.update_trial(trial.trial_id, {"val_auc": max(curve[:epoch])})
        search.end_trial(trial)
    assert len(started) == 3 and search.epochs_spent() == 8  # 3 + 3 + 2 (pruned): the fourth never starts
    assert search.pruned() == {started[2]: 2}
    search.save()
    again = oracle()
    again.reload()
    assert again.epochs_spent() == 8 and again.create_trial("t").status == "STOPPED"


def test_epoch_budget_stops_hyperband_after_its_continuing_trials(three_class: Path, space: Path,
                                                                  tmp_path: Path) -> None:
    """Hyperband (brackets of 1 and 3 epochs, many iterations) stops at the epoch budget, past its first bracket's
    continuing trial, and overshoots by less than the last trial's length."""
    directory = tmp_path / "hb"
    done = subprocess.run(_command(three_class, space, directory, "--tuner", "hyperband", "--max-epochs", "3",
                                   "--factor", "3", "--hyperband-iterations", "20", "--epoch-budget", "7",
                                   "--epochs", "1", "--batch-size", "32", "--seed", "2"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    from lensnet.bench.tune import _epochs_trained

    table = rows(directory)
    trained = _epochs_trained(table)
    spent = sum(trained.values())
    last = trained[table[-1]["trial_id"]]
    assert spent >= 7 and spent - last < 7, (spent, trained)
    assert any(r["warm_start_from"] for r in table)  # the first bracket's continuing trial ran
    assert "epoch_budget: 7" in (directory / "search.yaml").read_text()


def test_median_pruning_with_a_chief_and_two_workers(three_class: Path, tmp_path: Path) -> None:
    """The chief alone decides from the curves both workers report over gRPC: the planted trial (learning rate
    1e-9, trial 4 at this seed) starts once three trials have ended, so it has enough peers at epoch 2 and is
    stopped there; the best trial trains all its epochs."""
    space = tmp_path / "planted.yaml"
    space.write_text("train.learning_rate: {choice: [1.0e-9, 3.0e-3, 5.0e-3, 1.0e-2]}\n"
                     "model.dropout: {uniform: [0.0, 0.1]}\n")
    directory = tmp_path / "shared"
    command = _command(three_class, space, directory, "--tuner", "random", "--max-trials", "5", "--epochs", "3",
                       "--batch-size", "16", "--objective", "loss", "--prune", "median", "--prune-min-peers", "2",
                       "--seed", "5")
    _chief_and_two_workers(command, tmp_path)
    table = rows(directory)
    assert [r["status"] for r in table] == ["COMPLETED"] * 5
    assert {r["tuner"] for r in table} == {"w0", "w1"}  # both workers ran trials
    planted = [r for r in table if float(r["train.learning_rate"]) < 1e-6]
    assert "4" in [r["trial_id"] for r in planted], "the seed must plant trial 4, after three trials have ended"
    late = next(r for r in planted if r["trial_id"] == "4")
    assert late["pruned_at"] == "2" and late["epochs"] == "2"
    best = min(table, key=lambda r: float(r["loss"]))
    assert best["pruned_at"] == "" and best["epochs"] == "3"
    assert "pruned after epoch 2" in (tmp_path / "chief.log").read_text()  # the chief reports its decision
