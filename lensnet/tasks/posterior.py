"""Amortised neural posterior estimation (NPE) of stored parameters, with calibration always reported.

A registry backbone, pooled and projected to `summary_dim` numbers, is the summary network; a
BayesFlow 2 conditional normalising flow (the inference network) turns the summary into a posterior
density over the targets named in `task.targets` (any stored record parameter: f_sub, sigma_sub,
log10_m_hm, log10_m_axion, n_los, theta_E, ...). The loss is the flow's negative log-density of the
true parameters (standardised by the training split's mean and std), so the network learns
p(targets | image) under the training set's distribution of parameters: that distribution is the
NPE prior. Its ranges, as the dataset's manifest states them, are written into the run (task_state
"priors"); `lensnet.studies.population` reweights this prior to a population's.

NaN targets (a parameter that does not apply to a record: the axion mass of a CDM lens) and, with
`task.classes`, records of other classes are MASKED: they weigh 0 in the loss and are left out of
the calibration figures (counted as `n_masked`). A record needs every target finite to count.

Output spec: the exported model returns posterior SAMPLES, (N, num_samples, D) in physical units
(output kind `samples`, lensnet.artifacts.outputs). The flow is inverted on `num_samples` fixed base points
(a scrambled Sobol set mapped through the normal quantile, stored in the model): the exported
function holds no random op, so it gives the same bytes on every call and exports to ONNX.

Calibration (`score`): simulation-based-calibration ranks (their histogram, a KS test of the
rank fractions against uniform), expected coverage of central intervals at 50/68/95%, posterior
contraction (1 - posterior variance / prior variance) and z-scores per parameter. A coverage more than
COVERAGE_TOLERANCE from its level is named in `warnings`, which fit and evaluate print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError
from lensnet.tasks.base import BackboneFactory, BatchContext, Task, pooled_network, register_task
from lensnet.tasks.model import MetricInputs, TaskModel, average_loss
from lensnet.tasks.regression import check_targets_survive, parameter_unit

COVERAGE_LEVELS = (0.5, 0.68, 0.95)
COVERAGE_TOLERANCE = 0.05  # |coverage - level| above this is reported as miscalibration


# ---- the inference networks (BayesFlow) --------------------------------------------------------

def _coupling_flow(depth: int, width: int) -> Any:
    import bayesflow as bf

    # no dropout: the flow's density is the posterior, and dropout noise would widen it
    return bf.networks.CouplingFlow(depth=depth, transform="affine", permutation="random",
                                    subnet_kwargs={"widths": (width, width), "dropout": 0.0})


FLOWS = {"coupling": _coupling_flow}  # name -> (depth, width) -> a BayesFlow InferenceNetwork with _inverse


def base_draws(num_samples: int, dim: int, seed: int) -> np.ndarray:
    """(num_samples, dim) standard-normal base points: scrambled Sobol through the normal quantile.

    Low-discrepancy points estimate the posterior's quantiles with less noise than as many random draws.
    """
    from scipy.special import ndtri
    from scipy.stats import qmc

    u = qmc.Sobol(d=dim, scramble=True, seed=seed).random(num_samples)
    return ndtri(np.clip(u, 1e-6, 1 - 1e-6)).astype(np.float32)


# ---- the space the flow sees -------------------------------------------------------------------
# Each target is mapped to the flow's space by a transform (stored in the run and in the model):
#   {"kind": "cdf", "lo", "hi", "log"}   a uniform prior in x or, with "log", in ln x, on [lo, hi]:
#                                         z = Phi^-1((g(x) - lo) / (hi - lo)), g = ln if log else identity;
#                                         under the prior z ~ N(0, 1) exactly, the flow's own base distribution
#   {"kind": "affine", "mean", "std"}     z = (x - mean) / std (a normal prior, or a target without a prior)
# Why: a flow that sees a bounded, skewed prior (f_sub log-uniform on [0.005, 0.05]) through a linear
# standardisation must LEARN the prior's shape; short of that, its samples leave the support and its
# data-averaged posterior is not the prior, which population inference multiplies over N lenses into a
# spurious constraint. Through the prior's CDF, an uninformative flow (the identity) returns the prior
# exactly, and every sample lies inside the support whatever the flow learned.
TRANSFORMS = ("prior", "standardise")  # task.transform
CONDITIONS = ("batch", "moving", "straight")  # task.condition (PosteriorModel)
CDF_CLIP = 1e-6  # training values at the bounds of the support map to |z| <= 4.75, not infinity


def flow_transform(spec: Any, train_mean: float, train_std: float) -> dict:
    """The transform of one target from its prior's YAML spec (None: no stated prior) and training statistics.

    Carries the prior's std (`prior_std`), the denominator of posterior contraction.
    """
    kind, args = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (None, None)
    if kind in ("uniform", "log_uniform", "log10_uniform"):
        a, b = float(args[0]), float(args[1])
        if kind == "uniform":
            return {"kind": "cdf", "lo": a, "hi": b, "log": False, "prior_std": (b - a) / np.sqrt(12.0)}
        lo, hi = (np.log(a), np.log(b)) if kind == "log_uniform" else (a * np.log(10.0), b * np.log(10.0))
        x_lo, x_hi = np.exp(lo), np.exp(hi)  # a log-uniform's moments: E[x^k] = (hi^k - lo^k) / (k ln(hi / lo))
        m1, m2 = (x_hi - x_lo) / (hi - lo), (x_hi**2 - x_lo**2) / (2 * (hi - lo))
        return {"kind": "cdf", "lo": float(lo), "hi": float(hi), "log": True, "prior_std": float(np.sqrt(m2 - m1**2))}
    if kind == "normal":
        return {"kind": "affine", "mean": float(args[0]), "std": float(args[1]), "prior_std": float(args[1])}
    return {"kind": "affine", "mean": float(train_mean), "std": float(train_std), "prior_std": float(train_std)}


def to_flow_space(x: Any, transform: dict) -> Any:
    """Physical values -> the flow's space (TensorFlow: the task's `prepare`)."""
    import tensorflow as tf

    if transform["kind"] == "affine":
        return (x - transform["mean"]) / transform["std"]
    g = tf.math.log(tf.maximum(x, 1e-30)) if transform["log"] else x
    u = (g - transform["lo"]) / (transform["hi"] - transform["lo"])
    return tf.math.ndtri(tf.clip_by_value(u, CDF_CLIP, 1.0 - CDF_CLIP))


def from_flow_space(z: Any, transform: dict) -> Any:
    """The flow's space -> physical values (keras ops: exported with the model; no op ONNX lacks)."""
    from keras import ops

    if transform["kind"] == "affine":
        return z * transform["std"] + transform["mean"]
    u = 0.5 * (1.0 + ops.erf(z / np.sqrt(2.0)))
    g = transform["lo"] + (transform["hi"] - transform["lo"]) * u
    return ops.exp(g) if transform["log"] else g


