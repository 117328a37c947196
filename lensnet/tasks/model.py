"""The task model: a network that owns its loss and its training step.

`Task.build` returns a `TaskModel`. Its `compute_step(x, y, sample_weight, training,
global_batch_size)` is the ONE place where a task's loss is computed: Keras' `train_step` /
`test_step` below call it with the local batch (one device, or each replica of a
MirroredStrategy), and the multi-worker loop (lensnet.training.custom_loop) calls it inside
`strategy.run` with the global batch size. A task with its own objective (two losses, two views,
a teacher) overrides `compute_step` only; the trainers never change (keras-io's Distiller, MAE
and SimCLR examples show the pattern).

`network` is a functional model from normalised images to the task's outputs: one tensor, or a
dict of them when training needs more than the prediction (a reconstruction branch...). The
exported, evaluated and served model is `inference_model()`: `network` cut at `output`, the
plain inference function; branches used only by the loss are never exported.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf


class MetricInputs(NamedTuple):
    """What the task's metrics are updated with: (y_true, y_pred, sample_weight or None = unweighted)."""

    y_true: Any
    y_pred: Any
    sample_weight: Any = None


def average_loss(per_example: tf.Tensor, global_batch_size: Any = None) -> tf.Tensor:
    """Sum of per-example losses / global batch size: replicas' losses then sum to the global mean.

    global_batch_size=None takes the local batch times the replicas in sync (Keras' own scaling
    under MirroredStrategy); the multi-worker loop passes the true global size, since its
    replicas' slices of a last, short batch may differ in size.
    """
    per_example = tf.cast(per_example, tf.float32)
    if per_example.shape.rank and per_example.shape.rank > 1:
        per_example = tf.reduce_mean(tf.reshape(per_example, [tf.shape(per_example)[0], -1]), axis=1)
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)


@keras.saving.register_keras_serializable(package="lensnet")
class TaskModel(keras.Model):
    """Base class of task models. Subclasses implement `compute_step`.

    Args:
        network: functional model, images -> outputs (a tensor or a dict of tensors).
        output: the key of the inference output when `network` returns a dict; None otherwise.
        metrics_list: the task's Keras metrics, updated with `compute_step`'s MetricInputs (not saved:
            a loaded model is for inference; training rebuilds the model through `Task.build`).
    """

    def __init__(self, network: keras.Model, output: str | None = None,
                 metrics_list: Sequence[keras.metrics.Metric] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = network
        self.output_key = output
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_metrics = list(metrics_list)
        self.built = network.built  # every weight lives in the (functional, built) network
        # Training-only input transforms (lensnet.training.erasing), untracked: never saved or exported.
        self.hooks = types.SimpleNamespace(inputs=[])

    # ---- inference ------------------------------------------------------------------------
    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.select(self.network(inputs, training=training))

    def select(self, outputs: Any) -> Any:
        """The inference output among the network's outputs."""
        return outputs if self.output_key is None else outputs[self.output_key]

    def inference_model(self) -> keras.Model:
        """The plain functional inference model (shares the weights): what best.keras and exports hold."""
        if self.output_key is None:
            return self.network
        return keras.Model(self.network.inputs, self.network.output[self.output_key], name=self.network.name)

    # ---- training -------------------------------------------------------------------------
    def add_input_hook(self, hook: Callable[[Any, Any], Any]) -> None:
        """`hook(x, global_step) -> x` transforms every training batch before `compute_step`."""
        self.hooks.inputs.append(hook)

    def training_inputs(self, x: Any) -> Any:
        """A training batch's inputs after the input hooks (what the trainers pass to `compute_step`)."""
        for hook in self.hooks.inputs:
            x = hook(x, self.optimizer.iterations)
        return x

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        """(loss, metric inputs) of one batch; the loss is scaled by `average_loss(..., global_batch_size)`
        and includes the layers' regularization losses (`regularization()`).

        Always apply `sample_weight` to the per-example losses: besides the task's own weights it
        zeroes the padding rows the multi-worker loop adds when a short last batch leaves a
        replica without records.
        """
        raise NotImplementedError

    def regularization(self) -> tf.Tensor | float:
        """The layers' added losses (weight penalties), scaled for the replicas like the main loss."""
        if not self.losses:
            return 0.0
        return tf.nn.scale_regularization_loss(tf.add_n([tf.cast(v, tf.float32) for v in self.losses]))

    def update_task_metrics(self, inputs: MetricInputs, metrics: Sequence[keras.metrics.Metric] | None = None,
                            extra_weight: Any = None) -> None:
        """Update `metrics` (default: this model's) with `inputs`; `extra_weight` multiplies the weights."""
        weight = inputs.sample_weight
        if extra_weight is not None:
            weight = extra_weight if weight is None else weight * extra_weight
        for metric in self.task_metrics if metrics is None else metrics:
            metric.update_state(inputs.y_true, inputs.y_pred, sample_weight=weight)

    def train_step(self, data: Any) -> dict:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = self.training_inputs(x)
        with tf.GradientTape() as tape:
            loss, metric_inputs = self.compute_step(x, y, sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._log(x, loss, metric_inputs, training=True)

    def test_step(self, data: Any) -> dict:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        loss, metric_inputs = self.compute_step(x, y, sample_weight, training=False)
        return self._log(x, loss, metric_inputs, training=False)

    def split_metrics(self, training: bool) -> list:
        """The task metrics a split reports. A metric with `validation_only = True` (an anomaly AUC,
        undefined on a one-class training split) is left out of training logs, never logged as 0 or NaN."""
        return [m for m in self.task_metrics if not (training and getattr(m, "validation_only", False))]

    def _log(self, x: Any, loss: tf.Tensor, metric_inputs: MetricInputs, training: bool) -> dict:
        # as Keras' own step: the tracker sees this replica's mean loss, weighted by its batch size
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self.loss_tracker.update_state(loss * replicas, sample_weight=batch)
        metrics = self.split_metrics(training)
        self.update_task_metrics(metric_inputs, metrics)
        return {m.name: m.result() for m in (self.loss_tracker, *metrics)}

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, *self.task_metrics]

    # ---- serialization --------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "network": keras.saving.serialize_keras_object(self.network), "output": self.output_key}

    @classmethod
    def from_config(cls, config: dict) -> TaskModel:
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="lensnet")
class SupervisedModel(TaskModel):
    """One prediction, one Keras loss on (y, prediction), weighted per example.

    Args:
        loss: a Keras loss; it is applied per example (reduction "none") and averaged by `average_loss`.
        weighted_metrics: pass the sample weights to the metrics too (regression: NaN targets weigh 0);
            classification metrics stay unweighted by class weights.
    """

    def __init__(self, network: keras.Model, loss: keras.losses.Loss | dict, weighted_metrics: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(network, **kwargs)
        loss = keras.losses.get(loss)
        self.loss_fn = type(loss).from_config({**loss.get_config(), "reduction": "none"})
        self.weighted_metrics = bool(weighted_metrics)

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        y_pred = self(x, training=training)
        per_example = self.loss_fn(y, y_pred, sample_weight=sample_weight)
        loss = average_loss(per_example, global_batch_size) + self.regularization()
        return loss, MetricInputs(y, y_pred, sample_weight if self.weighted_metrics else None)

    def get_config(self) -> dict:
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss_fn),
                "weighted_metrics": self.weighted_metrics}
