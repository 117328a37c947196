"""One training run, end to end: dataset, run directory, strategy, model, fit, test report.

`run_fit(config)` is what `python -m lensnet.fit` calls; the tuner calls it per trial.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lensnet.config import dump_yaml, load_yaml
from lensnet.errors import LensnetError
from lensnet.fileio import write_json, write_text
from lensnet.runinfo import package_versions
from lensnet.runs import RunInfo, read_run, write_run
from lensnet.training.distribute import is_chief

DEFAULT_DATASET_SEED = 0  # the default dataset is the same for every run seed


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict
    info: RunInfo
    seconds: float


def resolve_dataset(config: dict, progress: bool = True):
    """The dataset of `config`; simulates the task's default dataset when none is given and none exists."""
    from lensnet.data import open_dataset

    data = config["data"]
    if data["path"]:
        return open_dataset(data["path"])
    preset = data["default_dataset"]
    if not preset:
        raise LensnetError("no dataset: give --data DIR (a directory written by lensnet.simulate or lensnet.convert)")
    path = Path("tfrecords") / preset
    if not (path / "manifest.json").is_file() and not is_chief():
        _wait_for_chief_dataset(path)
    if not (path / "manifest.json").is_file():
        from lensnet.simulate.command import print_summary, simulate_dataset

        print(f"no dataset at {path}: simulating the default '{preset}' dataset "
              f"({data['default_num']} records, seed {DEFAULT_DATASET_SEED})", flush=True)
        summary = simulate_dataset(preset, path, num=int(data["default_num"]), seed=DEFAULT_DATASET_SEED,
                                   workers=os.cpu_count() or 1, progress=progress)
        print_summary(summary)
    data["path"] = str(path)
    return open_dataset(path)


def _wait_for_chief_dataset(path: Path, timeout: float = 6 * 3600) -> None:
    """Multi-worker: the chief simulates the default dataset; the other workers wait for its manifest."""
    print(f"waiting for the chief to simulate {path}", flush=True)
    deadline = time.time() + timeout
    while not (path / "manifest.json").is_file():
        if time.time() > deadline:
            raise LensnetError(f"the chief did not finish simulating {path}; give every worker --data DIR")
        time.sleep(2)


def _run_dir(config: dict) -> Path:
    run = config["run"]
    name = run["name"] or "{}-{}-{}".format(
        config["task"]["name"], config["model"]["name"], _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    )
    run["name"] = name
    return Path(run["dir"]) / name


def _verbosity(setting: object) -> int:
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def _cache_split(config: dict, info, splits: tuple[str, ...]) -> bool:
    setting = config["data"]["cache"]
    if setting != "auto":
        return bool(setting)
    record = 4 * sum(math.prod(info.schema[n].shape) for n in info.image_names) + 512
    return sum(info.counts.get(s, 0) for s in splits) * record < float(config["data"]["cache_limit_mb"]) * 2**20


def prepare_run(config: dict, resume: bool, write: bool = True) -> tuple[Path, dict | None]:
    """Create (or reopen, when resuming) the run directory; returns it and the saved state.

    write=False (non-chief workers of a multi-worker run) only reads: the chief owns the directory,
    and a worker checking for it while the chief creates it would refuse to start.
    """
    from lensnet.training.callbacks import read_state

    run_dir = _run_dir(config)
    state = None
    if resume:
        state = read_state(run_dir)
    if not write:
        return run_dir, state
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise LensnetError(f"run directory {run_dir} already exists; use --resume {run_dir} or another --run-name")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", dump_yaml(config))
    write_json(run_dir / "versions.json", package_versions())
    _trim_history(run_dir / "history.csv", int(state["epochs_done"]) if state else 0)
    return run_dir, state


