"""What a task is: the small object joining a dataset to a backbone.

A task says which record fields are inputs and targets, turns a batch of
records into (x, y, sample_weight), adds the head, and names the loss, the
metrics logged during training, the monitored quantity, and how to score and
plot predictions. Adding a task never means editing the trainer: register a
subclass with `@register_task`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lensnet.errors import LensnetError
from lensnet.tasks.outputs import OutputSpec

TASK_DEFAULTS: dict[str, Any] = {
    "name": None,
    "positive_class": None,  # lens_finding: which class is "positive" (default "lens")
    "target": None,  # regression: any stored parameter, by name
    "loss": None,  # regression: mse | huber | mae (default mse)
}

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[tuple[str, str]]:
    return [(name, _TASKS[name].description) for name in sorted(_TASKS)]


def get_task_class(name: str) -> type[Task]:
    if name not in _TASKS:
        raise LensnetError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    output_kind: ClassVar[str]  # binary | multiclass | regression
    monitor: ClassVar[str]  # a metric name logged on the validation split, without the "val_" prefix
    monitor_mode: ClassVar[str]  # max | min
    fields: tuple[str, ...]

    def __init__(self, config: dict, info: Any, train_config: dict | None = None) -> None:
        self.config = config
        self.train_config = train_config or {}
        self.check_dataset(info)

    # ---- contract -----------------------------------------------------------------------
    def check_dataset(self, info: Any) -> None:
        """Raise LensnetError if `info` (a DatasetInfo) cannot serve this task."""
        raise NotImplementedError

    def check_data_options(self, data_config: dict) -> None:
        """Raise LensnetError if the data options (augmentation...) would corrupt this task's targets."""

    def prepare(self, batch: dict) -> tuple:
        """TF: a batch of records -> (images, targets, sample_weight)."""
        raise NotImplementedError

    def head(self, features: Any) -> Any:
        """Keras: backbone features -> outputs (float32, see lensnet.runs for the semantics)."""
        raise NotImplementedError

    def loss(self) -> Any:
        raise NotImplementedError

    def metrics(self) -> list:
        raise NotImplementedError

    def targets(self, batch: dict) -> np.ndarray:
        """NumPy: the ground truth of a batch of records, in the form `score` takes."""
        raise NotImplementedError

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        """Test metrics as plain floats/lists (JSON-able), never a silent NaN."""
        raise NotImplementedError

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        """Write this task's PNG plots; return {name: path}."""
        raise NotImplementedError

    def describe(self, y_pred_row: np.ndarray) -> str:
        """Short text for one prediction (sample-image titles)."""
        raise NotImplementedError

    def output_spec(self) -> OutputSpec:
        """What the trained model returns (stored in run.json and the export card)."""
        raise NotImplementedError

    def run_fields(self) -> dict:
        """RunInfo fields this task fills: class_names, positive_class, target."""
        return {}

    def monitor_value(self, metrics: dict) -> float | None:
        """The monitored quantity as computed by `score` (used to rank tuning trials)."""
        return metrics.get(self.monitor)


def require_splits(info: Any, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    for split in splits:
        if not info.counts.get(split):
            raise LensnetError(f"dataset {info.path}: split '{split}' is empty or missing")


TaskFactory = Callable[..., Task]
