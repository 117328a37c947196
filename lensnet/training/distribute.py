"""Where training runs: one device, every GPU (MirroredStrategy), or several machines (TF_CONFIG)."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from lensnet.core.errors import LensnetError


def split_cpu(num_devices: int) -> None:
    """Split the CPU into `num_devices` logical devices (CPU-only mirroring and its tests).

    Must run before TensorFlow initialises its devices; a later call that asks for
    the split already in place is accepted, any other is an error.
    """
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != num_devices:
            raise LensnetError(
                f"distribute.cpu_devices={num_devices} must be set before TensorFlow starts; "
                f"this process already has {len(tf.config.list_logical_devices('CPU'))} CPU device(s)"
            ) from None


def tf_config_workers() -> int:
    """Number of workers (chief included) described by TF_CONFIG, 0 without it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (json.JSONDecodeError, AttributeError):
        raise LensnetError("TF_CONFIG is not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(distribute: dict) -> tuple[tf.distribute.Strategy, str]:
    """(strategy, kind) with kind one of default | mirrored | multiworker."""
    choice = distribute["strategy"]
    split_cpu(int(distribute["cpu_devices"]))
    if choice == "multiworker" or (choice == "auto" and tf_config_workers() > 1):
        if tf_config_workers() < 1:
            raise LensnetError("distribute.strategy multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy(), "multiworker"
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if choice == "mirrored" or (choice == "auto" and (gpus or len(cpus) > 1)):
        devices = [d.name for d in (gpus or cpus)]
        cross = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross), "mirrored"
    return tf.distribute.get_strategy(), "default"


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    spec = json.loads(raw)
    task = spec.get("task", {})
    cluster = spec.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
