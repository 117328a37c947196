"""Precise BatchNorm (issue 8): the collapse of inference-mode outputs when the moving statistics lag
the weights, reproduced on tiny data and gone after recalibration; the recalibration is exact,
deterministic, touches nothing but the moving statistics, runs before each validation inside
`model.fit`, and is right on every replica of a MirroredStrategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from lensnet.core.errors import LensnetError
from lensnet.models import create_model, pool_features
from lensnet.training.precise_bn import PreciseBatchNorm, batch_norm_layers, recalibrate_batch_norm

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
BATCH = 32


def faint_squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16x16 images on a large offset (raw flux, as before normalisation) whose class is a faint
    +1 sigma 6x6 square: the first BatchNorm sees means near 10, far from its initial 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = 10.0 + rng.normal(size=(n, 16, 16, 1))
    x[y == 1, 5:11, 5:11, 0] += 1.0
    return x.astype("float32"), y.astype("float32")


TRAIN = faint_squares(320, 1)  # 10 steps an epoch
VAL = faint_squares(256, 2)


def train_batches() -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(TRAIN).batch(BATCH)  # fixed order, no augmentation


def bn_classifier(momentum: float = 0.99, dropout: float = 0.0) -> keras.Model:
    """A small BN CNN from the registry + sigmoid head, Keras's default momentum 0.99 unless told."""
    keras.utils.set_random_seed(0)
    backbone = create_model("cnn_small", (16, 16, 1), filters=[8, 16], bn_momentum=momentum, dropout_rate=dropout)
    inputs = keras.Input((16, 16, 1))
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(pool_features(backbone, backbone(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    return model


def scores(model: keras.Model, training: bool) -> dict[str, float]:
    p = np.asarray(model(VAL[0], training=training))[:, 0]
    return {"accuracy": float(((p > 0.5) == VAL[1]).mean()), "auc": float(roc_auc_score(VAL[1], p))}


def moving_stats(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for la in batch_norm_layers(model) for v in (la.moving_mean, la.moving_variance)]


@pytest.mark.slow
def test_collapse_on_tiny_data_and_recalibration_removes_it():
    model = bn_classifier()
    history = model.fit(*TRAIN, batch_size=BATCH, epochs=EPOCHS, validation_data=VAL, shuffle=False, verbose=0)
    # The collapse: the weights separate the classes (batch statistics), the moving averages
    # of 30 steps at momentum 0.99 do not (inference mode), at every epoch's validation.
    batch_mode, inference = scores(model, training=True), scores(model, training=False)
    assert batch_mode["accuracy"] >= 0.95 and batch_mode["auc"] >= 0.98, batch_mode
    assert inference["accuracy"] <= 0.6, inference
    assert max(history.history["val_accuracy"]) <= 0.6, history.history

    weights = [w.copy() for w in model.get_weights()]
    assert recalibrate_batch_norm(model, train_batches(), 10) == 10
    recalibrated = scores(model, training=False)
    assert recalibrated["accuracy"] >= 0.95 and recalibrated["auc"] >= 0.98, recalibrated
    # Only the moving statistics changed.
    stat_ids = {id(v) for la in batch_norm_layers(model) for v in (la.moving_mean, la.moving_variance)}
    for v, before in zip(model.weights, weights):
        if id(v) not in stat_ids:
            np.testing.assert_array_equal(v.numpy(), before)


@pytest.mark.slow
def test_callback_recalibrates_before_each_validation_and_the_checkpoint_keeps_it(tmp_path):
    model = bn_classifier()
    precise = PreciseBatchNorm(train_batches, num_batches=10)  # a dataset_fn: a fresh pass each time
    best = tmp_path / "last.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(best))  # after PreciseBatchNorm, as documented
    history = model.fit(*TRAIN, batch_size=BATCH, epochs=EPOCHS, validation_data=VAL, shuffle=False, verbose=0,
                        callbacks=[precise, checkpoint])
    assert precise.recalibrations == EPOCHS
    # Validation already saw recalibrated statistics, from the first epoch on.
    assert min(history.history["val_accuracy"][1:]) >= 0.95, history.history
    assert history.history["val_accuracy"][0] >= 0.8, history.history
    saved = keras.models.load_model(best, safe_mode=True)
    for a, b in zip(moving_stats(saved), moving_stats(model)):
        np.testing.assert_array_equal(a, b)
    assert scores(saved, training=False)["accuracy"] >= 0.95
    assert all(la.momentum == 0.99 for la in batch_norm_layers(model))  # momentum restored


@pytest.mark.slow
def test_an_epoch_without_validation_is_recalibrated_at_its_end():
    model = bn_classifier()
    precise = PreciseBatchNorm(train_batches(), num_batches=4)  # a dataset, iterated from its start each time
    model.fit(*TRAIN, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[precise])
    assert precise.recalibrations == 2
    assert scores(model, training=False)["accuracy"] >= 0.9


def test_statistics_are_the_size_weighted_average_of_the_batch_statistics():
    # BatchNorm straight on the inputs: its batch statistics are plain numpy moments.
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    images = (3.0 + 2.0 * rng.normal(size=(10, 4, 4, 2))).astype("float32")
    batches = [images[:4], images[4:8], images[8:]]  # sizes 4, 4, 2
    used = recalibrate_batch_norm(model, ((b, np.zeros(len(b))) for b in batches), num_batches=5)
    assert used == 3
    sizes = np.array([len(b) for b in batches], np.float64)
    means = np.array([b.astype(np.float64).mean(axis=(0, 1, 2)) for b in batches])
    variances = np.array([b.astype(np.float64).var(axis=(0, 1, 2)) for b in batches])
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), (sizes[:, None] * means).sum(0) / sizes.sum(), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), (sizes[:, None] * variances).sum(0) / sizes.sum(),
                               rtol=1e-4)
    assert bn.momentum == 0.99
    # num_batches caps the pass: the first batch alone.
    recalibrate_batch_norm(model, batches, num_batches=1)
    np.testing.assert_allclose(bn.moving_mean.numpy(), means[0], rtol=1e-5)


