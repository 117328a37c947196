"""Knowledge distillation from a teacher run (DeiT, Touvron et al. 2021; Hinton et al. 2015).

    python -m lensnet.fit --task substructure --model deit_tiny --teacher runs/TEACHER

The student gets two heads: a class head trained on the labels and a distillation head trained
on the teacher (DeiT's distillation token feeds it; a student without one, e.g. a ViT or a CNN,
puts both heads on its pooled features). Training keeps them separate; the exported prediction
is the mean of their softmax outputs, as DeiT does at inference. Loss per example:

    (1 - alpha) * CE(label, class head) + alpha * D(teacher, distillation head)
        [+ feature_weight * F] [+ attention_weight * A]

with D = CE(argmax teacher, .) for `distill: hard` (DeiT's default) or T^2 KL(teacher_T || student_T)
at temperature T for `soft`. F (`feature_block` set, ViT/DeiT student and teacher) is the mean
squared error between a linear projection of the student's patch tokens after block
`feature_block` and the teacher's patch tokens after its block `feature_block`. A
(`attention_block` set, ViT/DeiT student and teacher with the same patch grid) is the KL divergence,
over keys and averaged over queries, from the teacher's attention probabilities of block
`attention_block` to the student's, each averaged over its heads (see `attention_distillation_loss`).

The teacher is a finished run (its checkpoints/best.keras) or an export directory (its SavedModel,
which normalises inside), loaded whole and run in inference mode. It is NOT a tracked part of the
task model: its weights are neither trained nor saved in the checkpoints nor exported.

The teacher sees images normalised ITS way. The data pipeline hands the student images already
normalised the student's way, so they are mapped back: `dataset` and `none` invert exactly; the
per-image methods (`standard`, `minmax`) cannot be inverted, but both are invariant to a positive
per-image, per-channel affine map of the pixels, so a teacher that uses one of them gets exactly
its own input from them. The one impossible case (a student normalised per image, a teacher that
needs absolute flux) is a one-line error that says what to change.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from lensnet.core.errors import LensnetError
from lensnet.tasks.model import MetricInputs, TaskModel, average_loss

DISTILL_MODES = ("hard", "soft")
PER_IMAGE = ("standard", "minmax", "asinh")  # invariant to a positive affine map of each image's channels


@dataclass
class DistillationOptions:
    """Task options of a classification task that can learn from a teacher (`--teacher RUN`)."""

    teacher: str | None = None  # a finished run directory or an export directory; None = no distillation
    distill: str = "hard"  # hard (teacher argmax, DeiT's default) | soft (KL at `temperature`)
    alpha: float = 0.5  # weight of the distillation loss; 1 - alpha weighs the label loss
    temperature: float = 3.0  # soft distillation only
    feature_block: int | None = None  # ViT/DeiT student and teacher: match the patch tokens after this block
    feature_weight: float = 1.0  # weight of the token-matching loss (with feature_block)
    attention_block: int | None = None  # ViT/DeiT student and teacher: match this block's attention maps
    attention_weight: float = 1.0  # weight of the attention-matching loss (with attention_block)


def check_options(options: DistillationOptions) -> None:
    if options.distill not in DISTILL_MODES:
        raise LensnetError(f"task.distill must be one of {', '.join(DISTILL_MODES)}, got {options.distill!r}")
    if not 0.0 <= float(options.alpha) <= 1.0:
        raise LensnetError(f"task.alpha must be in [0, 1], got {options.alpha!r}")
    if not float(options.temperature) > 0:
        raise LensnetError(f"task.temperature must be positive, got {options.temperature!r}")
    if float(options.feature_weight) < 0:
        raise LensnetError(f"task.feature_weight must be non-negative, got {options.feature_weight!r}")
    for key in ("feature_block", "attention_block"):
        value = getattr(options, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LensnetError(f"task.{key} must be an integer block index, got {value!r}")
    if isinstance(options.attention_weight, bool) or not isinstance(options.attention_weight, (int, float)) \
            or not float(options.attention_weight) >= 0:
        raise LensnetError(f"task.attention_weight must be a non-negative number, got {options.attention_weight!r}")
    if options.teacher is None and (options.feature_block is not None or options.attention_block is not None):
        key = "feature_block" if options.feature_block is not None else "attention_block"
        raise LensnetError(f"task.{key} matches a teacher's blocks: give --teacher RUN")


# ---- teacher ------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """A loaded teacher: `probabilities(student_images)` in the student's class order."""

    path: Path
    model: Any  # keras model (normalised images in) or a SavedModel signature (raw images in)
    takes_raw: bool
    normalisation: dict
    class_order: list[int]  # teacher column of each student class
    output_name: str | None = None

    def inputs(self, student_images: Any, student_spec: dict) -> Any:
        """The student's normalised images, normalised the teacher's way (see the module doc)."""
        from lensnet.data.normalise import apply_normalisation, invert_normalisation

        if student_spec == self.normalisation and not self.takes_raw:
            return student_images
        if student_spec["method"] in ("none", "dataset"):
            raw = invert_normalisation(student_images, student_spec, student_images)
        else:  # per-image student: any positive affine version of the raw image is as good as raw
            raw = student_images
        return raw if self.takes_raw else apply_normalisation(raw, self.normalisation)

    def probabilities(self, student_images: Any, student_spec: dict) -> Any:
        x = self.inputs(student_images, student_spec)
        if self.takes_raw:
            p = self.model(images=tf.cast(x, tf.float32))[self.output_name]
        else:
            p = self.model(x, training=False)
        p = tf.stop_gradient(tf.cast(p, tf.float32))
        return tf.gather(p, self.class_order, axis=-1)

    def backbone(self) -> Any:
        if self.takes_raw:
            raise LensnetError(f"teacher {self.path}: feature distillation needs a run directory (a Keras "
                               "model), not an export")
        from lensnet.models.backbone import Backbone

        found = [layer for layer in self.model.layers if isinstance(layer, Backbone)]
        if not found:
            raise LensnetError(f"teacher {self.path}: no lensnet backbone inside its model")
        return found[0]


