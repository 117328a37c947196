"""Optimizers and learning-rate schedules from the `train` section of a config."""

from __future__ import annotations

import math

import keras

from lensnet.core.errors import LensnetError


@keras.saving.register_keras_serializable(package="lensnet")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to `peak * min_ratio` at `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> None:
        self.peak = float(peak)
        self.total_steps = int(max(total_steps, 1))
        self.warmup_steps = int(max(warmup_steps, 0))
        self.min_ratio = float(min_ratio)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        warmup = (step + 1.0) / warm
        factor = ops.where(step < self.warmup_steps, warmup, cosine)
        return self.peak * factor

    def get_config(self) -> dict:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_ratio": self.min_ratio}


# Variable names (regex, searched in `variable.name`) that weight decay leaves alone, as timm and DeiT
# do: norm scales and shifts, biases, class/distillation tokens and position embeddings. Decaying
# them pulls LayerNorm gains and the tokens towards 0, which only hurts. (Locality attention's temperature
# is a log factor: decay would pull it to plain attention, not to 0, but it is one scalar a block.)
NO_DECAY = ("bias", "gamma", "beta", "token", "embeddings", "position", "temperature")


def peak_learning_rate(train: dict) -> float:
    """The rate the schedule peaks at: `learning_rate` x the model recipe's `learning_rate_scale`."""
    return float(train["learning_rate"]) * float(train.get("learning_rate_scale", 1.0))


def schedule_warning(train: dict) -> str | None:
    """A warm-up sized for a long schedule eats a short one (a preset's 2 warm-up epochs are two thirds of
    `--epochs 3`): say so, since the run then spends most of its steps below its peak rate."""
    epochs, warmup = int(train["epochs"]), float(train["warmup_epochs"])
    if train["schedule"] != "cosine" or warmup <= 0.5 * epochs:
        return None
    return (f"train.warmup_epochs={warmup:g} is {warmup / epochs:.0%} of this {epochs}-epoch schedule: the "
            f"learning rate reaches its peak only at epoch {min(warmup, epochs):g}; a shorter warm-up: "
            "--set train.warmup_epochs=N")


def make_optimizer(train: dict, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = peak_learning_rate(train)
    if train["schedule"] == "cosine":
        schedule = WarmupCosine(lr, steps_per_epoch * int(train["epochs"]),
                                int(round(float(train["warmup_epochs"]) * steps_per_epoch)),
                                float(train["min_lr_ratio"]))
    else:  # constant, or plateau (ReduceLROnPlateau needs a plain variable learning rate)
        schedule = lr
    common = {"learning_rate": schedule}
    if train["clipnorm"]:
        common["clipnorm"] = float(train["clipnorm"])
    wd = float(train["weight_decay"])
    name = train["optimizer"]
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=wd, **common)
    elif name == "adam":
        return keras.optimizers.Adam(**common)
    elif name == "lamb":
        optimizer = keras.optimizers.Lamb(weight_decay=wd or None, **common)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(momentum=float(train["momentum"]), nesterov=True,
                                         weight_decay=wd or None, **common)
    else:
        raise LensnetError(f"train.optimizer {name!r} is not one of adamw, adam, lamb, sgd")
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer
