"""What the trainer, the multi-worker loop and evaluation share about data: splits, caching,
verbosity, and the prepared (inputs, targets, weights) datasets of a task.

One module so that none of them imports another's private helpers (and no import cycle).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from lensnet.tasks.base import BatchContext, Task, require_splits


def fit_splits(config: dict) -> tuple[str, str, str]:
    """The train, validation and test splits a training run reads (and so requires)."""
    data = config["data"]
    return data["train_split"], data["val_split"], data["test_split"]


def check_fit_splits(config: dict, info: Any) -> None:
    require_splits(info, fit_splits(config))


def verbosity(setting: object) -> int:
    """Keras verbosity: `auto` is a progress bar on a terminal, one line per epoch elsewhere (with
    lensnet's timed step lines in between: `callbacks.StepLines`)."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def cache_split(config: dict, info: Any, splits: Sequence[str]) -> bool:
    """data.cache, with `auto` = cache when the splits fit in data.cache_limit_mb."""
    setting = config["data"]["cache"]
    if setting != "auto":
        return bool(setting)
    record = 4 * sum(math.prod(info.schema[n].shape) for n in info.image_names) + 512
    return sum(info.counts.get(s, 0) for s in splits) * record < float(config["data"]["cache_limit_mb"]) * 2**20


def batches_per_epoch(info: Any, split: str, batch_size: int, classes: Sequence[str] | None = None,
                      count: int | None = None) -> int:
    """Batches `lensnet.data.load` yields for one epoch of `split` (the last one may be short),
    restricted to the records of `classes` when given, or of a known `count` of records."""
    from lensnet.data.pipeline import split_count

    return math.ceil((split_count(info, split, classes) if count is None else count) / batch_size)


def train_subset(config: dict) -> tuple[float, int] | None:
    """(data.train_fraction, data.subset_seed), or None when the whole training split is used."""
    data = config["data"]
    fraction = float(data.get("train_fraction", 1.0))
    return None if fraction >= 1.0 else (fraction, int(data.get("subset_seed", 0)))


_SUBSET_IDS: dict = {}


def train_ids(config: dict, info: Any, classes: Sequence[str] | None = None) -> list[str] | None:
    """The ids of the training subset, of `classes` only when given (None: no `data.train_fraction`
    subset); read once per dataset, subset and classes."""
    from lensnet.data.pipeline import subset_ids

    subset = train_subset(config)
    if subset is None:
        return None
    key = (info.checksum, config["data"]["train_split"], subset, tuple(classes or ()))
    if key not in _SUBSET_IDS:
        _SUBSET_IDS[key] = subset_ids(info, config["data"]["train_split"], *subset, classes=classes)
    return _SUBSET_IDS[key]


def train_records(info: Any, task: Task, config: dict) -> int:
    """Records in one epoch of the training split: the task's training classes only, when it names
    them, and the `data.train_fraction` subset, when there is one."""
    from lensnet.data.pipeline import split_count

    ids = train_ids(config, info, task.train_classes())
    return split_count(info, config["data"]["train_split"], task.train_classes()) if ids is None else len(ids)


def prepared(batches: Any, task: Task, *, seed: int, training: bool, first_epoch: int = 0,
             per_epoch: int | None = None) -> Any:
    """`task.prepare` over a dataset of record batches, each with its BatchContext.

    Training: `batches` is `load(..., first_epoch=k, repeat=True)`, `per_epoch` its batches per
    epoch; the epoch and step of every batch follow from its position, so a resumed run gives
    `prepare` the same contexts as an uninterrupted one. Elsewhere epoch is 0 and step the index.
    """
    import tensorflow as tf

    start = first_epoch * per_epoch if (training and per_epoch) else 0

    def apply(index: tf.Tensor, batch: dict) -> tuple:
        if training and per_epoch:
            epoch, step = index // per_epoch, index % per_epoch
        else:
            epoch, step = tf.constant(0, tf.int64), index
        return task.prepare(batch, BatchContext(seed=int(seed), epoch=epoch, step=step, training=training))

    return batches.enumerate(start=start).map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_batches(info: Any, task: Task, config: dict, initial_epoch: int, cache: bool) -> Any:
    """The prepared training stream from `initial_epoch` on, repeated: the one-device run's global batches."""
    from lensnet.data import load

    data = config["data"]
    batch_size, seed = int(data["batch_size"]), int(config["run"]["seed"])
    if data.get("source") == "simulate":
        return simulated_train_batches(info, task, config, initial_epoch)
    batches = load(info, data["train_split"], batch_size=batch_size, fields=task.fields, shuffle=True,
                   augment=data["augment"], normalise=data["normalise"], seed=seed, first_epoch=initial_epoch,
                   repeat=True, shuffle_buffer=data["shuffle_buffer"], cache=cache, classes=task.train_classes(),
                   subset=train_subset(config))
    return prepared(batches, task, seed=seed, training=True, first_epoch=initial_epoch,
                    per_epoch=batches_per_epoch(info, data["train_split"], batch_size,
                                                count=train_records(info, task, config)))


def stream_steps_per_epoch(info: Any, task: Task, config: dict) -> int:
    """Steps per epoch of a simulated stream: train.steps_per_epoch, or as many as the written training split's."""
    steps = config["train"]["steps_per_epoch"]
    if steps:
        return int(steps)
    return batches_per_epoch(info, config["data"]["train_split"], int(config["data"]["batch_size"]),
                             count=train_records(info, task, config))


def simulated_train_batches(info: Any, task: Task, config: dict, initial_epoch: int) -> Any:
    """The prepared training stream of fresh simulations (data.source simulate), from `initial_epoch` on.

    Batch k of the run (epoch * steps_per_epoch + step) is always the same records, so a resumed run
    sees what an uninterrupted one would; no augmentation (no record is seen twice) and no class filter.
    """
    from lensnet.core.errors import LensnetError
    from lensnet.simulate.stream import simulated_dataset

    data = config["data"]
    if task.train_classes() is not None or train_subset(config) is not None:
        raise LensnetError("data.source simulate streams every class of the simulator: it cannot be combined "
                           "with a task's training classes or data.train_fraction")
    per_epoch = stream_steps_per_epoch(info, task, config)
    batches = simulated_dataset(info, start=data["stream_start"], batch_size=int(data["batch_size"]),
                                first_batch=initial_epoch * per_epoch, workers=int(data["simulate_workers"]),
                                fields=task.fields, normalise=data["normalise"])
    return prepared(batches, task, seed=int(config["run"]["seed"]), training=True, first_epoch=initial_epoch,
                    per_epoch=per_epoch)


def eval_batches(info: Any, task: Task, config: dict, split: str, cache: bool = False,
                 classes: Sequence[str] | None = None) -> Any:
    """The prepared batches of `split` (of `classes` only, when given), in order, unaugmented, with a known length."""
    import tensorflow as tf

    from lensnet.data import load

    data = config["data"]
    batch_size = int(data["batch_size"])
    batches = load(info, split, batch_size=batch_size, fields=task.fields, shuffle=False, augment=None,
                   normalise=data["normalise"], cache=cache, classes=classes)
    # a known length lets Keras end validation without an "input ran out of data" warning
    length = batches_per_epoch(info, split, batch_size, classes)
    batches = batches.apply(tf.data.experimental.assert_cardinality(length))
    return prepared(batches, task, seed=int(config["run"]["seed"]), training=False)