@keras.saving.register_keras_serializable(package="lensnet")
class PosteriorSampler(keras.layers.Layer):
    """summary (B, F) -> posterior samples (B, num_samples, D) in physical units, through a conditional flow.

    Args:
        dim: the number of targets D.
        num_samples: samples returned per image.
        mean, std: the targets' standardisation (physical = standardised * std + mean), when `transforms` is None.
        transforms: per target, the map from the flow's space to physical units (`flow_transform`).
        flow: "coupling" (FLOWS), or a serialized BayesFlow inference network (when loading).
        depth, width: the flow's coupling layers and the width of their two hidden layers.
        seed: seed of the base points.

    One target cannot be split by a coupling layer: the flow then models (target, e) with e an
    independent N(0, 1) dimension (`aux`), drawn by the task's `prepare` and dropped from the samples.
    """

    def __init__(self, dim: int, num_samples: int = 512, mean: Any = (), std: Any = (), flow: Any = "coupling",
                 depth: int = 4, width: int = 64, seed: int = 0, transforms: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.num_samples = int(num_samples)
        self.mean = [float(v) for v in mean] or [0.0] * self.dim
        self.std = [float(v) for v in std] or [1.0] * self.dim
        self.transforms = [dict(t) for t in transforms] if transforms else [
            {"kind": "affine", "mean": m, "std": s} for m, s in zip(self.mean, self.std)]
        self.depth, self.width, self.seed = int(depth), int(width), int(seed)
        self.aux = 1 if self.dim == 1 else 0
        if isinstance(flow, str):
            if flow not in FLOWS:
                raise LensnetError(f"task.flow {flow!r} is not one of {', '.join(FLOWS)}")
            self.flow_name = flow
            self.flow = FLOWS[flow](self.depth, self.width)
        else:  # a loaded model: BayesFlow's classes register on import
            import bayesflow  # noqa: F401

            self.flow_name = None
            self.flow = keras.saving.deserialize_keras_object(flow)

    @property
    def flow_dim(self) -> int:
        return self.dim + self.aux

    def build(self, input_shape: Any) -> None:
        self.flow.build((None, self.flow_dim), conditions_shape=(None, int(input_shape[-1])))
        draws = base_draws(self.num_samples, self.flow_dim, self.seed)
        self.base = self.add_weight(shape=draws.shape, initializer=keras.initializers.Constant(draws),
                                    trainable=False, name="base_draws")
        self.built = True

    def log_density(self, y: Any, summary: Any, training: bool = False) -> Any:
        """log q(y | summary) of targets in the flow's space y (B, flow_dim): what the loss maximises."""
        _, log_density = self.flow(y, conditions=summary, inverse=False, density=True, training=training)
        return log_density

    def call(self, summary: Any, training: bool = False) -> Any:
        from keras import ops

        batch = ops.shape(summary)[0]
        s, d = self.num_samples, self.flow_dim
        # every image's posterior from the same base points: (B * S) rows through the flow at once
        conditions = ops.reshape(ops.repeat(summary[:, None, :], s, axis=1), (-1, ops.shape(summary)[-1]))
        z = ops.reshape(ops.broadcast_to(self.base[None], (batch, s, d)), (-1, d))
        x = self.flow(z, conditions=conditions, inverse=True, training=False)
        x = ops.reshape(x, (batch, s, d))
        return ops.stack([from_flow_space(x[..., k], t) for k, t in enumerate(self.transforms)], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], self.num_samples, self.dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "num_samples": self.num_samples, "mean": self.mean,
                "std": self.std, "flow": keras.saving.serialize_keras_object(self.flow), "depth": self.depth,
                "width": self.width, "seed": self.seed, "transforms": self.transforms}