def load_teacher(path: str, task: str, class_names: list[str], image_shape: tuple, student_spec: dict) -> Teacher:
    """The teacher at `path` (a run or an export directory), checked against the student's task,
    classes, image shape and normalisation."""
    from lensnet.artifacts.runs import read_run

    where = Path(path)
    if not where.exists():
        raise LensnetError(f"teacher {path} not found (give a run directory or an export directory)")
    if (where / "run.json").is_file():
        info = read_run(where)
        kind, spec, shape, normalisation = info.task, info.output, info.input_shape, info.normalisation
        source = "run"
    else:
        from lensnet.artifacts.exports import load_export

        exported = load_export(where)
        card = exported.card
        kind, spec, shape, normalisation = card.get("task"), card["output"], exported.input_shape, card["normalisation"]
        source = "export"
    if kind != task:
        raise LensnetError(f"teacher {path} was trained for task {kind!r}, the student for {task!r}")
    teacher_classes = list(spec.get("class_names") or [])
    if sorted(teacher_classes) != sorted(class_names):
        raise LensnetError(f"teacher {path} classes ({', '.join(teacher_classes) or 'none'}) differ from the "
                           f"dataset's ({', '.join(class_names)})")
    if tuple(int(d) for d in shape) != tuple(int(d) for d in image_shape):
        raise LensnetError(f"teacher {path} takes images of shape {tuple(shape)}, the dataset has "
                           f"{tuple(image_shape)}")
    if student_spec["method"] in PER_IMAGE and normalisation["method"] not in PER_IMAGE:
        raise LensnetError(
            f"teacher {path} normalises by {normalisation['method']!r} (absolute flux), which cannot be recovered "
            f"from images normalised per image ({student_spec['method']!r}); train the student with "
            f"--set data.normalise={normalisation['method']} or none"
        )
    if student_spec["method"] == "asinh" and (source != "run" or normalisation != student_spec):
        # asinh is non-linear: the pixels it was applied to cannot be recovered from the student's input
        raise LensnetError(
            f"teacher {path} needs images normalised by {normalisation['method']!r}, which cannot be recovered "
            f"from images normalised by 'asinh'; use a teacher run trained with the student's asinh spec, or "
            f"train the student with --set data.normalise={normalisation['method']}"
        )
    order = [teacher_classes.index(c) for c in class_names]
    if source == "run":
        from lensnet.tasks.checkpoints import load_model

        model = load_model(where)
        model.trainable = False
        return Teacher(where, model, False, normalisation, order)
    signature = _load_signature(exported)
    return Teacher(where, signature, True, normalisation, order, output_name=exported.output_name)


