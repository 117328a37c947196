"""What a search leaves behind: per-trial results, summary.csv, best.yaml, TensorBoard HParams, progress lines."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lensnet.core.config import dump_yaml, load_yaml
from lensnet.core.errors import LensnetError
from lensnet.core.fileio import atomic_open, follow_umask, write_json, write_text
from lensnet.tuning.space import yaml_text

TRIAL_RESULT = "tuning.json"  # in each trial's run directory


def _history(run_dir: Path, objective: str) -> list[tuple[float, int]]:
    """[(objective value, 0-based epoch)] from the run's history.csv, in epoch order.

    A run killed between writing a history row and its checkpoint repeats that epoch
    when resumed; the last row of each epoch is the one that counts.
    """
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise LensnetError(f"{run_dir} has no history.csv")
    with open(path, newline="") as handle:
        rows = {int(row["epoch"]): row for row in csv.DictReader(handle)}
    if not rows:
        raise LensnetError(f"{path} records no epoch")
    if objective not in next(iter(rows.values())):
        raise LensnetError(f"{path} has no column '{objective}'")
    return [(float(row[objective] or "nan"), epoch) for epoch, row in sorted(rows.items())]


def objective_from_history(run_dir: Path, objective: str, direction: str) -> tuple[float, int, int]:
    """(best value, its 1-based epoch, epochs trained) from the run's history.csv."""
    scored = _history(run_dir, objective)
    finite = [(value, epoch) for value, epoch in scored if math.isfinite(value)]
    if not finite:
        raise LensnetError(f"objective {objective} is NaN in every epoch of {run_dir}")
    best = max(finite) if direction == "max" else min(finite)
    return best[0], best[1] + 1, len(scored)


def objective_at_last_epoch(run_dir: Path, objective: str) -> float | None:
    """The objective after the run's last epoch (None if NaN): what PBT ranks a member's round on."""
    value = _history(run_dir, objective)[-1][0]
    return value if math.isfinite(value) else None


def write_trial_result(run_dir: Path, result: dict) -> None:
    write_json(Path(run_dir) / TRIAL_RESULT, result)


def read_trial_result(run_dir: Path) -> dict:
    path = Path(run_dir) / TRIAL_RESULT
    return json.loads(path.read_text()) if path.is_file() else {}


def failure_reason(message: str | None) -> str:
    """KerasTuner keeps a failed trial's whole traceback; its last line says why."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    prefix = "keras_tuner.src.errors.FailedTrialError: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, dict)) or value is None:
        return yaml_text(value)
    return str(value)


def describe_values(values: dict) -> str:
    """`learning_rate=0.00031 dropout=0.12 ...`: the last part of each dotted key, for one-line progress."""
    return " ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in values.items())


def lineage(trial_id: str, values_of: dict[str, dict]) -> str:
    """`0>4>9`: the trial's ancestors (weights inherited: tuner/trial_id; values: tuner/parent), oldest first."""
    chain, seen = [trial_id], {trial_id}
    while True:
        values = values_of.get(chain[-1], {})
        parent = values.get("tuner/trial_id") or values.get("tuner/parent")
        if parent is None or str(parent) in seen:
            break
        chain.append(str(parent))
        seen.add(str(parent))
    return ">".join(reversed(chain))


def trial_rows(trials: Iterable[Any], space: Any, objective: str, trials_dir: Path) -> list[dict]:
    """One summary row per KerasTuner trial, in trial order."""
    trials = sorted(trials, key=lambda t: int(t.trial_id))
    values_of = {t.trial_id: t.hyperparameters.values for t in trials}
    rows = []
    for trial in trials:
        values = trial.hyperparameters.values
        run_dir = Path(trials_dir) / trial.trial_id
        result = read_trial_result(run_dir)
        completed = trial.status == "COMPLETED"
        score = trial.score if completed and trial.score is not None else result.get("value")
        row = {"trial_id": trial.trial_id, "status": trial.status,
               objective: score if completed else None,
               "best_epoch": result.get("best_epoch"), "epochs": result.get("epochs"),
               "seconds": result.get("seconds"), "tuner": result.get("tuner")}
        row.update({key: yaml_text(value) if isinstance(value, (list, dict)) or value is None else value
                    for key, value in space.decoded(values).items()})
        row["warm_start_from"] = values.get("tuner/trial_id")
        row["member"] = values.get("tuner/member")
        row["lineage"] = lineage(trial.trial_id, values_of)
        row["pruned_at"] = result.get("pruned_at")
        row["run_dir"] = str(run_dir) if (run_dir / "run.json").is_file() else ""
        row["message"] = failure_reason(trial.message) if trial.status == "FAILED" else ""
        rows.append(row)
    return rows


def write_summary(path: Path, rows: list[dict], objective: str, keys: list[str]) -> None:
    columns = ["trial_id", "status", objective, "best_epoch", "epochs", "seconds", "tuner", *keys,
               "warm_start_from", "member", "lineage", "pruned_at", "run_dir", "message"]
    with atomic_open(path, "w") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def write_best(path: Path, trial_run: Path, base_run: dict, header: str) -> dict:
    """best.yaml: the best trial's resolved config with the command's run section and no run name,
    so `python -m lensnet.fit --config best.yaml` starts a new run."""
    config = load_yaml(Path(trial_run) / "config.yaml", "trial config")
    config["run"] = {**base_run, "name": None}
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    write_text(path, comment + dump_yaml(config))
    return config


def _replace_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary directory beside `final`, then swap it in: a rerun never leaves two copies of events."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        follow_umask(tmp, directory=True)
        fill(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _hparams(hyperparameters: Any) -> dict:
    from keras_tuner.src.engine.tuner_utils import convert_hyperparams_to_hparams
    from tensorboard.plugins.hparams import api as hp

    return convert_hyperparams_to_hparams(hyperparameters, hp)


def _metric_names(objective: str) -> list[str]:
    return [objective, "epochs", "seconds"]


def write_hparams_config(log_dir: Path, hyperparameters: Any, objective: str) -> None:
    """The experiment description TensorBoard's HParams dashboard reads at the root of `log_dir`."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".config.", dir=log_dir))
    try:
        writer = tf.summary.create_file_writer(str(tmp))
        with writer.as_default():
            hp.hparams_config(hparams=list(_hparams(hyperparameters)),
                              metrics=[hp.Metric(name) for name in _metric_names(objective)])
        writer.close()
        for old in log_dir.glob("events.out.tfevents.*"):  # a rerun replaces the description
            old.unlink()
        for event in tmp.glob("events.out.tfevents.*"):
            os.replace(event, log_dir / event.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_trial_hparams(log_dir: Path, trial_id: str, hyperparameters: Any, metrics: dict) -> None:
    """One HParams session per trial: its values and objective, under log_dir/<trial_id>."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    def fill(tmp: Path) -> None:
        writer = tf.summary.create_file_writer(str(tmp))
        with writer.as_default():
            hp.hparams(_hparams(hyperparameters), trial_id=trial_id)
            for name, value in metrics.items():
                if value is not None:
                    tf.summary.scalar(name, float(value), step=int(metrics.get("epochs") or 0))
        writer.close()

    _replace_dir(Path(log_dir) / trial_id, fill)
