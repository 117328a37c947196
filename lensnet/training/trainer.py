"""One training run, end to end: dataset, run directory, strategy, model, fit, test report.

`run_fit(config)` is what `python -m lensnet.fit` calls; the tuner calls it per trial.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lensnet.artifacts.runs import RunInfo, read_run, write_run
from lensnet.core.config import dump_yaml
from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json, write_text
from lensnet.core.runinfo import package_versions
from lensnet.training.distribute import is_chief

DEFAULT_DATASET_SEED = 0  # the default dataset is the same for every run seed


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict
    info: RunInfo
    seconds: float
    reused: bool = False  # fit_or_resume found the run finished: seconds is 0, not the run's cost


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
        from lensnet.data.writer import print_summary
        from lensnet.simulate.dataset import simulate_dataset

        print(f"no dataset at {path}: simulating the default '{preset}' dataset "
              f"({data['default_num']} records, seed {DEFAULT_DATASET_SEED})", flush=True)
        summary = simulate_dataset(preset, path, num=int(data["default_num"]), seed=DEFAULT_DATASET_SEED,
                                   workers=os.cpu_count() or 1, progress=progress)
        print_summary(summary)
    data["path"] = str(path)
    return open_dataset(path)


def dataset_symmetry(info) -> str:
    """The augmentation that keeps a dataset's symmetry, as its manifest records it (d4 when it does not)."""
    return str((info.manifest.get("config") or {}).get("symmetry") or "d4")


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