def _load_signature(exported: Any) -> Any:
    from lensnet.artifacts.export_layout import SIGNATURE

    try:
        loaded = tf.saved_model.load(str(exported.path))
    except Exception as exc:  # damaged or foreign SavedModel
        raise LensnetError(f"teacher {exported.path}: cannot load its SavedModel: {type(exc).__name__}") from None
    function = loaded.signatures[SIGNATURE]
    function._lensnet_keepalive = loaded  # the signature needs its SavedModel object alive
    return function


# ---- targets and losses -------------------------------------------------------------------------


def distillation_targets(teacher_probabilities: Any, mode: str, temperature: float = 1.0) -> Any:
    """What the distillation head learns: the one-hot teacher argmax (hard) or the teacher's
    distribution softened at `temperature` (soft)."""
    p = tf.cast(teacher_probabilities, tf.float32)
    if mode == "hard":
        return tf.one_hot(tf.argmax(p, axis=-1), tf.shape(p)[-1])
    return tf.nn.softmax(tf.math.log(tf.maximum(p, 1e-12)) / temperature, axis=-1)


def attention_distillation_loss(student_weights: Any, teacher_weights: Any, student_prefix: int,
                                teacher_prefix: int) -> Any:
    """Per-example KL(teacher || student) between two blocks' attention probabilities
    (batch, heads, N, N), over keys, averaged over queries.

    Each side is averaged over its heads first. Why not match head to head: the two models' heads
    are learned independently, so head i of one has no reason to correspond to head i of the other,
    and their counts may differ (vit_small 6, deit_tiny 3); the head average is a row-stochastic map
    whatever the head count, with nothing to learn and nothing to export, and it is the map that
    attention rollout (and so attention-guided erasing) reads. When the prefix-token counts differ
    (DeiT 2, ViT 1) only the patch-to-patch block is compared, each row renormalised over the patch
    keys; with equal counts the whole map, prefix tokens included.
    """
    student = tf.reduce_mean(tf.cast(student_weights, tf.float32), axis=1)
    teacher = tf.stop_gradient(tf.reduce_mean(tf.cast(teacher_weights, tf.float32), axis=1))
    if int(student_prefix) != int(teacher_prefix):
        student = student[:, int(student_prefix):, int(student_prefix):]
        teacher = teacher[:, int(teacher_prefix):, int(teacher_prefix):]
        student = student / tf.maximum(tf.reduce_sum(student, axis=-1, keepdims=True), 1e-12)
        teacher = teacher / tf.maximum(tf.reduce_sum(teacher, axis=-1, keepdims=True), 1e-12)
    if student.shape[-1] is not None and teacher.shape[-1] is not None and student.shape[-1] != teacher.shape[-1]:
        raise LensnetError(f"attention distillation: the student attends over {student.shape[-1]} tokens, the "
                           f"teacher over {teacher.shape[-1]}; use the same patch grid")
    eps = 1e-12
    kl = tf.reduce_sum(teacher * (tf.math.log(tf.maximum(teacher, eps)) - tf.math.log(tf.maximum(student, eps))),
                       axis=-1)
    return tf.reduce_mean(kl, axis=-1)


