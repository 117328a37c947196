"""Precise BatchNorm: moving statistics that reflect the trained weights (lensnet issue 8).

BatchNormalization normalises a training batch by its own statistics but an
inference batch by moving averages updated with `momentum` at every step. When
the weights change fast and epochs are short (57 steps an epoch with Keras's
momentum 0.99 averages over ~100 steps), those averages lag the weights that
validation, checkpoints and exports use: a model at training AUC 0.99 then
gives constant outputs in inference mode. Recalibrating replaces the averages by
the population statistics of the current weights: every BatchNormalization
layer gets the average of its batch statistics over a fixed set of training
batches (fvcore's `update_bn_stats` idea; Wu & Johnson 2021, "Rethinking
'Batch' in BatchNorm").

The statistics are computed directly: each layer's momentum is set to 0 for the
pass, so after a training-mode forward pass its moving mean/variance *are* that
batch's mean/variance; they are read, averaged (weighted by batch size, in
float64, in the batches' order: deterministic) and assigned. Nothing else
changes: momentum is restored, and so is every other non-trainable variable the
training-mode pass may advance (dropout seed generators), so the training RNG
stream of the run, and with it `--resume`, are unaffected. Trainable weights
are only read.

Distribution: the pass runs in cross-replica context on whole batches, and the
final values are assigned there, which writes the same values to every replica
of a mirrored variable (Keras creates the moving statistics with aggregation
NONE, so each replica otherwise keeps its own). Under MultiWorkerMirroredStrategy
every worker must be given the same batches (lensnet's workers all read the same
global stream) and then computes the same values without any collective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lensnet.core.errors import LensnetError


def batch_norm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer that a training-mode call updates, at any depth.

    Nested backbones and layers inside keras-hub blocks included; frozen layers
    (`trainable=False` keeps them in inference mode), unbuilt ones and batch
    renormalisation (its own update rule) are left alone.
    """
    found, seen = [], set()
    # Keras has no public recursive walk over sub-layers (`model.layers` is one level only).
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if (
            isinstance(layer, keras.layers.BatchNormalization)
            and id(layer) not in seen
            and layer.trainable
            and layer.built
            and not layer.renorm
        ):
            seen.add(id(layer))
            found.append(layer)
    return found


def _model_inputs(batch: Any) -> Any:
    # Keras-style batches: (x,), (x, y) or (x, y, sample_weight); anything else is x itself.
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def recalibrate_batch_norm(model: keras.Model, batches: Iterable[Any], num_batches: int) -> int:
    """Set every BatchNormalization layer's moving mean/variance to the average batch statistics.

    Args:
        model: a built Keras model (a task model, a backbone, or any layer tree).
        batches: training batches in a fixed order, without augmentation: a
            `tf.data.Dataset` or any iterable of inputs or of `(inputs, targets[, weights])`
            tuples. Only the first `num_batches` are read (an endless, repeated
            dataset is fine).
        num_batches: how many batches to average over.

    Returns:
        The number of batches used; 0 for a model without (trainable) BatchNormalization,
        in which case `batches` is not read at all.
    """
    if int(num_batches) < 1:
        raise LensnetError(f"precise BatchNorm needs num_batches >= 1, got {num_batches!r}")
    from lensnet.tasks.model import TaskModel

    # What `model(inputs)` runs: a task model calls its `network` only. BatchNorm elsewhere in it (BYOL's
    # target, which follows the online network by EMA) sees no batch here and must keep its statistics.
    layers = batch_norm_layers(model.network if isinstance(model, TaskModel) else model)
    if not layers:
        return 0
    stats = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    stat_ids = {id(v) for v in stats}
    others = [v for v in model.non_trainable_variables if id(v) not in stat_ids]
    saved_stats = [np.array(v.numpy()) for v in stats]
    saved_others = [np.array(v.numpy()) for v in others]
    momenta = [layer.momentum for layer in layers]
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    try:
        with strategy.scope():
            for layer in layers:
                layer.momentum = 0.0
                # momentum 0 leaves 0 * old + batch: start from finite values (0 * NaN is NaN)
                layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
                layer.moving_variance.assign(np.ones(layer.moving_variance.shape, layer.moving_variance.dtype))

            # Traced now, with every momentum 0: a fresh function per call, since Keras reads
            # `momentum` when it traces.
            @tf.function(reduce_retracing=True)
            def forward(inputs: Any) -> None:
                model(inputs, training=True)

            sums = [np.zeros(v.shape, np.float64) for v in stats]
            seen = used = 0
            for batch in batches:
                if used >= int(num_batches):
                    break
                inputs = _model_inputs(batch)
                size = int(tf.shape(tf.nest.flatten(inputs)[0])[0])
                used += 1
                if size == 0:
                    continue
                forward(inputs)
                for total, v in zip(sums, stats):
                    total += size * np.asarray(v.numpy(), np.float64)
                seen += size
            if seen == 0:
                raise LensnetError(
                    f"precise BatchNorm got no training images to recalibrate model {model.name!r} with"
                )
            for v, total in zip(stats, sums):
                v.assign((total / seen).astype(v.dtype))
            for v, value in zip(others, saved_others):
                v.assign(value)
    except BaseException:
        with strategy.scope():
            for v, value in zip([*stats, *others], [*saved_stats, *saved_others]):
                v.assign(value)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used


BatchSource = Iterable[Any] | Callable[[], Iterable[Any]]


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recalibrates the BatchNormalization statistics right before each validation of `model.fit`.

    Keras 3's `fit` runs validation through `evaluate`, which calls
    `on_test_begin` before any validation batch and before the epoch's
    `on_epoch_end`; recalibrating there means validation, the checkpoints saved at
    `on_epoch_end` and any export see statistics of the trained weights. An
    epoch without validation is recalibrated at `on_epoch_end` instead: put this
    callback before the checkpointing ones. A no-op for models without BatchNormalization.

    Args:
        data: the training batches to average over, in a fixed order and without
            augmentation: a dataset (iterated from its start each time) or a
            zero-argument callable returning one (called each time).
        num_batches: batches per recalibration.
    """

    def __init__(self, data: BatchSource, num_batches: int) -> None:
        super().__init__()
        if int(num_batches) < 1:
            raise LensnetError(f"precise BatchNorm needs num_batches >= 1, got {num_batches!r}")
        self.data = data
        self.num_batches = int(num_batches)
        self.recalibrations = 0  # how many times it ran (tests, logs)
        self._done_this_epoch = False

    def recalibrate(self) -> int:
        batches = self.data() if callable(self.data) else self.data
        used = recalibrate_batch_norm(self.model, batches, self.num_batches)
        self.recalibrations += 1
        return used

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._done_this_epoch = False

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.recalibrate()
        self._done_this_epoch = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._done_this_epoch:
            self.recalibrate()
        self._done_this_epoch = False