def run_fit(config: dict, *, resume: bool = False, progress: bool = True,
            extra_callbacks: Sequence = ()) -> FitResult:
    """Train as `config` says; with `resume`, continue the run named by config.run from its last epoch.

    `extra_callbacks` run after the run's own (e.g. a tuner's per-epoch report that may stop training)."""
    t0 = time.perf_counter()
    import keras
    import tensorflow as tf

    from lensnet.core.runinfo import seed_everything
    from lensnet.data import normalisation_spec
    from lensnet.data.pipeline import reader_error
    from lensnet.tasks.base import task_from_config
    from lensnet.training import callbacks as cb
    from lensnet.training.data import (
        cache_split,
        check_fit_splits,
        eval_batches,
        train_batches,
        train_ids,
        train_records,
        verbosity,
    )
    from lensnet.training.distribute import make_strategy
    from lensnet.training.evaluation import report
    from lensnet.training.model import build_task_model
    from lensnet.training.optim import make_optimizer, peak_learning_rate, schedule_warning

    strategy, strategy_kind = make_strategy(config["distribute"])  # first: devices are fixed at TF start-up
    info = resolve_dataset(config, progress)
    check_fit_splits(config, info)
    if config["data"]["augment"] == "auto":  # config.yaml records the augmentation actually used
        config["data"]["augment"] = dataset_symmetry(info)
    task = task_from_config(config, info)
    train, data, run = config["train"], config["data"], config["run"]
    task.check_data_options(data)
    seed = int(run["seed"])
    monitor = train["monitor"] or f"val_{task.monitor}"
    mode = monitor_mode(monitor, task)
    batch_size = int(data["batch_size"])
    n_train = train_records(info, task, config)  # some classes only (anomaly), or a data.train_fraction subset
    if not n_train:
        raise LensnetError(f"data.train_fraction {data['train_fraction']} of split '{data['train_split']}' of "
                           f"{info.path} holds no record; raise it")
    steps_per_epoch = int(train["steps_per_epoch"] or math.ceil(n_train / batch_size))
    epochs = int(train["epochs"])

    seed_everything(seed, deterministic_ops=bool(run["deterministic"]))
    keras.mixed_precision.set_global_policy("mixed_float16" if train["mixed_precision"] else "float32")
    with strategy.scope():  # before the run directory exists: a model that cannot take the data fails here
        model = build_task_model(task, config, info, init=not resume)  # the model owns its loss, metrics and step
        model.compile(optimizer=make_optimizer(train, steps_per_epoch))

    chief = is_chief()
    run_dir, state = prepare_run(config, resume, write=chief)
    if state:
        with strategy.scope():
            _restore(model, run_dir, state)
            if train["schedule"] == "constant":  # the config's rate, not the checkpoint's (a PBT member's may differ)
                model.optimizer.learning_rate.assign(peak_learning_rate(train))
    initial_epoch = int(state["epochs_done"]) if state else 0
    run_info = RunInfo(
        task=task.name, model=config["model"]["name"],
        input_shape=list(info.image_shape), normalisation=normalisation_spec(data["normalise"], info),
        dataset={"path": str(info.path), "name": info.name, "checksum": info.checksum}, seed=seed,
        epochs_done=initial_epoch, best_epoch=(state or {}).get("best_epoch"), output=task.output_spec().to_json(),
        task_state=task.state(),
    )
    if resume and (run_dir / "run.json").is_file():
        previous = read_run(run_dir)
        if previous.dataset.get("checksum") != info.checksum:
            raise LensnetError(f"cannot resume {run_dir}: its dataset {info.path} changed since the run started")
    if chief:
        write_run(run_dir, run_info)
        seen = train_ids(config, info, task.train_classes())
        if seen is not None:  # the labelled records this run saw, by id
            write_text(run_dir / "train_ids.txt", "".join(f"{i}\n" for i in seen))

    cache = cache_split(config, info, (data["train_split"], data["val_split"]))
    train_ds = train_batches(info, task, config, initial_epoch, cache)
    val_ds = eval_batches(info, task, config, data["val_split"], cache)

    stateful = []
    images_per_epoch = steps_per_epoch * batch_size if train["steps_per_epoch"] else n_train
    callbacks: list = [cb.LearningRateLogger(), cb.ThroughputMeter(images_per_epoch)]
    if int(train["precise_bn_batches"]):  # before the stoppers and checkpoints; after the throughput clock
        from lensnet.training.precise_bn import PreciseBatchNorm

        # in order, unaugmented, the records the model trains on
        calibration = eval_batches(info, task, config, data["train_split"], classes=task.train_classes())
        callbacks.append(PreciseBatchNorm(calibration, int(train["precise_bn_batches"])))
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

    if train["erasing"]["mode"] != "none":  # before the checkpoint: a snapshot is saved before its epoch runs
        from lensnet.training.erasing import attach_erasing

        with strategy.scope():
            callbacks.append(attach_erasing(model, train["erasing"], seed, steps_per_epoch, run_dir, write=chief))
    callbacks.append(cb.RunCheckpoint(run_dir, monitor, mode, stateful, state, on_epoch=on_epoch, write=chief))
    if chief:
        callbacks += task.callbacks(run_dir, info, config, val_ds)
    callbacks += list(extra_callbacks)
    if verbosity(run["verbose"]) == 2:  # output to a file: a line every few seconds, not only per epoch
        callbacks.append(cb.StepLines(epochs, steps_per_epoch))

    if initial_epoch < epochs:
        print(f"training {config['model']['name']} on {info.path} for task {task.name}: epochs "
              f"{initial_epoch + 1}-{epochs}, {steps_per_epoch} steps of {batch_size}, "
              f"{strategy.num_replicas_in_sync} replica(s) ({strategy_kind}); run: {run_dir}", flush=True)
        warmup_warning = schedule_warning(train)
        if warmup_warning:
            print(f"warning: {warmup_warning}", flush=True)
        try:
            if strategy_kind == "multiworker":
                from lensnet.training.custom_loop import fit_distributed

                fit_distributed(model, strategy, task, info, config, initial_epoch, steps_per_epoch, callbacks)
            else:
                model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                          validation_data=val_ds, callbacks=callbacks, verbose=verbosity(run["verbose"]),
                          shuffle=False)
        except tf.errors.OpError as exc:
            raise reader_error(exc, info) from None
        if model.stop_training and chief and _diverged(run_dir):  # history.csv is the chief's
            raise LensnetError(
                f"training diverged (loss became NaN); the last good checkpoint is in {run_dir}/checkpoints. "
                "Lower train.learning_rate or set train.clipnorm"
            )

    from lensnet.tasks.checkpoints import load_model

    metrics = {}
    if chief:  # the chief wrote the checkpoints; the other workers have nothing to report
        best = load_model(run_dir)
        metrics = report(best, task, info, data["test_split"], run_info.normalisation, run_dir,
                         batch_size=batch_size,
                         extra={"best_epoch": run_info.best_epoch, "epochs": epochs, "run": str(run_dir)},
                         tensorboard_dir=run_dir / "logs" / "eval", history_csv=run_dir / "history.csv",
                         n_images=int(run["tensorboard_images"]), progress=progress)
        write_hparams(run_dir / "logs", config, metrics)
        run_info.status = "finished"
        write_run(run_dir, run_info)
    return FitResult(run_dir, metrics, run_info, time.perf_counter() - t0)