def check_block_matching(student: Any, teacher: Any, options: DistillationOptions, teacher_path: str) -> None:
    """Token or attention matching needs ViT/DeiT backbones on both sides, the same patch grid and
    the chosen blocks on both sides: checked before anything is written (one-line errors)."""
    from lensnet.models.tokens import block_index, is_plain_transformer

    key = "feature_block" if options.feature_block is not None else "attention_block"
    for who, backbone in (("student", student), (f"teacher {teacher_path}", teacher)):
        if not is_plain_transformer(backbone):
            raise LensnetError(f"task.{key}: the {who} ({backbone.name}) is not a ViT or DeiT; token and "
                               "attention distillation need transformer blocks on both sides")
    if tuple(student.patch_grid) != tuple(teacher.patch_grid):
        raise LensnetError(f"task.{key}: the student's patch grid {tuple(student.patch_grid)} differs from the "
                           f"teacher's {tuple(teacher.patch_grid)} ({teacher_path}); use the same patch size")
    for block_key in ("feature_block", "attention_block"):
        block = getattr(options, block_key)
        if block is None:
            continue
        for who, backbone in (("student", student), ("teacher", teacher)):
            try:
                block_index(backbone, block)
            except LensnetError as exc:
                raise LensnetError(f"task.{block_key}={block}: the {who} {exc}") from None


@keras.saving.register_keras_serializable(package="lensnet")
class TakeToken(keras.layers.Layer):
    """Token `index` of a sequence (batch, N, D) -> (batch, D): DeiT's class or distillation token."""

    def __init__(self, index: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, inputs: Any) -> Any:
        return inputs[:, self.index, :]

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "index": self.index}


