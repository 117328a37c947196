"""Training through `strategy.run`: the multi-worker path of `lensnet.fit`.

Keras 3.15's `model.fit` fails under `MultiWorkerMirroredStrategy` ("Attempt to convert a
value (PerReplica...) to a Tensor", keras-team/keras#20585), while the same compiled model
trains correctly through a custom step. `fit_distributed` is that step plus an epoch loop
that drives the trainer's callbacks the way `model.fit` does, so checkpoints, stoppers,
history.csv and TensorBoard see the same log names on both paths.

The step is the task model's own: `model.compute_step(x, y, w, training, global_batch_size)`
(lensnet.tasks.model.TaskModel), the same method Keras' `train_step` calls on one machine. This
module holds no loss: it scales by the global batch, applies the gradients, and keeps workers in
agreement.

Data: each worker reads the same deterministic stream of *global* batches as a one-device
run (`lensnet.data.load`, keyed by seed and epoch) and keeps only the slices of its own
replicas. A multi-worker run therefore trains on exactly the batches and augmentations of a
one-device run, and a resumed run replays them from its epoch. The price is that every
worker decodes every record; `load` has no record-level shard option to avoid it.

Agreement between workers, which must be exact or the collectives deadlock:
gradients are summed by the Keras optimizer; BatchNormalization moving statistics are not
(Keras 3 creates them with aggregation NONE, so every replica keeps its own) and are
averaged at the end of each epoch; validation runs on every worker alone over the whole
split, and the chief's epoch logs are broadcast, so every worker's callbacks take the same
decisions (stop, reduce the learning rate) at the same epoch.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lensnet.core.errors import LensnetError
from lensnet.tasks.base import Task
from lensnet.tasks.model import MetricInputs
from lensnet.training.data import cache_split, eval_batches, train_batches, verbosity
from lensnet.training.distribute import is_chief

SUM, MEAN = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN


def fit_distributed(model: keras.Model, strategy: tf.distribute.Strategy, task: Task, info: Any, config: dict,
                    initial_epoch: int, steps_per_epoch: int, callbacks: list) -> None:
    """Train `model` (built and compiled in `strategy.scope()`) for epochs initial_epoch..train.epochs.

    Call it outside `strategy.scope()`: the metric objects it creates must be plain local
    variables, since validation runs on each worker alone.
    """
    if tf.distribute.has_strategy():
        raise RuntimeError("fit_distributed must be called outside strategy.scope()")
    data, train, run = config["data"], config["train"], config["run"]
    epochs = int(train["epochs"])
    verbose = verbosity(run["verbose"]) > 0
    cache = cache_split(config, info, (data["train_split"], data["val_split"]))
    optimizer = model.optimizer
    with strategy.scope():  # variables created lazily inside strategy.run would be per-replica
        if not optimizer.built:
            optimizer.build(model.trainable_variables)

    dataset_fn = train_dataset_fn(info, task, config, initial_epoch, cache)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    val_ds = eval_batches(info, task, config, data["val_split"], cache)

    train_loss, val_loss = keras.metrics.Mean(name="loss"), keras.metrics.Mean(name="loss")
    train_metrics, val_metrics = local_metrics(model, training=True), local_metrics(model, training=False)
    train_step = _make_train_step(model, strategy, train_loss, train_metrics)
    val_step = _make_val_step(model, val_loss, val_metrics)
    moving = [v for v in model.non_trainable_variables if keras.backend.is_float_dtype(v.dtype)]
    average_moving = _make_average(strategy, moving)
    broadcast = _make_broadcast(strategy)

    printer = [EpochLine(epochs)] if verbose else []  # last, so it sees what the others added to the logs
    callback_list = keras.callbacks.CallbackList([*callbacks, *printer], add_history=True, model=model,
                                                 epochs=epochs, steps=steps_per_epoch, verbose=0)
    model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs: dict = {}
    epoch = initial_epoch
    try:
        for epoch in range(initial_epoch, epochs):
            for metric in (train_loss, *train_metrics):
                metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                callback_list.on_train_batch_end(step, {"loss": train_step(iterator)})
                if model.stop_training:  # callbacks see the all-reduced loss: every worker stops here
                    break
            epoch_logs = {"loss": train_loss.result(), **{m.name: m.result() for m in train_metrics}}
            if moving:
                average_moving()
            callback_list.on_test_begin()
            val_logs = evaluate(val_step, val_ds, val_loss, val_metrics)
            callback_list.on_test_end(val_logs)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
            epoch_logs = agree_with_chief(broadcast, epoch_logs)
            callback_list.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as exc:  # a collective lost a peer
        raise lost_worker(exc, Path(run["dir"]) / str(run["name"]), epoch) from None
    optimizer.finalize_variable_values(model.trainable_variables)
    callback_list.on_train_end(epoch_logs)
    if verbose:  # lets a user (and the tests) check that the workers ended in the same state
        print(f"weights sha256 {weights_digest(model.weights)}, optimizer sha256 "
              f"{weights_digest(optimizer.variables)} (the same on every worker)", flush=True)


def lost_worker(exc: tf.errors.OpError, run_dir: Path, epoch: int) -> LensnetError:
    """A one-line error naming the unreachable workers, instead of the trainer's "reading dataset failed"."""
    tasks = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", getattr(exc, "message", "") or str(exc))))
    who = ", ".join(tasks) if tasks else "another worker"
    return LensnetError(f"multi-worker training stopped in epoch {epoch + 1}: {who} failed or cannot be reached. "
                        f"Restart every worker with --resume {run_dir} to continue from the last completed epoch")