def fit_or_resume(config: dict, *, progress: bool = True, log: Callable[[str], None] = print) -> FitResult:
    """run_fit for a job of many runs that may be killed and rerun (studies, benches).

    A finished run of the same config is reused (its metrics.json), one with a checkpoint resumes, one
    killed before its first epoch ends starts again; a directory holding another config is refused,
    since it is not this job's run."""
    import json
    import shutil

    from lensnet.training.config import load_run_config, resume_config

    run_dir = _run_dir(config)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return run_fit(config, progress=progress)
    if not (run_dir / "config.yaml").is_file():  # not a run's directory: nothing here is ours to replace
        raise LensnetError(f"run directory {run_dir} exists and holds no lensnet run; remove it or use another "
                           "--runs-dir")
    if not _same_run(load_run_config(run_dir), config):
        raise LensnetError(f"run directory {run_dir} holds a run of another config; remove it or use another "
                           "--runs-dir")
    if (run_dir / "run.json").is_file() and (run_dir / "metrics.json").is_file():
        info = read_run(run_dir)
        if info.status == "finished":
            log(f"  reusing the finished run {run_dir}")
            return FitResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), info, 0.0, reused=True)
    if (run_dir / "checkpoints" / "state.json").is_file():
        log(f"  resuming {run_dir}")
        return run_fit(resume_config(str(run_dir), {}), resume=True, progress=progress)
    shutil.rmtree(run_dir)  # killed before its first epoch ended: nothing to keep
    return run_fit(config, progress=progress)


def _same_run(saved: dict, config: dict) -> bool:
    """Whether a run's config.yaml is `config` as run_fit writes it (it resolves data.augment: auto and a
    missing data.path to what it used)."""
    import copy

    import yaml

    wanted = yaml.safe_load(dump_yaml(config))
    saved = copy.deepcopy(saved)
    for key in ("augment", "path"):
        if wanted["data"].get(key) in ("auto", None):
            wanted["data"].pop(key, None)
            saved["data"].pop(key, None)
    return saved == wanted


def check_buildable(config: dict) -> None:
    """Build `config`'s model on its dataset without training: a job of many runs calls this for each run
    before the first starts, so a model/method mismatch is one error line, not an hour later."""
    import copy

    import keras

    from lensnet.tasks.base import task_from_config
    from lensnet.training.data import check_fit_splits
    from lensnet.training.model import build_task_model

    config = copy.deepcopy(config)
    info = resolve_dataset(config, progress=False)
    check_fit_splits(config, info)
    if config["data"]["augment"] == "auto":  # as run_fit resolves it
        config["data"]["augment"] = dataset_symmetry(info)
    task = task_from_config(config, info)
    task.check_data_options(config["data"])
    build_task_model(task, config, info, init=False)
    keras.backend.clear_session()


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




def print_result(result: FitResult) -> None:
    """The closing lines of `lensnet.fit`: where the run went and its test figures."""
    run_dir, metrics, info = result.run_dir, result.metrics, result.info
    if not is_chief():
        print(f"\nworker done in {result.seconds:.0f} s; the chief writes the run directory {run_dir}")
        return
    print(f"\nrun {run_dir} finished in {result.seconds:.0f} s (best epoch {info.best_epoch} of {info.epochs_done})")
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    if shown:
        print(f"{metrics.get('split', 'test')}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    for warning in metrics.get("warnings") or ():  # a task's verdict on its own figures (miscalibration...)
        print(f"warning: {warning}")
    for what, path in (("config", "config.yaml"), ("best model", "checkpoints/best.keras"),
                       ("metrics", "metrics.json"), ("plots", "plots/"), ("history", "history.csv")):
        print(f"  {what:11s} {run_dir / path}")
    print(f"  tensorboard tensorboard --logdir {run_dir.parent}")