@keras.saving.register_keras_serializable(package="lensnet")
class PosteriorModel(TaskModel):
    """NPE: the loss is -log q(targets | summary(image)), masked by the sample weight.

    `network` returns {"summary": (B, F), "samples": (B, S, D)}; training reads only the summary
    (the samples are the exported output).

    condition: the summary the flow is trained on. "batch": the training-mode summary (BatchNormalization by
    each batch's statistics). "moving": the inference-mode summary, the one the exported model computes
    (moving statistics, updated by a training-mode pass whose output is dropped; gradients reach every
    weight). Batch statistics make an image's summary depend on the other images of its batch: the flow
    learns that noise as posterior width and then returns too wide a posterior on the deterministic
    inference-mode summary (the toy: +18%, see docs/posterior.md). But with "moving" the gradient does not see
    the normalisation (the statistics are constants to it) and training is unstable: on model_ii the loss
    rose while the learning rate annealed (validation NLL 1.92 -> 2.25 over two epochs of 30,000 images,
    against 1.59 -> 1.43 with "batch"). "straight": the value of the inference-mode summary with the
    gradient of the training-mode one (a straight-through estimator), so the flow sees what the exported
    model computes and the backbone trains as with "batch".
    """

    def __init__(self, network: keras.Model, condition: str = "batch", **kwargs: Any) -> None:
        super().__init__(network, **{"output": "samples", **kwargs})
        self.condition = condition
        self.sampler = network.get_layer("posterior")
        # a view of the network's weights (untracked: the network already holds them)
        self.hooks.summary = keras.Model(network.inputs, network.output["summary"], name="summary_network")

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[Any, MetricInputs]:
        import tensorflow as tf

        if training and self.condition in ("moving", "straight"):
            batch_summary = self.hooks.summary(x, training=True)  # also updates the moving statistics
            summary = self.hooks.summary(x, training=False)
            if self.condition == "straight":
                summary = batch_summary + tf.stop_gradient(summary - batch_summary)
        else:
            summary = self.hooks.summary(x, training=training)
        log_density = self.sampler.log_density(tf.cast(y, tf.float32), summary, training=training)
        weight = tf.ones_like(log_density) if sample_weight is None else tf.cast(sample_weight, tf.float32)
        loss = average_loss(-log_density * weight, global_batch_size) + self.regularization()
        return loss, MetricInputs(None, None)

    def get_config(self) -> dict:
        return {**super().get_config(), "condition": self.condition}

    def update_task_metrics(self, inputs: MetricInputs, metrics: Any = None, extra_weight: Any = None) -> None:
        """No per-batch metric: calibration needs whole posteriors (the callback and `score` compute it)."""