def train_dataset_fn(info: Any, task: Task, config: dict, initial_epoch: int,
                     cache: bool) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The `dataset_fn` of `distribute_datasets_from_function`: this input pipeline's replica slices
    of the global batches that a one-device run from `initial_epoch` reads."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batches = train_batches(info, task, config, initial_epoch, cache)
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local
        return (batches
                .flat_map(lambda x, y, w: replica_slices(x, y, w, first, local, context.num_replicas_in_sync))
                .prefetch(tf.data.AUTOTUNE))

    return dataset_fn


def replica_slices(x: Any, y: Any, w: tf.Tensor, first: int, count: int, replicas: int) -> tf.data.Dataset:
    """The slices of one global batch for replicas first..first+count-1 of `replicas`, as
    (x, y, weight, valid, global_batch_size) elements.

    Slice r holds rows [r*n//R, (r+1)*n//R). An empty slice (a final batch with fewer records
    than replicas) is one copy of row 0 with weight and `valid` 0: zero rows would give
    BatchNormalization NaN batch statistics, and every replica must still take the step.
    """
    n = tf.shape(w)[0]

    def piece(r: tf.Tensor) -> tuple:
        r = tf.cast(r, tf.int32)
        start, stop = r * n // replicas, (r + 1) * n // replicas
        empty = tf.equal(start, stop)
        index = tf.cond(empty, lambda: tf.zeros([1], tf.int32), lambda: tf.range(start, stop))
        valid = tf.fill(tf.shape(index), 1.0 - tf.cast(empty, tf.float32))

        def take(t: tf.Tensor) -> tf.Tensor:
            return tf.gather(t, index)

        return tf.nest.map_structure(take, x), tf.nest.map_structure(take, y), take(w) * valid, valid, n

    return tf.data.Dataset.range(first, first + count).map(piece)


def local_metrics(model: keras.Model, training: bool) -> list:
    """Fresh copies of the task model's metrics for a split, as plain local variables (created outside any
    strategy)."""
    return [type(m).from_config(m.get_config()) for m in model.split_metrics(training)]


def _make_train_step(model: keras.Model, strategy: tf.distribute.Strategy, loss_metric: keras.metrics.Metric,
                     metrics: list):
    optimizer = model.optimizer
    trainable = model.trainable_variables
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y, w, valid, n):
        x = model.training_inputs(x)  # input hooks (train.erasing), outside the tape
        with tf.GradientTape() as tape:
            loss, metric_inputs = model.compute_step(x, y, w, training=True, global_batch_size=n)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, trainable)
        context = tf.distribute.get_replica_context()
        if loss_scaled:
            grads = _skip_together(grads, context)
        optimizer.apply_gradients(zip(grads, trainable))
        # every worker gets the whole global batch's metric inputs, so train metrics are global and identical
        y_true, y_pred, weight = metric_inputs
        weight = valid if weight is None else weight * valid
        gathered = _gather_batch(context, (y_true, y_pred, weight, valid), valid, n)
        return context.all_reduce(SUM, loss), gathered

    @tf.function
    def train_step(iterator) -> tf.Tensor:
        result = strategy.run(replica_step, args=next(iterator))
        loss, (y, y_pred, w, valid) = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                                            result)
        loss_metric.update_state(loss, sample_weight=tf.reduce_sum(valid))
        model.update_task_metrics(MetricInputs(y, y_pred, w), metrics)
        return loss_metric.result()

    return train_step


