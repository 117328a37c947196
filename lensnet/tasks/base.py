"""What a task is: the object joining a dataset to a backbone, and the contract every task keeps.

A task says which record fields it reads, turns a batch of records into (x, y, sample_weight)
(`prepare`), BUILDS ITS MODEL (`build`: pooling, heads, and a `TaskModel` that owns the loss and
the training step), names its metrics and monitored quantity, scores and plots predictions, and
declares what its model returns (`output_spec`). Its options are one dataclass (`Config`), the
`task:` section of a run's config; the trainer never reads them. Adding a task is one module in
lensnet/tasks/ with a `@register_task` class (and, optionally, configs/tasks/<name>.yaml).

Life cycle:
    task = TaskClass.from_config(config["task"], config["train"])   # options checked, no data yet
    task.setup(info)                 # training: learn classes / target statistics from the dataset
    task.setup(info, run.task_state) # scoring a finished run: check `info` fits, map its labels
    model = task.build(backbone_factory, info, config)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError

_TASKS: dict[str, type[Task]] = {}

# input shape (H, W, C), **defaults from the data (e.g. scale=2) -> a registry model (keras.Model)
BackboneFactory = Callable[..., Any]


def register_task(cls: type[Task]) -> type[Task]:
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"task {cls.name!r}: Config must be a dataclass")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[tuple[str, str]]:
    return [(name, _TASKS[name].description) for name in sorted(_TASKS)]


def get_task_class(name: str) -> type[Task]:
    if name not in _TASKS:
        raise LensnetError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


@dataclass
class NoOptions:
    """The config section of a task without options."""


@dataclass(frozen=True)
class BatchContext:
    """Where a batch sits in a run: what `prepare` keys per-record randomness on.

    (seed, split, epoch, step) name the same batch in every run of the same config, resumed or
    not, on one machine or many; `random_seed(tag)` is a stateless-op seed for it. Per record,
    fold in the row index, or read the record's own `seed` field (list it in `fields`).
    """

    seed: int  # the run's seed
    epoch: Any  # int64 scalar tensor (0 outside training)
    step: Any  # int64 scalar tensor: the batch's index within its epoch
    training: bool  # True for the training split

    def random_seed(self, tag: int = 0) -> Any:
        """A shape-[2] int64 seed for tf.random.stateless_* ops, distinct per (seed, epoch, step, tag)."""
        import tensorflow as tf

        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.epoch, tf.int64)])
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(self.step, tf.int64))
        return tf.random.experimental.stateless_fold_in(key, tag + (0 if self.training else 1 << 20))


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    monitor: ClassVar[str]  # a metric name logged on the validation split, without the "val_" prefix
    monitor_mode: ClassVar[str]  # max | min
    Config: ClassVar[type] = NoOptions  # the task's config section: a dataclass, defaults included
    fields: tuple[str, ...] = ("image",)
    score_fields: tuple[str, ...] = ()  # per-record fields scoring reads beside `fields` (see record_fields)
    model_kind: ClassVar[str] = "backbone"  # the registry kind `build` needs (lensnet.models.registry.MODEL_KINDS)

    def __init__(self, config: Any = None, train_config: dict | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.train_config = train_config or {}

    # ---- options --------------------------------------------------------------------------
    @classmethod
    def config_defaults(cls) -> dict:
        """The `task:` section this task accepts, with its defaults (name excluded)."""
        return dataclasses.asdict(cls.Config())

    @classmethod
    def from_config(cls, section: dict | None, train_config: dict | None = None) -> Task:
        """A task from its config section (the `name` key is ignored); unknown keys are one-line errors."""
        values = {k: v for k, v in (section or {}).items() if k != "name"}
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LensnetError(f"unknown config key 'task.{unknown[0]}' for task {cls.name}; "
                               f"valid keys: {', '.join(sorted(known)) or 'none'}")
        task = cls(cls.Config(**values), train_config)
        task.check_config()
        return task

    def check_config(self) -> None:
        """Raise LensnetError for an invalid option value (before any data is read)."""

    def check_data_options(self, data_config: dict) -> None:
        """Raise LensnetError if the data options (augmentation...) would corrupt this task's targets."""

    # ---- data -----------------------------------------------------------------------------
    def setup(self, info: Any, state: dict | None = None) -> None:
        """Bind the task to a dataset. Without `state` (training) learn what the task needs from `info`;
        with a finished run's `state` (scoring) check that `info` can be scored and map its labels.
        Never demand splits: the command that reads a split checks it."""

    def state(self) -> dict:
        """What `setup` learned from the training dataset (JSON-able; run.json "task_state")."""
        return {}

    def train_classes(self) -> list[str] | None:
        """The classes the training split is restricted to (the reader filters the records; steps per
        epoch follow their count); None trains on every record. Validation and test read every record."""
        return None

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        """TF: a batch of records -> (inputs, targets, sample_weight) for the task model's step."""
        raise NotImplementedError

    # ---- model ----------------------------------------------------------------------------
    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        """The task model (a lensnet.tasks.model.TaskModel): backbone(s), pooling, heads, loss, step."""
        raise NotImplementedError

    def metrics(self) -> list:
        """Fresh Keras metrics, updated with the MetricInputs of the task model's `compute_step`."""
        return []

    def callbacks(self, run_dir: Path, info: Any, config: dict, val_batches: Any) -> list:
        """Extra Keras callbacks the chief adds to training, in both training paths: figures of the
        training model itself each epoch (MAE reconstructions, super-resolution panels of fixed
        validation examples in TensorBoard under run_dir/logs). `val_batches` are the prepared
        (x, y, w) validation batches. None by default."""
        return []

    # ---- scoring --------------------------------------------------------------------------
    def targets(self, batch: dict) -> np.ndarray:
        """NumPy: the ground truth of a batch of records, in the form `score` takes."""
        raise NotImplementedError

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        """Test metrics as plain floats/lists (JSON-able), never a silent NaN."""
        raise NotImplementedError

    def record_fields(self, batch: dict) -> dict[str, np.ndarray]:
        """NumPy: the `score_fields` of a batch of records that `score_records` breaks metrics down by."""
        return {name: np.asarray(batch[name]) for name in self.score_fields if name in batch}

    def score_records(self, y_true: np.ndarray, y_pred: np.ndarray, records: dict[str, np.ndarray]) -> dict:
        """`score`, with the split's per-record fields (`record_fields`, concatenated) at hand."""
        return self.score(y_true, y_pred)

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        """Write this task's PNG plots; return {name: path}."""
        return {}

    def example_figures(self, model: Any, images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        """Extra figures drawn from the scored inference `model` and the first test `images`
        (reconstructions...): {name: matplotlib figure}; saved as plots and TensorBoard images."""
        return {}

    def describe(self, y_pred_row: np.ndarray) -> str:
        """Short text for one prediction (sample-image titles)."""
        return ""

    def truth(self, y_true_row: Any) -> str:
        """Short text for one true value (sample-image titles), as the output kind words it."""
        spec = self.output_spec()
        return spec.handler.truth_label(spec, y_true_row)

    def output_spec(self) -> OutputSpec:
        """What the trained model returns (stored in run.json and the export card)."""
        raise NotImplementedError

    def monitor_value(self, metrics: dict) -> float | None:
        """The monitored quantity as computed by `score` (used to rank tuning trials)."""
        return metrics.get(self.monitor)


def require_splits(info: Any, splits: Sequence[str]) -> None:
    """The command reading `splits` of `info` checks them: an empty or missing one is a one-line error."""
    for split in splits:
        if not info.counts.get(split):
            raise LensnetError(f"dataset {info.path}: split '{split}' is empty or missing")


def pooled_network(backbone_factory: BackboneFactory, input_shape: Sequence[int], head: Callable[[Any], Any],
                   *, dropout: float = 0.0, name: str = "task", pooling: str | None = None) -> Any:
    """images -> backbone -> pool_features -> dropout -> head(pooled): the functional network of most tasks."""
    import keras

    from lensnet.models.pooling import pool_features

    backbone = backbone_factory(tuple(input_shape))
    inputs = keras.Input(tuple(input_shape), name="images")
    features = pool_features(backbone, backbone(inputs), pooling)
    if dropout:
        features = keras.layers.Dropout(float(dropout), name="head_dropout")(features)
    return keras.Model(inputs, head(features), name=name)


def task_from_config(config: dict, info: Any, state: dict | None = None) -> Task:
    """The task of a resolved fit config, set up on `info` (training, or scoring with a run's `state`)."""
    task = get_task_class(config["task"]["name"]).from_config(config["task"], config.get("train"))
    task.setup(info, state)
    return task