def _trim_history(path: Path, epochs: int) -> None:
    """Keep the header and the first `epochs` rows: a kill between the CSV row and the
    checkpoint of an epoch would otherwise leave that epoch twice in the history of a resumed run."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > epochs + 1:
        write_text(path, "".join(lines[: epochs + 1]))


def run_fit(config: dict, *, resume: bool = False, progress: bool = True) -> FitResult:
    """Train as `config` says; with `resume`, continue the run named by config.run from its last epoch."""
    t0 = time.perf_counter()
    import keras
    import tensorflow as tf

    from lensnet.data import load, normalisation_spec
    from lensnet.data.pipeline import reader_error
    from lensnet.runinfo import seed_everything
    from lensnet.tasks import get_task_class
    from lensnet.training import callbacks as cb
    from lensnet.training.distribute import make_strategy
    from lensnet.training.evaluation import report
    from lensnet.training.model import build_model
    from lensnet.training.optim import make_optimizer

    strategy, strategy_kind = make_strategy(config["distribute"])  # first: devices are fixed at TF start-up
    info = resolve_dataset(config, progress)
    task = get_task_class(config["task"]["name"])(config["task"], info, config["train"])
    train, data, run = config["train"], config["data"], config["run"]
    task.check_data_options(data)
    seed = int(run["seed"])
    monitor = train["monitor"] or f"val_{task.monitor}"
    mode = monitor_mode(monitor, task)
    batch_size = int(data["batch_size"])
    steps_per_epoch = int(train["steps_per_epoch"] or math.ceil(info.counts["train"] / batch_size))
    epochs = int(train["epochs"])

    seed_everything(seed, deterministic_ops=bool(run["deterministic"]))
    keras.mixed_precision.set_global_policy("mixed_float16" if train["mixed_precision"] else "float32")
    with strategy.scope():  # before the run directory exists: a model that cannot take the data fails here
        model = build_model(task, config["model"], info.image_shape)
        optimizer = make_optimizer(train, steps_per_epoch)
        metric_key = "weighted_metrics" if getattr(task, "metrics_use_weights", False) else "metrics"
        model.compile(optimizer=optimizer, loss=task.loss(), **{metric_key: task.metrics()})

    chief = is_chief()
    run_dir, state = prepare_run(config, resume, write=chief)
    if state:
        with strategy.scope():
            _restore(model, run_dir, state)
    initial_epoch = int(state["epochs_done"]) if state else 0
    run_info = RunInfo(
        task=task.name, model=config["model"]["name"],
        input_shape=list(info.image_shape), normalisation=normalisation_spec(data["normalise"], info),
        dataset={"path": str(info.path), "name": info.name, "checksum": info.checksum}, seed=seed,
        epochs_done=initial_epoch, best_epoch=(state or {}).get("best_epoch"), output=task.output_spec().to_json(),
    )
    if resume and (run_dir / "run.json").is_file():
        previous = read_run(run_dir)
        if previous.dataset.get("checksum") != info.checksum:
            raise LensnetError(f"cannot resume {run_dir}: its dataset {info.path} changed since the run started")
    if chief:
        write_run(run_dir, run_info)

    cache = _cache_split(config, info, ("train", "val"))
    common = {"batch_size": batch_size, "fields": task.fields, "normalise": data["normalise"], "cache": cache}
    train_ds = load(info, data["train_split"], shuffle=True, augment=data["augment"], seed=seed,
                    first_epoch=initial_epoch, repeat=True, shuffle_buffer=data["shuffle_buffer"], **common)
    val_ds = load(info, data["val_split"], shuffle=False, augment=None, **common)
    # a known length lets Keras end validation without an "input ran out of data" warning
    val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(math.ceil(info.counts["val"] / batch_size)))
    train_ds, val_ds = train_ds.map(task.prepare), val_ds.map(task.prepare)

    stateful = []
    images_per_epoch = steps_per_epoch * batch_size if train["steps_per_epoch"] else info.counts["train"]
    callbacks: list = [cb.LearningRateLogger(), cb.ThroughputMeter(images_per_epoch)]
    patience = int(train["early_stopping"]["patience"])
    saved = (state or {}).get("callbacks", {})
    if patience:
        stateful.append(cb.ResumableEarlyStopping(
            state=saved.get("ResumableEarlyStopping"), monitor=monitor, mode=mode, patience=patience,
            min_delta=float(train["early_stopping"]["min_delta"]), verbose=1))
    if train["schedule"] == "plateau":
        plateau = train["plateau"]
        stateful.append(cb.ResumableReduceLROnPlateau(
            state=saved.get("ResumableReduceLROnPlateau"), monitor=monitor, mode=mode,
            factor=float(plateau["factor"]), patience=int(plateau["patience"]), min_lr=float(plateau["min_lr"]),
            verbose=1))
    callbacks += stateful
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), update_freq="epoch",
                                                     write_graph=False))
        callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=initial_epoch > 0))

    def on_epoch(done: int, best_epoch: int | None) -> None:
        run_info.epochs_done, run_info.best_epoch = done, best_epoch
        write_run(run_dir, run_info)

    callbacks.append(cb.RunCheckpoint(run_dir, monitor, mode, stateful, state, on_epoch=on_epoch, write=chief))

    if initial_epoch < epochs:
        print(f"training {config['model']['name']} on {info.path} for task {task.name}: epochs "
              f"{initial_epoch + 1}-{epochs}, {steps_per_epoch} steps of {batch_size}, "
              f"{strategy.num_replicas_in_sync} replica(s) ({strategy_kind}); run: {run_dir}", flush=True)
        try:
            if strategy_kind == "multiworker":
                from lensnet.training.custom_loop import fit_distributed

                fit_distributed(model, strategy, task, info, config, initial_epoch, steps_per_epoch, callbacks)
            else:
                model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                          validation_data=val_ds, callbacks=callbacks, verbose=_verbosity(run["verbose"]),
                          shuffle=False)
        except tf.errors.OpError as exc:
            raise reader_error(exc, info) from None
        if model.stop_training and chief and _diverged(run_dir):  # history.csv is the chief's
            raise LensnetError(
                f"training diverged (loss became NaN); the last good checkpoint is in {run_dir}/checkpoints. "
                "Lower train.learning_rate or set train.clipnorm"
            )

    from lensnet.runs import load_model

    metrics = {}
    if chief:  # the chief wrote the checkpoints; the other workers have nothing to report
        best = load_model(run_dir)
        metrics = report(best, task, info, data["test_split"], run_info.normalisation, run_dir,
                         batch_size=batch_size,
                         extra={"best_epoch": run_info.best_epoch, "epochs": epochs, "run": str(run_dir)},
                         tensorboard_dir=run_dir / "logs" / "eval", history_csv=run_dir / "history.csv",
                         n_images=int(run["tensorboard_images"]))
        write_hparams(run_dir / "logs", config, metrics)
        run_info.status = "finished"
        write_run(run_dir, run_info)
    return FitResult(run_dir, metrics, run_info, time.perf_counter() - t0)


def monitor_mode(monitor: str, task) -> str:
    """max or min: the task's own monitor knows; otherwise losses and errors go down, the rest up."""
    if monitor == f"val_{task.monitor}":
        return task.monitor_mode
    lowered = ("loss", "mae", "rmse", "mse", "error")
    return "min" if any(word in monitor for word in lowered) else "max"