# ---- calibration -------------------------------------------------------------------------------

def rank_fractions(truth: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """(N, D) fraction of each posterior's samples below the truth: uniform on [0, 1] when calibrated (SBC)."""
    return np.mean(samples < truth[:, None, :], axis=1)


def calibration(truth: np.ndarray, samples: np.ndarray, prior_std: np.ndarray, names: list[str],
                levels: tuple[float, ...] = COVERAGE_LEVELS) -> dict:
    """Per parameter: SBC KS test, coverage of central intervals, contraction, z-scores, posterior-mean errors.

    truth (N, D), samples (N, S, D), both finite; prior_std (D,) the NPE prior's (training split's) std.
    """
    from scipy import stats

    u = rank_fractions(truth, samples)
    mean, std = samples.mean(axis=1), samples.std(axis=1)
    z = (mean - truth) / np.maximum(std, 1e-300)
    out: dict = {}
    for d, name in enumerate(names):
        entry: dict = {"sbc_ks_p": float(stats.kstest(u[:, d], "uniform").pvalue)}
        for level in levels:
            entry[f"coverage_{round(level * 100)}"] = float(np.mean(np.abs(u[:, d] - 0.5) <= level / 2))
        entry["contraction"] = float(np.mean(1.0 - std[:, d] ** 2 / prior_std[d] ** 2))
        entry["z_mean"], entry["z_std"] = float(np.mean(z[:, d])), float(np.std(z[:, d]))
        err = mean[:, d] - truth[:, d]
        entry["posterior_mean_rmse"] = float(np.sqrt(np.mean(err**2)))
        entry["posterior_std_mean"] = float(np.mean(std[:, d]))
        out[name] = entry
    return out


def contraction_by_truth(truth: np.ndarray, samples: np.ndarray, prior_std: np.ndarray, names: list[str],
                         bins: int = 4) -> dict:
    """Per parameter, in `bins` quantile bins of the true value: where in the prior the posterior narrows.

    Each bin: its truth range, lenses, mean contraction and mean posterior std.
    """
    out = {}
    std = samples.std(axis=1)
    for d, name in enumerate(names):
        edges = np.quantile(truth[:, d], np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, truth[:, d], side="right") - 1, 0, bins - 1)
        out[name] = [{"truth_lo": float(edges[b]), "truth_hi": float(edges[b + 1]), "n": int(np.sum(which == b)),
                      "contraction": float(np.mean(1.0 - std[which == b, d] ** 2 / prior_std[d] ** 2)),
                      "posterior_std": float(np.mean(std[which == b, d]))}
                     for b in range(bins) if np.any(which == b)]
    return out