@pytest.mark.slow
def test_recalibration_is_deterministic_and_changes_only_the_moving_statistics():
    model = bn_classifier(momentum=0.9, dropout=0.3)  # dropout: the pass must not advance its seed state
    model.fit(*TRAIN, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    start = [v.numpy().copy() for v in model.variables]
    stat_ids = {id(v) for la in batch_norm_layers(model) for v in (la.moving_mean, la.moving_variance)}
    assert len(stat_ids) == 8  # 4 BatchNorm layers

    recalibrate_batch_norm(model, train_batches(), 6)
    first = moving_stats(model)
    for v, before in zip(model.variables, start):  # trainable weights and seed generators alike
        if id(v) not in stat_ids:
            np.testing.assert_array_equal(v.numpy(), before, err_msg=v.path)
    assert any(not np.array_equal(a, b) for a, b in zip(first, [s for v, s in zip(model.variables, start)
                                                                  if id(v) in stat_ids]))

    for v, before in zip(model.variables, start):  # back to the same start, once more
        v.assign(before)
    recalibrate_batch_norm(model, train_batches(), 6)
    for a, b in zip(first, moving_stats(model)):
        np.testing.assert_array_equal(a, b)
    assert all(la.momentum == 0.9 for la in batch_norm_layers(model))


def test_a_model_without_batch_norm_is_left_alone():
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))

    def never_read():
        raise AssertionError("the data of a model without BatchNorm must not be read")
        yield

    assert recalibrate_batch_norm(model, never_read(), 10) == 0
    precise = PreciseBatchNorm(never_read, 10)
    precise.set_model(model)
    precise.on_test_begin()
    assert precise.recalibrations == 1


