"""Callbacks that make a run resumable and visible: checkpoints + state, LR logging, resumable stoppers."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

from lensnet.core import progress
from lensnet.core.fileio import write_json

STATE = "checkpoints/state.json"


def learning_rate(model: keras.Model) -> float:
    optimizer = model.optimizer
    lr = optimizer.learning_rate
    if callable(getattr(optimizer, "_learning_rate", None)):  # a schedule: evaluate at the current step
        lr = optimizer._learning_rate(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` to the epoch logs (CSV history, TensorBoard, epoch lines)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = learning_rate(self.model)


class ThroughputMeter(keras.callbacks.Callback):
    """Adds `train_images_per_second`: images over the training part of an epoch.

    The window runs from the epoch's start to the start of validation (or the epoch's
    end without validation), so validation and checkpointing stay outside. No batch-level
    hook is used: one would make Keras hand over the logs, and sync the device, every step.
    """

    def __init__(self, images_per_epoch: int) -> None:
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._start: float | None = None
        self._end: float | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._end = time.perf_counter(), None

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._start is not None and self._end is None:
            self._end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        end = self._end or time.perf_counter()
        if logs is not None and self._start is not None and end > self._start:
            logs["train_images_per_second"] = self.images_per_epoch / (end - self._start)
        self._start = None


class StepLines(keras.callbacks.Callback):
    """A flushed `epoch 2/3: 120/225 step (53%), 1.9 step/s, ETA 55 s, loss 0.412` line every few
    seconds within an epoch, for output that goes to a file: there Keras prints one line per epoch
    (`verbose=2`), and an epoch on a CPU can take many minutes without a sign of life. Synchronous, as
    Keras' own progress bar on a terminal: its batch hook reads the loss every step."""

    def __init__(self, epochs: int, steps: int, every: float | None = None) -> None:
        super().__init__()
        self.epochs, self.steps = int(epochs), int(steps)
        self.every = progress.DEFAULT_EVERY_SECONDS if every is None else float(every)
        self._bar: progress.Progress | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._bar = progress.Progress(self.steps, f"epoch {epoch + 1}/{self.epochs}", unit="step",
                                      stream=sys.stdout, every=self.every)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._bar is not None:
            loss = _plain((logs or {}).get("loss"))
            self._bar.postfix = "" if loss is None else f"loss {loss:.4g}"
            self._bar.update(1)

    def on_test_begin(self, logs: dict | None = None) -> None:  # the training steps are over
        self._close()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.enabled = False  # the epoch line follows; a last step line would repeat it
            self._bar.close()
            self._bar = None


class _Resumable:
    """Mixin: restore the listed counters after Keras resets them in on_train_begin; report them."""

    state_keys: tuple[str, ...] = ()

    def __init__(self, state: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._initial = state or {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        for key in self.state_keys:
            if self._initial.get(key) is not None:
                setattr(self, key, self._initial[key])

    def state(self) -> dict:
        return {key: _plain(getattr(self, key)) if key == "best" else int(getattr(self, key))
                for key in self.state_keys}


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    state_keys = ("wait", "best", "best_epoch")


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    state_keys = ("wait", "best", "cooldown_counter")


def _plain(value: object) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def inference_model(model: keras.Model) -> keras.Model:
    """A task model's exported part (`TaskModel.inference_model`), or the model itself."""
    cut = getattr(model, "inference_model", None)
    return cut() if callable(cut) else model


def save_model_atomically(model: keras.Model, path: Path) -> None:
    """Keras insists on a `.keras` suffix, so the temporary name keeps it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class RunCheckpoint(keras.callbacks.Callback):
    """After every epoch: last.keras, best.keras when the monitor improved, and state.json.

    state.json holds what a resumed run needs beyond the model and optimizer: the
    epoch count, the best monitored value, and the states of the stateful callbacks.
    It is written last, so it never points at a checkpoint that is not complete.
    """

    def __init__(self, run_dir: Path, monitor: str, mode: str, stateful: list, state: dict | None = None,
                 on_epoch: object = None, write: bool = True) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.mode = mode
        self.stateful = stateful
        state = state or {}
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.on_epoch = on_epoch
        self.write = write  # False on non-chief workers of a multi-worker run

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not np.isfinite(logs.get("loss", 0.0)):
            # checked per epoch, not per batch: a per-batch check syncs the device every step
            self.model.stop_training = True
            return
        value = logs.get(self.monitor)
        improved = value is not None and np.isfinite(value) and self._improved(float(value))
        if improved:
            self.best, self.best_epoch = float(value), epoch + 1
        if not self.write:
            return
        checkpoints = self.run_dir / "checkpoints"
        # last: the whole task model with its optimizer (what --resume needs); best: the plain inference
        # model (what evaluate, export and predict load: no training-only branch, no task class to import)
        save_model_atomically(self.model, checkpoints / "last.keras")
        if improved or not (checkpoints / "best.keras").exists():
            save_model_atomically(inference_model(self.model), checkpoints / "best.keras")
        write_json(self.run_dir / STATE, {
            "epochs_done": epoch + 1,
            "monitor": self.monitor,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "learning_rate": learning_rate(self.model),
            "callbacks": {type(cb).__name__: cb.state() for cb in self.stateful},
        })
        if callable(self.on_epoch):
            self.on_epoch(epoch + 1, self.best_epoch)


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