def distillation_network(backbone_factory: Any, input_shape: tuple, num_classes: int, *, dropout: float = 0.0,
                         name: str = "task") -> keras.Model:
    """images -> {"probabilities", "class_logits", "distill_logits"}.

    A DeiT backbone (two prefix tokens) gives its class token to the class head and its
    distillation token to the distillation head; any other backbone gives its pooled features to
    both. "probabilities" (the exported output) is the mean of the two heads' softmax.
    """
    from lensnet.models.pooling import pool_features

    backbone = backbone_factory(tuple(input_shape))
    inputs = keras.Input(tuple(input_shape), name="images")
    features = backbone(inputs)
    if getattr(backbone, "feature_kind", None) == "tokens" and backbone.num_prefix_tokens == 2:
        class_features = TakeToken(0, dtype="float32", name="class_token")(features)
        distill_features = TakeToken(1, dtype="float32", name="distillation_token")(features)
    else:
        class_features = distill_features = pool_features(backbone, features)
    if dropout:
        drop = keras.layers.Dropout(float(dropout), name="head_dropout")
        class_features, distill_features = drop(class_features), drop(distill_features)
    class_logits = keras.layers.Dense(num_classes, dtype="float32", name="class_logits")(class_features)
    distill_logits = keras.layers.Dense(num_classes, dtype="float32", name="distill_logits")(distill_features)
    softmax = keras.layers.Softmax(dtype="float32")
    probabilities = keras.layers.Average(dtype="float32", name="class_probabilities")(
        [softmax(class_logits), softmax(distill_logits)])
    outputs = {"probabilities": probabilities, "class_logits": class_logits, "distill_logits": distill_logits}
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="lensnet")
class DistillationModel(TaskModel):
    """A student with class and distillation heads; the teacher is attached, never saved.

    Args:
        network: `distillation_network(...)`.
        distill, alpha, temperature, feature_block, feature_weight, attention_block, attention_weight:
            see `DistillationOptions`.
        normalisation: the student's normalisation spec (the teacher's inputs are derived from it).
        label_smoothing: of the label loss.
        teacher_dim: token width of the teacher (feature distillation): the student's block tokens
            are projected to it by `token_projection`, a training-only layer (saved in last.keras for
            resuming, never exported). keras-hub runs a ViT's blocks inside one layer, so a block's
            tokens are computed here (`lensnet.models.tokens.walk_blocks`), not by `network`.
        teacher_prefix: the teacher's prefix-token count (attention distillation compares only the
            patch-to-patch maps when it differs from the student's). Attention matching adds no
            weights: nothing of it is saved or exported.
    """

    def __init__(self, network: keras.Model, distill: str = "hard", alpha: float = 0.5, temperature: float = 3.0,
                 feature_block: int | None = None, feature_weight: float = 1.0, normalisation: dict | None = None,
                 label_smoothing: float = 0.0, teacher_dim: int | None = None, attention_block: int | None = None,
                 attention_weight: float = 1.0, teacher_prefix: int | None = None, **kwargs: Any) -> None:
        super().__init__(network, **{"output": "probabilities", **kwargs})
        self.teacher_dim = None if teacher_dim is None else int(teacher_dim)
        if feature_block is not None:
            if self.teacher_dim is None:
                raise ValueError("feature distillation needs teacher_dim")
            self.token_projection = keras.layers.Dense(self.teacher_dim, dtype="float32", name="token_projection")
            self.token_projection.build((None, None, self.student_backbone().feature_dim))
        self.distill, self.alpha, self.temperature = distill, float(alpha), float(temperature)
        self.feature_block, self.feature_weight = feature_block, float(feature_weight)
        self.attention_block, self.attention_weight = attention_block, float(attention_weight)
        self.teacher_prefix = None if teacher_prefix is None else int(teacher_prefix)
        self.normalisation = dict(normalisation or {"method": "none"})
        self.label_smoothing = float(label_smoothing)
        # A plain namespace, not an attribute Keras tracks: the teacher's weights stay out of this
        # model's variables, checkpoints and exports.
        self.attached = types.SimpleNamespace(teacher=None, backbone=None)

    def student_backbone(self) -> Any:
        from lensnet.models.backbone import Backbone

        return next(layer for layer in self.network.layers if isinstance(layer, Backbone))

    def attach_teacher(self, teacher: Teacher) -> None:
        self.attached.teacher = teacher
        self.attached.backbone = teacher.backbone() if self.matches_blocks() else None

    def matches_blocks(self) -> bool:
        return self.feature_block is not None or self.attention_block is not None

    def block_outputs(self, backbone: Any, images: Any) -> dict:
        """`backbone`'s patch tokens after feature_block and attention weights of attention_block
        (the ones configured), from one walk through its blocks."""
        from lensnet.models.tokens import block_index, walk_blocks

        wanted = [block_index(backbone, b) for b in (self.feature_block, self.attention_block) if b is not None]
        last = max(wanted)
        tokens, maps = walk_blocks(backbone, images, last, scores=self.attention_block is not None)
        out = {}
        if self.feature_block is not None:
            if block_index(backbone, self.feature_block) != last:
                tokens = walk_blocks(backbone, images, self.feature_block)[0]
            out["tokens"] = tf.cast(tokens[:, backbone.num_prefix_tokens:, :], tf.float32)
        if self.attention_block is not None:
            out["attention"] = maps[block_index(backbone, self.attention_block)]
        return out

    def teacher_outputs(self, x: Any) -> dict:
        """The teacher's class probabilities (student class order) and, with feature_block /
        attention_block, its patch tokens / attention weights."""
        teacher = self.attached.teacher
        if teacher is None:
            raise LensnetError("this distillation model has no teacher attached (attach_teacher)")
        out = {"probabilities": teacher.probabilities(x, self.normalisation)}
        if self.matches_blocks():
            blocks = self.block_outputs(self.attached.backbone, teacher.inputs(x, self.normalisation))
            out.update({k: tf.stop_gradient(v) for k, v in blocks.items()})
        return out

    def matching_losses(self, x: Any, teacher: dict) -> dict:
        """Per-example token ("feature") and attention ("attention") matching losses, unweighted,
        of the student on images `x` against `teacher_outputs(x)`; {} when neither is configured."""
        if not self.matches_blocks():
            return {}
        backbone = self.student_backbone()
        student = self.block_outputs(backbone, x)  # dropout 0 in these blocks by default
        losses = {}
        if self.feature_block is not None:
            projected = self.token_projection(student["tokens"])
            if projected.shape[1] != teacher["tokens"].shape[1]:
                raise LensnetError(f"feature distillation: the student has {projected.shape[1]} patch tokens, "
                                   f"the teacher {teacher['tokens'].shape[1]}; use the same patch grid")
            losses["feature"] = tf.reduce_mean(tf.square(projected - teacher["tokens"]), axis=[1, 2])
        if self.attention_block is not None:
            prefix = int(backbone.num_prefix_tokens)
            teacher_prefix = prefix if self.teacher_prefix is None else self.teacher_prefix
            losses["attention"] = attention_distillation_loss(student["attention"], teacher["attention"], prefix,
                                                              teacher_prefix)
        return losses

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        outputs = self.network(x, training=training)
        y = tf.cast(y, tf.float32)
        if self.label_smoothing:
            k = tf.cast(tf.shape(y)[-1], tf.float32)
            y_smooth = y * (1.0 - self.label_smoothing) + self.label_smoothing / k
        else:
            y_smooth = y
        label_loss = tf.nn.softmax_cross_entropy_with_logits(y_smooth, outputs["class_logits"])
        teacher = self.teacher_outputs(x)
        target = distillation_targets(teacher["probabilities"], self.distill, self.temperature)
        if self.distill == "hard":
            distill_loss = tf.nn.softmax_cross_entropy_with_logits(target, outputs["distill_logits"])
        else:
            t = self.temperature
            log_student = tf.nn.log_softmax(outputs["distill_logits"] / t, axis=-1)
            distill_loss = t * t * tf.reduce_sum(
                target * (tf.math.log(tf.maximum(target, 1e-12)) - log_student), axis=-1)
        per_example = (1.0 - self.alpha) * label_loss + self.alpha * distill_loss
        matching = self.matching_losses(x, teacher)
        if "feature" in matching:
            per_example += self.feature_weight * matching["feature"]
        if "attention" in matching:
            per_example += self.attention_weight * matching["attention"]
        if sample_weight is not None:
            per_example *= tf.cast(sample_weight, tf.float32)
        loss = average_loss(per_example, global_batch_size) + self.regularization()
        return loss, MetricInputs(y, outputs["probabilities"])

    def get_config(self) -> dict:
        return {**super().get_config(), "distill": self.distill, "alpha": self.alpha,
                "temperature": self.temperature, "feature_block": self.feature_block,
                "feature_weight": self.feature_weight, "normalisation": self.normalisation,
                "label_smoothing": self.label_smoothing, "teacher_dim": self.teacher_dim,
                "attention_block": self.attention_block, "attention_weight": self.attention_weight,
                "teacher_prefix": self.teacher_prefix}