def test_bad_input_is_one_line_and_leaves_the_statistics():
    model = bn_classifier()
    before = moving_stats(model)
    with pytest.raises(LensnetError, match="num_batches"):
        recalibrate_batch_norm(model, train_batches(), 0)
    with pytest.raises(LensnetError, match="num_batches"):
        PreciseBatchNorm(train_batches, 0)
    with pytest.raises(LensnetError, match="no training images"):
        recalibrate_batch_norm(model, train_batches().take(0), 5)
    for a, b in zip(before, moving_stats(model)):
        np.testing.assert_array_equal(a, b)
    assert all(la.momentum == 0.99 for la in batch_norm_layers(model))


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lensnet.training.distribute import split_cpu
    split_cpu(2)
    import keras, tensorflow as tf
    from lensnet.training.precise_bn import PreciseBatchNorm, batch_norm_layers, recalibrate_batch_norm

    cross = tf.distribute.ReductionToOneDevice()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=cross)
    rng = np.random.default_rng(0)
    images = (3.0 + 2.0 * rng.normal(size=(48, 8, 8, 2))).astype("float32")
    labels = rng.integers(0, 2, 48).astype("float32")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 2))
        x = keras.layers.BatchNormalization(name="bn_in")(inputs)
        x = keras.layers.Conv2D(4, 3, padding="same")(x)
        x = keras.layers.BatchNormalization(name="bn_conv")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
        model.compile("adam", "binary_crossentropy")
    batches = lambda: tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    precise = PreciseBatchNorm(batches, num_batches=3)
    model.fit(images, labels, batch_size=16, epochs=2, validation_data=(images, labels), verbose=0,
              shuffle=False, callbacks=[precise])
    replicas = {}
    for layer in batch_norm_layers(model):
        for v in (layer.moving_mean, layer.moving_variance):
            replicas[v.path] = [np.asarray(r).tolist() for r in strategy.experimental_local_results(v.value)]
    # The first BatchNorm's exact answer: the average of the 3 batches' moments.
    b = images.astype(np.float64).reshape(3, 16, 8, 8, 2)
    expected = {"mean": b.mean(axis=(1, 2, 3)).mean(0).tolist(), "variance": b.var(axis=(1, 2, 3)).mean(0).tolist()}
    print("RESULT " + json.dumps({"replicas": replicas, "expected": expected,
                                  "recalibrations": precise.recalibrations,
                                  "num_replicas": strategy.num_replicas_in_sync}))
    """
)


@pytest.mark.slow
def test_mirrored_two_logical_cpus_every_replica_gets_the_same_exact_statistics(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", MIRRORED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["num_replicas"] == 2 and result["recalibrations"] == 2
    for path, values in result["replicas"].items():
        assert len(values) == 2, path
        np.testing.assert_array_equal(values[0], values[1], err_msg=path)
    mean = next(v for p, v in result["replicas"].items() if "bn_in" in p and p.endswith("moving_mean"))
    variance = next(v for p, v in result["replicas"].items() if "bn_in" in p and p.endswith("moving_variance"))
    np.testing.assert_allclose(mean[0], result["expected"]["mean"], rtol=1e-5)
    np.testing.assert_allclose(variance[0], result["expected"]["variance"], rtol=1e-4)


MULTIWORKER = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    import keras, tensorflow as tf
    from lensnet.training.precise_bn import batch_norm_layers, recalibrate_batch_norm

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    images = (3.0 + 2.0 * rng.normal(size=(48, 8, 8, 2))).astype("float32")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 2))
        x = keras.layers.BatchNormalization(name="bn_in")(inputs)
        x = keras.layers.Conv2D(4, 3, padding="same")(x)
        x = keras.layers.BatchNormalization(name="bn_conv")(x)
        model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x)))
    # every worker reads the same global batches, as lensnet's workers do
    used = recalibrate_batch_norm(model, tf.data.Dataset.from_tensor_slices(images).batch(16), 3)
    digest = hashlib.sha256()
    for layer in batch_norm_layers(model):
        for v in (layer.moving_mean, layer.moving_variance):
            for replica in strategy.experimental_local_results(v.value):
                digest.update(np.asarray(replica).tobytes())
    b = images.astype(np.float64).reshape(3, 16, 8, 8, 2)
    exact = np.allclose(model.get_layer("bn_in").moving_mean.numpy(), b.mean(axis=(1, 2, 3)).mean(0), rtol=1e-5)
    print("RESULT", used, exact, digest.hexdigest(), flush=True)
    """
)


@pytest.mark.slow
def test_multiworker_two_processes_compute_the_same_statistics(tmp_path):
    import socket

    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs, logs = [], []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        logs.append(open(tmp_path / f"worker{index}.log", "w+"))  # files: a full pipe cannot block a collective
        procs.append(subprocess.Popen([sys.executable, "-c", MULTIWORKER], cwd=REPO, env=env, stdout=logs[-1],
                                      stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert codes == [0, 0], outputs
    results = [next(x for x in out.splitlines() if x.startswith("RESULT ")).split() for out in outputs]
    assert results[0] == results[1]  # the same statistics, bit for bit, on both workers
    assert results[0][1:3] == ["3", "True"]