def coverage_warnings(per_parameter: dict, levels: tuple[float, ...] = COVERAGE_LEVELS,
                      tolerance: float = COVERAGE_TOLERANCE) -> list[str]:
    """One sentence per (parameter, level) whose coverage is more than `tolerance` from the level."""
    warnings = []
    for name, entry in per_parameter.items():
        for level in levels:
            got = entry[f"coverage_{round(level * 100)}"]
            if abs(got - level) > tolerance:
                side = "overconfident" if got < level else "underconfident"
                warnings.append(f"miscalibrated: {name} {round(level * 100)}% interval covers the truth in "
                                f"{got:.1%} of lenses (off by {abs(got - level):.3f} > {tolerance}; {side})")
    return warnings


# ---- the task ----------------------------------------------------------------------------------

@dataclass
class PosteriorConfig:
    targets: list[str] = field(default_factory=list)  # stored parameters, by name (the posterior is joint)
    classes: list[str] | None = None  # train and calibrate on these classes only (others masked); None = all
    flow: str = "coupling"  # the BayesFlow inference network (FLOWS)
    depth: int = 4  # coupling layers
    width: int = 64  # hidden units of each coupling layer's two-layer MLP
    summary_dim: int = 16  # the summary statistics the backbone's pooled features are projected to
    num_samples: int = 512  # posterior samples per image in the exported model
    # the space the flow sees: prior (through each target's stated uniform / log-uniform prior's CDF to N(0, 1),
    # so samples stay in the support) | standardise (x - mean) / std (flow_transform)
    transform: str = "prior"
    condition: str = "batch"  # the summary the flow is trained on: batch | straight | moving (PosteriorModel)
    calibration_examples: int = 256  # validation images whose coverage is logged to TensorBoard each epoch


def find_prior(config: dict, name: str, drawn: Any = ()) -> tuple[str | None, Any]:
    """(dotted path, YAML spec) of parameter `name`'s prior in a dataset's resolved config, or (None, None).

    Stored names are the config's keys, or `<section>_<key>` for light profiles (source_R_sersic ->
    source.R_sersic; source_mag -> source.magnitude). Derived parameters (n_subhalo, m_sub_total...) have
    none: their NPE prior is only the training distribution (mean and std in the run). Where the dataset stores
    `<name>_drawn` (`drawn`: its parameter names), the config's `name` is the prior of that draw, and the stored
    `name` is a realised quantity (f_sub: the mass fraction the subhaloes realise, not the one requested) with
    no prior of its own.
    """
    if name.endswith("_drawn"):
        return find_prior(config, name[: -len("_drawn")])
    if f"{name}_drawn" in drawn:
        return None, None
    if name in config and not isinstance(config[name], dict | list):
        return name, config[name]
    for section, body in config.items():
        if not isinstance(body, dict):
            continue
        if name in body and not isinstance(body[name], list):
            return f"{section}.{name}", body[name]
        prefix = f"{section}_"
        if name.startswith(prefix):
            key = name[len(prefix):]
            key = "magnitude" if key == "mag" else key
            if key in body:
                return f"{section}.{key}", body[key]
    top = config.get(name)
    return (name, top) if isinstance(top, dict) else (None, None)