def _restore(model, run_dir: Path, state: dict) -> None:
    """Copy weights and optimizer state of checkpoints/last.keras into the freshly built `model`."""
    import keras

    path = run_dir / "checkpoints" / "last.keras"
    if not path.is_file():
        raise LensnetError(f"cannot resume {run_dir}: {path} is missing")
    saved = keras.models.load_model(path, compile=True, safe_mode=True)
    if len(saved.variables) != len(model.variables):
        raise LensnetError(f"cannot resume {run_dir}: the checkpoint does not match the configured model")
    for target, source in zip(model.variables, saved.variables):
        target.assign(source)
    model.optimizer.build(model.trainable_variables)
    saved_opt = saved.optimizer.variables
    if len(saved_opt) != len(model.optimizer.variables):
        raise LensnetError(f"cannot resume {run_dir}: the checkpoint's optimizer state does not match")
    for target, source in zip(model.optimizer.variables, saved_opt):
        target.assign(source)


def _diverged(run_dir: Path) -> bool:
    import csv

    path = run_dir / "history.csv"
    if not path.is_file():
        return True
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return not rows or not math.isfinite(float(rows[-1].get("loss") or "nan"))


def flat_hparams(config: dict) -> dict:
    """Scalar config values as dotted keys (what TensorBoard's HParams dashboard can show)."""
    out = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                out[f"{prefix}{key}"] = value
    walk(config, "")
    return out


def write_hparams(log_dir: Path, config: dict, metrics: dict) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(str(log_dir / "hparams"))
    with writer.as_default():
        hp.hparams(flat_hparams(config), trial_id=str(config["run"]["name"]))
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(f"test/{key}", float(value), step=0)
    writer.flush()


def load_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise LensnetError(f"cannot resume: {run_dir} has no config.yaml")
    return load_yaml(path, "run config")