def build_student(task: Any, backbone_factory: Any, info: Any, config: dict) -> DistillationModel:
    """The distillation model of a classification `task` whose options name a teacher."""
    from lensnet.data.normalise import normalisation_spec

    options = task.config
    spec = normalisation_spec(config["data"]["normalise"], info)
    teacher = load_teacher(options.teacher, task.name, list(task.class_names), tuple(info.image_shape), spec)
    network = distillation_network(backbone_factory, info.image_shape, len(task.class_names),
                                   dropout=config["model"].get("dropout") or 0.0,
                                   name=f"{task.name}_{config['model']['name']}")
    teacher_dim = teacher_prefix = None
    if options.feature_block is not None or options.attention_block is not None:
        from lensnet.models.backbone import Backbone

        teacher_backbone = teacher.backbone()
        student = next(layer for layer in network.layers if isinstance(layer, Backbone))
        check_block_matching(student, teacher_backbone, options, options.teacher)
        teacher_prefix = int(teacher_backbone.num_prefix_tokens)
        if options.feature_block is not None:
            teacher_dim = teacher_backbone.feature_dim
    model = DistillationModel(network, distill=options.distill, alpha=options.alpha,
                              temperature=options.temperature, feature_block=options.feature_block,
                              feature_weight=options.feature_weight, normalisation=spec,
                              label_smoothing=task.label_smoothing(), teacher_dim=teacher_dim,
                              attention_block=options.attention_block, attention_weight=options.attention_weight,
                              teacher_prefix=teacher_prefix,
                              metrics_list=task.metrics(),
                              name=f"{task.name}_distillation")
    model.attach_teacher(teacher)
    return model