@register_task
class Posterior(Task):
    name = "posterior"
    description = "amortised posterior of stored parameters (--set task.targets=[...]); BayesFlow flow; SBC, coverage"
    monitor = "loss"
    monitor_mode = "min"
    Config = PosteriorConfig

    def check_config(self) -> None:
        c = self.config
        if isinstance(c.targets, str):
            c.targets = [c.targets]
        if c.targets is not None and (not isinstance(c.targets, list | tuple)
                                      or not all(isinstance(t, str) for t in c.targets)):
            raise LensnetError(f"task.targets must be a list of parameter names, got {c.targets!r}")
        if c.targets and len(set(c.targets)) != len(c.targets):
            raise LensnetError(f"task.targets names a parameter twice: {c.targets}")
        if c.flow not in FLOWS:
            raise LensnetError(f"task.flow {c.flow!r} is not one of {', '.join(FLOWS)}")
        if c.condition not in CONDITIONS:
            raise LensnetError(f"task.condition {c.condition!r} is not one of {', '.join(CONDITIONS)}")
        if c.transform not in TRANSFORMS:
            raise LensnetError(f"task.transform {c.transform!r} is not one of {', '.join(TRANSFORMS)}")
        for key in ("depth", "width", "summary_dim", "num_samples"):
            value = getattr(c, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LensnetError(f"task.{key} must be a positive integer, got {value!r}")
        if c.num_samples < 20:
            raise LensnetError(f"task.num_samples {c.num_samples} is too few to read a 95% interval; use >= 20")

    def setup(self, info: Any, state: dict | None = None) -> None:
        targets = list(state["targets"] if state else self.config.targets or [])
        params = list(info.param_names)
        if not targets:
            raise LensnetError("task posterior needs targets (--set task.targets=[f_sub,theta_E]); "
                               f"parameters: {', '.join(params)}")
        missing = [t for t in targets if t not in params]
        if missing:
            raise LensnetError(f"unknown target {missing[0]!r}; parameters stored in {info.path}: {', '.join(params)}")
        classes = state.get("classes") if state else self.config.classes
        if classes is not None:
            unknown = [c for c in classes if c not in info.class_names]
            if unknown:
                raise LensnetError(f"task.classes: {unknown[0]!r} is not a class of {info.path} "
                                   f"({', '.join(info.class_names)})")
        stats = info.manifest.get("param_stats", {})
        for split in info.counts:
            for t in targets:
                entry = stats.get(split, {}).get(t)
                if entry is not None and entry["finite"] == 0:
                    raise LensnetError(f"target {t!r} is NaN in every record of split '{split}' of {info.path}")
        if state is not None:  # scoring: the trained model's standardisation and prior, whatever `info` holds
            self.mean, self.std = list(state["mean"]), list(state["std"])
            self.priors = state.get("priors", {})
            # runs written before the transforms: every target standardised
            self.transforms = state.get("transforms") or [flow_transform(None, m, s)
                                                          for m, s in zip(self.mean, self.std)]
        else:
            self.mean, self.std, self.priors = [], [], {}
            config = info.manifest.get("config") or {}
            for t in targets:
                train = stats.get("train", {}).get(t)
                if train is None:
                    raise LensnetError(f"{info.path}: manifest has no training statistics for {t!r}; "
                                       "re-create the dataset")
                if not train.get("std"):
                    raise LensnetError(f"target {t!r} is constant ({train.get('mean')}) in the training split")
                self.mean.append(float(train["mean"]))
                self.std.append(float(train["std"]))
                path, spec = find_prior(config, t, params)
                self.priors[t] = {"config_path": path, "spec": spec, "train_mean": float(train["mean"]),
                                  "train_std": float(train["std"]), "train_min": train.get("min"),
                                  "train_max": train.get("max")}
            self.transforms = [self.flow_space(t, stats.get("train", {}).get(t), classes, k)
                               for k, t in enumerate(targets)]
        self.names = targets  # the target parameters, in column order
        self.classes = list(classes) if classes is not None else None
        self.class_index = [info.class_names.index(c) for c in self.classes] if self.classes else []
        self.fields = ("image", "label", *targets) if self.classes else ("image", *targets)

    def flow_space(self, target: str, train: dict, classes: Any, k: int) -> dict:
        """`flow_transform` of one target, by the configured `task.transform`."""
        spec = self.priors[target]["spec"] if self.config.transform == "prior" else None
        transform = flow_transform(spec, self.mean[k], self.std[k])
        if transform["kind"] == "cdf" and classes is None:
            lo, hi = (np.exp(transform["lo"]), np.exp(transform["hi"])) if transform["log"] else (
                transform["lo"], transform["hi"])
            # every training value must lie in the prior's support; with task.classes the statistics also count
            # the masked classes' values, so only a dataset-wide violation is visible here
            slack = 1e-6 * max(abs(lo), abs(hi))  # float32 round-off of values stored at the bounds
            if (train or {}).get("min", lo) < lo - slack or (train or {}).get("max", hi) > hi + slack:
                transform = flow_transform(None, self.mean[k], self.std[k])
                transform["note"] = (f"training values [{train['min']:g}, {train['max']:g}] leave the prior's support "
                                     f"[{lo:g}, {hi:g}]: standardised")
        return transform

    def state(self) -> dict:
        return {"targets": self.names, "mean": self.mean, "std": self.std, "classes": self.classes,
                "priors": self.priors, "transforms": self.transforms}

    def check_data_options(self, data_config: dict) -> None:
        check_targets_survive(self.config.targets, data_config.get("augment"))

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        import tensorflow as tf

        y = tf.stack([tf.cast(batch[t], tf.float32) for t in self.names], axis=-1)
        finite = tf.reduce_all(tf.math.is_finite(y), axis=-1)
        if self.class_index:
            finite &= tf.reduce_any(tf.cast(batch["label"], tf.int64)[:, None] == self.class_index, axis=-1)
        # in the flow's space, NaN rows zeroed: a NaN would poison the gradient even at weight 0
        y = tf.stack([to_flow_space(tf.where(finite, y[:, k], t.get("mean", 1.0)), t)
                      for k, t in enumerate(self.transforms)], axis=-1)
        y = tf.where(finite[:, None], y, 0.0)
        if len(self.names) == 1:  # the flow's auxiliary N(0, 1) dimension (PosteriorSampler.aux)
            y = tf.concat([y, tf.random.stateless_normal(tf.shape(y), context.random_seed(7))], axis=-1)
        return batch["image"], y, tf.cast(finite, tf.float32)

    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        c = self.config
        seed = int(config.get("run", {}).get("seed", 0))

        def head(features: Any) -> dict:
            summary = keras.layers.Dense(c.summary_dim, dtype="float32", name="summary")(features)
            sampler = PosteriorSampler(len(self.names), c.num_samples, self.mean, self.std, c.flow, c.depth,
                                       c.width, seed, self.transforms, dtype="float32", name="posterior")
            return {"summary": summary, "samples": sampler(summary)}

        network = pooled_network(backbone_factory, info.image_shape, head, dropout=config["model"].get("dropout"),
                                 name=f"{self.name}_{config['model']['name']}")
        return PosteriorModel(network, condition=c.condition, name=f"{self.name}_model")

    def callbacks(self, run_dir: Path, info: Any, config: dict, val_batches: Any) -> list:
        if not self.config.calibration_examples:
            return []
        return [CalibrationEachEpoch(val_batches, self, self.config.calibration_examples, Path(run_dir) / "logs")]

    # ---- scoring ----------------------------------------------------------------------------
    def targets(self, batch: dict) -> np.ndarray:
        """(N, D) true values; NaN rows where a target does not apply or the class is masked."""
        y = np.stack([np.asarray(batch[t], dtype=np.float64) for t in self.names], axis=-1)
        if self.class_index:
            y[~np.isin(np.asarray(batch["label"]), self.class_index)] = np.nan
        return y

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        truth, samples = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
        keep = np.all(np.isfinite(truth), axis=1)
        out: dict = {"n": int(keep.sum()), "n_masked": int((~keep).sum()), "num_samples": int(samples.shape[1])}
        if not keep.any():
            out["notes"] = "no record has every target finite: calibration undefined"
            return out
        per = calibration(truth[keep], samples[keep], self.prior_std, self.names)
        for key in next(iter(per.values())):  # the mean over parameters, flat (TensorBoard scalars)
            out[key] = float(np.mean([entry[key] for entry in per.values()]))
        out["sbc_ks_p_min"] = float(min(entry["sbc_ks_p"] for entry in per.values()))
        out["max_coverage_error"] = float(max(abs(entry[f"coverage_{round(lv * 100)}"] - lv)
                                              for entry in per.values() for lv in COVERAGE_LEVELS))
        if len(per) > 1:  # per parameter, flat (TensorBoard scalars); one parameter's are the means above
            for name, entry in per.items():
                for key, value in entry.items():
                    out[f"{name}/{key}"] = value
        out["parameters"] = per
        out["contraction_by_truth"] = contraction_by_truth(truth[keep], samples[keep], self.prior_std, self.names)
        out["calibrated"] = out["max_coverage_error"] <= COVERAGE_TOLERANCE
        out["warnings"] = coverage_warnings(per)
        return out

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        from lensnet.tasks import plots
        from lensnet.tasks.posterior_plots import coverage_figure, rank_figure, recovery_figure, zscore_figure

        truth, samples = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
        keep = np.all(np.isfinite(truth), axis=1)
        if not keep.any():
            return {}
        truth, samples = truth[keep], samples[keep]
        out_dir = Path(out_dir)
        return {"sbc_ranks": plots.save(rank_figure(truth, samples, self.names), out_dir / "sbc_ranks.png"),
                "coverage": plots.save(coverage_figure(truth, samples, self.names), out_dir / "coverage.png"),
                "z_contraction": plots.save(zscore_figure(truth, samples, self.prior_std, self.names),
                                            out_dir / "z_contraction.png"),
                "recovery": plots.save(recovery_figure(truth, samples, self.names), out_dir / "recovery.png")}

    @property
    def prior_std(self) -> np.ndarray:
        """(D,) the NPE prior's std per target: its stated prior's, else the training split's."""
        return np.array([t.get("prior_std", s) for t, s in zip(self.transforms, self.std)], dtype=np.float64)

    def describe(self, y_pred_row: np.ndarray) -> str:
        samples = np.asarray(y_pred_row)
        return ", ".join(f"{t}={m:.3g}±{s:.2g}" for t, m, s in zip(self.names, samples.mean(0), samples.std(0)))

    def output_spec(self) -> OutputSpec:
        return OutputSpec("samples", "posterior_samples", columns=tuple(self.names),
                          units=tuple(parameter_unit(t) for t in self.names))


class CalibrationEachEpoch(keras.callbacks.Callback):
    """Coverage and SBC of the first `n` validation images, each epoch, in TensorBoard (logs/calibration)."""

    def __init__(self, val_batches: Any, task: Posterior, n: int, log_dir: Path) -> None:
        super().__init__()
        self.batches, self.task, self.n, self.log_dir = val_batches, task, int(n), Path(log_dir) / "calibration"
        self.writer = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import tensorflow as tf

        truth, samples, seen = [], [], 0
        for x, y, w in self.batches:
            if seen >= self.n:
                break
            samples.append(keras.ops.convert_to_numpy(self.model.network(x, training=False)["samples"]))
            y = np.stack([keras.ops.convert_to_numpy(from_flow_space(y[:, k], t))
                          for k, t in enumerate(self.task.transforms)], axis=-1)
            truth.append(np.where(keras.ops.convert_to_numpy(w)[:, None] > 0, y, np.nan))
            seen += len(y)
        if not truth:
            return
        truth, samples = np.concatenate(truth)[: self.n], np.concatenate(samples)[: self.n]
        keep = np.all(np.isfinite(truth), axis=1)
        if keep.sum() < 2:
            return
        per = calibration(truth[keep], samples[keep], self.task.prior_std, self.task.names)
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(str(self.log_dir))
        with self.writer.as_default():
            for name, entry in per.items():
                for key, value in entry.items():
                    tf.summary.scalar(f"{name}/{key}", value, step=epoch)
        self.writer.flush()
        if logs is not None:  # the history and the epoch line carry the worst coverage error
            logs["val_max_coverage_error"] = max(abs(entry[f"coverage_{round(lv * 100)}"] - lv)
                                                 for entry in per.values() for lv in COVERAGE_LEVELS)