def _gather_batch(context: tf.distribute.ReplicaContext, values: Any, valid: tf.Tensor, n: tf.Tensor) -> Any:
    """Reassemble the global batch from the replicas' slices (as `replica_slices` cut it).

    `ReplicaContext.all_gather` fails under MultiWorkerMirroredStrategy inside tf.function
    ("destinations can not be empty"), so each replica writes its rows into a zero batch
    and the batches are summed: adding zeros is exact.
    """
    replicas = context.num_replicas_in_sync
    start = context.replica_id_in_sync_group * n // replicas
    keep = valid > 0
    rows = tf.minimum(start + tf.range(tf.shape(valid)[0]), n - 1)[:, None]  # a padding row may sit at n

    def place(t: tf.Tensor) -> tf.Tensor:
        mask = tf.reshape(keep, [-1] + [1] * (t.shape.rank - 1))
        t = tf.where(mask, t, tf.zeros_like(t))  # where, not multiply: a padding row's prediction may be NaN
        return tf.scatter_nd(rows, t, tf.concat([[n], tf.shape(t)[1:]], 0))

    return context.all_reduce(SUM, tf.nest.map_structure(place, values))


def _skip_together(grads: list, context: tf.distribute.ReplicaContext) -> list:
    """Make every replica see non-finite gradients when any replica does.

    LossScaleOptimizer skips a step (no all-reduce) when its *local* scaled gradients
    overflow; if one worker skipped and another did not, their collectives would no longer
    match and training would hang.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    overflowed = context.all_reduce(SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflowed > 0, float("nan"), 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def _make_val_step(model: keras.Model, loss_metric: keras.metrics.Metric, metrics: list):
    @tf.function(reduce_retracing=True)
    def val_step(x, y, w) -> None:
        # outside any strategy: the loss is this batch's mean, what Keras' evaluate logs per batch
        loss, metric_inputs = model.compute_step(x, y, w, training=False)
        loss_metric.update_state(loss, sample_weight=tf.shape(w)[0])
        model.update_task_metrics(metric_inputs, metrics)

    return val_step


def evaluate(val_step: Callable[..., None], dataset: tf.data.Dataset, loss_metric: keras.metrics.Metric,
             metrics: list) -> dict:
    """Loss and task metrics of the whole split on this worker alone (no collectives)."""
    for metric in (loss_metric, *metrics):
        metric.reset_state()
    for x, y, w in dataset:
        val_step(x, y, w)
    return {"loss": loss_metric.result(), **{m.name: m.result() for m in metrics}}


def _make_average(strategy: tf.distribute.Strategy, variables: list):
    @tf.function
    def average() -> None:
        def replica_fn() -> None:
            # tensors, not the variables: reducing a variable asks for its devices, which are unset here
            local = [tf.identity(v.value) for v in variables]
            means = tf.distribute.get_replica_context().all_reduce(MEAN, local)
            for variable, mean in zip(variables, means):
                variable.assign(mean)

        strategy.run(replica_fn)

    return average


def agree_with_chief(broadcast: Callable[[tf.Tensor], tf.Tensor], logs: dict) -> dict:
    """The chief's epoch logs on every worker (replica 0 lives on the chief).

    Every worker computes the same values when its weights are the same; broadcasting makes
    the callbacks' decisions identical even if they are not, and a difference is reported.
    """
    names = list(logs)  # built in the same order on every worker
    own = np.array([float(keras.ops.convert_to_numpy(logs[k])) for k in names], np.float32)
    chief = broadcast(tf.constant(own)).numpy()
    differ = [k for k, a, b in zip(names, own, chief) if not (a == b or (np.isnan(a) and np.isnan(b)))]
    if differ and not is_chief():
        print(f"warning: this worker's {', '.join(differ)} differ from the chief's: replicas have diverged; "
              "using the chief's values", flush=True)
    return {k: float(v) for k, v in zip(names, chief)}


def _make_broadcast(strategy: tf.distribute.Strategy):
    @tf.function
    def broadcast(values: tf.Tensor) -> tf.Tensor:
        def replica_fn() -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return context.all_reduce(SUM, tf.where(first, values, tf.zeros_like(values)))

        return strategy.experimental_local_results(strategy.run(replica_fn))[0]

    return broadcast


class EpochLine(keras.callbacks.Callback):
    """One line per epoch, like `model.fit(verbose=2)`."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        items = " - ".join(f"{k}: {v:.4g}" for k, v in (logs or {}).items())
        print(f"epoch {epoch + 1}/{self.epochs} - {time.perf_counter() - self._start:.1f} s - {items}", flush=True)


def weights_digest(variables: list) -> str:
    """SHA-256 (first 16 hex digits) of the values of `variables`, in order."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()[:16]
