"""The self-supervised task models: SimCLR, BYOL, DINO and MAE (keras-io's examples are the pattern).

Each is a `TaskModel` that overrides `compute_step` only, so `model.fit` (one device,
MirroredStrategy) and the multi-worker loop train them unchanged. Every weight lives in
functional models passed to the constructor (`network`, and BYOL's `target` / MAE's `decoder`),
so checkpoints save and reload under safe_mode, and `--resume` restores them exactly.
The exported model (`inference_model()`) is the pooled backbone embedding.

- SimCLR: both views in one batch through backbone -> pool -> projection MLP; NT-Xent with a
  temperature over the 2N projections of the local batch (negatives are the replica's own batch,
  as in keras-io's example; no cross-replica gather).
- BYOL: online network (backbone, projector, predictor) and a target network (backbone,
  projector) updated as an exponential moving average of the online one. The EMA is applied at
  the START of each training step, from the online weights the previous step left: the custom
  multi-worker loop only calls `compute_step` (no hook after `apply_gradients`), and this order is
  the same update shifted by one step (at step 0 target == online). The target's weights are
  variables of the model, so checkpoints and `--resume` carry them. The EMA momentum follows the
  paper's cosine schedule from `ema` (0.996) at step 0 to 1 at `total_steps` (`cosine_momentum`),
  read from the optimizer's step counter, which checkpoints carry: a resumed run continues it.
- DINO: the BYOL machinery with a teacher (backbone, projection MLP, L2-normalised bottleneck,
  weight-normalised prototype layer) instead of a target, and a cross-entropy between the
  teacher's centred, sharpened softmax on the two global crops and the student's softmax on every
  other crop (the global ones and `local` crops). The centre is an EMA of the teacher's logits,
  averaged over replicas; the teacher's temperature warms up linearly.
- MAE: the registry ViT/DeiT run on the visible patches only (`lensnet.models.masked`), a light
  transformer decoder with a learned mask token, and a loss on the masked patches only
  (optionally on per-patch normalised pixels).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from lensnet.tasks.model import MetricInputs, TaskModel, average_loss


def _ones_like_rows(x: Any) -> Any:
    return tf.ones(tf.shape(x)[:1])


def cosine_momentum(base: float, step: Any, total_steps: int) -> Any:
    """BYOL's target momentum at `step`: 1 - (1 - base) (cos(pi step / total) + 1) / 2, from `base` at
    step 0 to 1 at `total_steps` and after (total_steps 0: the constant `base`)."""
    if not total_steps:
        return tf.constant(float(base), tf.float32)
    progress = tf.minimum(tf.cast(step, tf.float32) / float(total_steps), 1.0)
    return 1.0 - (1.0 - float(base)) * (tf.cos(math.pi * progress) + 1.0) / 2.0


def _step(model: keras.Model) -> Any:
    """The optimizer's step counter (0 for a model not compiled: a loaded checkpoint)."""
    optimizer = getattr(model, "optimizer", None)
    return optimizer.iterations if optimizer is not None else tf.constant(0, tf.int64)


@keras.saving.register_keras_serializable(package="lensnet")
class SimCLRModel(TaskModel):
    """`network`: images -> {"embedding", "projection"}; exported output: "embedding"."""

    def __init__(self, network: keras.Model, temperature: float = 0.1, **kwargs: Any) -> None:
        super().__init__(network, **{"output": "embedding", **kwargs})
        self.temperature = float(temperature)

    def contrastive_loss(self, z1: Any, z2: Any) -> tuple[Any, Any]:
        """NT-Xent per example (the mean of its two views' cross-entropies) and whether both views found their pair."""
        z = tf.math.l2_normalize(tf.concat([z1, z2], 0), axis=1)
        n = tf.shape(z1)[0]
        logits = tf.matmul(z, z, transpose_b=True) / self.temperature
        logits -= 1e9 * tf.eye(2 * n)  # a view is never its own positive or negative
        positives = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(positives, logits)
        hit = tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), positives), tf.float32)
        return 0.5 * (ce[:n] + ce[n:]), hit[:n] * hit[n:]

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        n = tf.shape(y["view1"])[0]
        z = self.network(tf.concat([y["view1"], y["view2"]], 0), training=training)["projection"]
        per_example, hit = self.contrastive_loss(z[:n], z[n:])
        weight = _ones_like_rows(x) if sample_weight is None else sample_weight
        loss = average_loss(per_example * weight, global_batch_size) + self.regularization()
        return loss, MetricInputs(tf.ones_like(hit), hit)  # Accuracy metric: fraction of pairs found

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="lensnet")
class BYOLModel(TaskModel):
    """`network`: images -> {"embedding", "projection", "prediction"} whose layer `encoder_name` is the
    online encoder (images -> {"embedding", "projection"}); `target`: a model of the encoder's structure."""

    def __init__(self, network: keras.Model, target: keras.Model, ema: float = 0.996, total_steps: int = 0,
                 encoder_name: str = "online_encoder", **kwargs: Any) -> None:
        super().__init__(network, **{"output": "embedding", **kwargs})
        # The target stays `trainable`: Keras runs the BatchNormalization of a non-trainable layer in
        # inference mode, and a target normalising with lagging moving averages (not the batch's statistics,
        # as in BYOL) gives projections dominated by one common direction that a constant prediction
        # matches -- it collapsed (loss 0.87 -> 0.01, class-blind embedding). The optimizer never sees
        # the target's variables (`_without_target`), and the loss stops its gradient.
        self.target = target
        self.ema = float(ema)
        self.total_steps = int(total_steps)  # the cosine schedule's horizon; 0 = constant `ema`
        self.encoder_name = encoder_name
        self.built = network.built and target.built

    def _without_target(self, variables: list) -> list:
        # Never the target's: a reload sets `trainable` on the whole model, and with it on the target.
        target = {id(v) for v in self.target.variables}
        return [v for v in variables if id(v) not in target]

    @property
    def trainable_weights(self) -> list:
        return self._without_target(super().trainable_weights)

    @property
    def trainable_variables(self) -> list:
        return self._without_target(super().trainable_variables)

    @property
    def non_trainable_weights(self) -> list:
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    @property
    def non_trainable_variables(self) -> list:
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trainable]

    def pairs(self) -> list[tuple[Any, Any]]:
        """(target variable, online variable) pairs, trainable and non-trainable (BN statistics) alike."""
        online = self.network.get_layer(self.encoder_name).weights
        target = self.target.weights
        if len(online) != len(target) or any(a.shape != b.shape for a, b in zip(online, target)):
            raise ValueError("BYOL target and online encoder differ in structure")
        return list(zip(target, online))

    def copy_online_to_target(self) -> None:
        for t, o in self.pairs():
            t.assign(o)

    def momentum(self, step: Any = None) -> Any:
        """The EMA momentum at `step` (default: the optimizer's current step)."""
        return cosine_momentum(self.ema, _step(self) if step is None else step, self.total_steps)

    def update_target(self, momentum: Any = None) -> None:
        m = self.momentum() if momentum is None else tf.cast(momentum, tf.float32)
        for t, o in self.pairs():
            t.assign(tf.cast(m, t.dtype) * t + tf.cast(1.0 - m, t.dtype) * tf.cast(o, t.dtype))

    @staticmethod
    def regression_loss(p: Any, z: Any) -> Any:
        p, z = tf.math.l2_normalize(p, axis=1), tf.math.l2_normalize(tf.stop_gradient(z), axis=1)
        return 2.0 - 2.0 * tf.reduce_sum(p * z, axis=1)

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        if training:
            self.update_target()  # the EMA of the step before (see the module doc)
        n = tf.shape(y["view1"])[0]
        views = tf.concat([y["view1"], y["view2"]], 0)
        p = self.network(views, training=training)["prediction"]
        z = self.target(views, training=training)["projection"]
        # symmetric: view 1's prediction regresses view 2's target projection, and vice versa
        per_example = self.regression_loss(p[:n], z[n:]) + self.regression_loss(p[n:], z[:n])
        weight = _ones_like_rows(x) if sample_weight is None else sample_weight
        loss = average_loss(per_example * weight, global_batch_size) + self.regularization()
        return loss, MetricInputs(per_example, per_example)

    def get_config(self) -> dict:
        return {**super().get_config(), "target": keras.saving.serialize_keras_object(self.target),
                "ema": self.ema, "total_steps": self.total_steps, "encoder_name": self.encoder_name}

    @classmethod
    def from_config(cls, config: dict) -> BYOLModel:
        config = dict(config)
        config["target"] = keras.saving.deserialize_keras_object(config["target"])
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="lensnet")
class NormalisedDense(keras.layers.Layer):
    """DINO's last layer: a bias-free dense layer whose weight columns are L2-normalised at every call
    (weight normalisation with the gain fixed at 1, DINO's `norm_last_layer`), so the prototypes are
    unit vectors and the logits of an L2-normalised input are cosines.

    Args:
        units: prototypes (output width).
    """

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape: Any) -> None:
        self.kernel = self.add_weight(shape=(int(input_shape[-1]), self.units), name="kernel",
                                      initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, inputs: Any) -> Any:
        kernel = self.kernel / ops.maximum(ops.sqrt(ops.sum(ops.square(self.kernel), axis=0, keepdims=True)), 1e-12)
        return ops.matmul(inputs, ops.cast(kernel, inputs.dtype))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="lensnet")
class Centre(keras.layers.Layer):
    """DINO's centre: a non-trainable (1, units) vector subtracted from the teacher's logits, kept by
    `update` as an EMA of their batch mean.

    Args:
        units: width of the logits.
    """

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape: Any) -> None:
        # aggregation "mean": replicas assign the same all-reduced value, and the epoch-end average keeps it
        self.centre = self.add_weight(shape=(1, self.units), initializer="zeros", trainable=False, name="centre",
                                      aggregation="mean")

    def call(self, inputs: Any) -> Any:
        return inputs - ops.cast(self.centre, inputs.dtype)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


def centre_model(units: int, name: str = "dino_centre") -> keras.Model:
    """logits (N, units) -> logits - centre: the functional model that holds DINO's centre."""
    logits = keras.Input((units,), name="teacher_logits")
    return keras.Model(logits, Centre(units, name="centre")(logits), name=name)


@keras.saving.register_keras_serializable(package="lensnet")
class DINOModel(BYOLModel):
    """`network`: images -> {"embedding", "logits"} whose layer `encoder_name` is the student encoder;
    `target`: the teacher, a model of the encoder's structure (EMA of the student, as BYOL's target);
    `centre`: see `centre_model`. y: {"view1", "view2"} global crops, optionally "local" (N, L, H, W, C)."""

    def __init__(self, network: keras.Model, target: keras.Model, centre: keras.Model, ema: float = 0.996,
                 total_steps: int = 0, student_temperature: float = 0.1, teacher_temperature: float = 0.07,
                 teacher_temperature_start: float = 0.04, teacher_warmup_steps: int = 0,
                 centre_momentum: float = 0.9, encoder_name: str = "student_encoder", **kwargs: Any) -> None:
        super().__init__(network, target, ema=ema, total_steps=total_steps, encoder_name=encoder_name, **kwargs)
        self.centre = centre
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.teacher_temperature_start = float(teacher_temperature_start)
        self.teacher_warmup_steps = int(teacher_warmup_steps)
        self.centre_momentum = float(centre_momentum)
        self.built = self.built and centre.built

    def teacher_temperature_at(self, step: Any) -> Any:
        """Linear warm-up from `teacher_temperature_start` to `teacher_temperature` over the warm-up steps."""
        if not self.teacher_warmup_steps:
            return tf.constant(self.teacher_temperature, tf.float32)
        progress = tf.minimum(tf.cast(step, tf.float32) / float(self.teacher_warmup_steps), 1.0)
        return self.teacher_temperature_start + (self.teacher_temperature - self.teacher_temperature_start) * progress

    def update_centre(self, teacher_logits: Any) -> None:
        batch_centre = tf.reduce_mean(tf.cast(teacher_logits, tf.float32), axis=0, keepdims=True)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:  # the global batch's mean, as DINO
            batch_centre = context.all_reduce(tf.distribute.ReduceOp.MEAN, batch_centre)
        variable = self.centre.get_layer("centre").centre
        m = self.centre_momentum
        variable.assign(m * variable + (1.0 - m) * batch_centre)

    def dino_loss(self, student_logits: list, teacher_logits: Any, step: Any) -> tuple[Any, Any]:
        """Per-example loss (N,) averaged over the (teacher global crop, other student crop) pairs, and
        the teacher's sharpened, centred probabilities (2N, K)."""
        n = tf.shape(student_logits[0])[0]
        teacher = tf.nn.softmax(tf.cast(self.centre(teacher_logits), tf.float32)
                                / self.teacher_temperature_at(step), axis=-1)
        teacher = tf.stop_gradient(teacher)
        total, pairs = 0.0, 0
        for t_index in range(2):
            t = teacher[t_index * n:(t_index + 1) * n]
            for s_index, logits in enumerate(student_logits):
                if s_index == t_index:  # a crop never predicts its own teacher output
                    continue
                log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32) / self.student_temperature, axis=-1)
                total += -tf.reduce_sum(t * log_p, axis=-1)
                pairs += 1
        return total / float(pairs), teacher

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        step = _step(self)
        if training:
            self.update_target()  # the EMA of the step before (see the module doc)
        n = tf.shape(y["view1"])[0]
        globals_ = tf.concat([y["view1"], y["view2"]], 0)
        crops = [globals_]
        if "local" in y:  # (N, L, H, W, C) -> L batches of N, one network call for all
            local = y["local"]
            count = int(local.shape[1])
            crops.append(tf.reshape(tf.transpose(local, [1, 0, 2, 3, 4]), tf.concat([[-1], tf.shape(local)[2:]], 0)))
        else:
            count = 0
        student = self.network(tf.concat(crops, 0), training=training)["logits"]
        student_logits = [student[i * n:(i + 1) * n] for i in range(2 + count)]
        teacher_logits = self.target(globals_, training=training)["logits"]
        per_example, _ = self.dino_loss(student_logits, teacher_logits, step)
        if training:
            self.update_centre(teacher_logits)
        weight = _ones_like_rows(x) if sample_weight is None else sample_weight
        loss = average_loss(per_example * weight, global_batch_size) + self.regularization()
        return loss, MetricInputs(per_example, per_example)

    def get_config(self) -> dict:
        return {**super().get_config(), "centre": keras.saving.serialize_keras_object(self.centre),
                "student_temperature": self.student_temperature, "teacher_temperature": self.teacher_temperature,
                "teacher_temperature_start": self.teacher_temperature_start,
                "teacher_warmup_steps": self.teacher_warmup_steps, "centre_momentum": self.centre_momentum}

    @classmethod
    def from_config(cls, config: dict) -> DINOModel:
        config = dict(config)
        config["centre"] = keras.saving.deserialize_keras_object(config["centre"])
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="lensnet")
class MaskTokenFill(keras.layers.Layer):
    """MAE decoder input: the encoded prefix + visible tokens, mask tokens in the masked places,
    unshuffled to patch order (`ids_restore`), plus the decoder's own position embedding.

    Args:
        num_patches: patch tokens of the full image.
        num_prefix_tokens: class/distillation tokens in front (kept, not shuffled).
    """

    def __init__(self, num_patches: int, num_prefix_tokens: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_patches = int(num_patches)
        self.num_prefix_tokens = int(num_prefix_tokens)

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[0][-1])
        self.mask_token = self.add_weight(shape=(1, 1, dim), initializer="zeros", name="mask_token")
        self.position_embedding = self.add_weight(
            shape=(1, self.num_prefix_tokens + self.num_patches, dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02), name="position_embedding")

    def call(self, inputs: Any) -> Any:
        tokens, ids_restore = inputs
        p = self.num_prefix_tokens
        prefix, visible = tokens[:, :p, :], tokens[:, p:, :]
        batch, kept = ops.shape(visible)[0], ops.shape(visible)[1]
        masks = ops.tile(ops.cast(self.mask_token, visible.dtype), (batch, self.num_patches - kept, 1))
        shuffled = ops.concatenate([visible, masks], axis=1)
        ordered = ops.take_along_axis(shuffled, ops.expand_dims(ops.cast(ids_restore, "int32"), -1), axis=1)
        return ops.concatenate([prefix, ordered], axis=1) + ops.cast(self.position_embedding, visible.dtype)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0][0], self.num_prefix_tokens + self.num_patches, input_shape[0][-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "num_patches": self.num_patches,
                "num_prefix_tokens": self.num_prefix_tokens}


def mae_decoder(num_patches: int, num_prefix_tokens: int, num_visible: int, encoder_dim: int, patch_pixels: int,
                dim: int = 128, depth: int = 2, heads: int = 4, name: str = "mae_decoder") -> keras.Model:
    """[encoded (N, prefix + visible, encoder_dim), ids_restore (N, patches)] -> pixels (N, patches, patch_pixels)."""
    import keras_hub

    tokens = keras.Input((num_prefix_tokens + num_visible, encoder_dim), name="encoded")
    ids_restore = keras.Input((num_patches,), dtype="int32", name="ids_restore")
    x = keras.layers.Dense(dim, name="decoder_embed")(tokens)
    x = MaskTokenFill(num_patches, num_prefix_tokens, name="mask_token_fill")([x, ids_restore])
    for i in range(depth):
        x = keras_hub.layers.TransformerEncoder(intermediate_dim=4 * dim, num_heads=heads, activation="gelu",
                                                normalize_first=True, name=f"decoder_block_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")(x)
    pixels = keras.layers.Dense(patch_pixels, dtype="float32", name="decoder_pixels")(x)
    return keras.Model([tokens, ids_restore], pixels, name=name)


def masked_patch_loss(per_patch: Any, mask: Any) -> Any:
    """Mean of `per_patch` (N, P) over the masked patches (mask 1) of each example: (N,)."""
    mask = tf.cast(mask, per_patch.dtype)
    return tf.reduce_sum(per_patch * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="lensnet")
class MAEModel(TaskModel):
    """`network`: images -> {"embedding"} (the registry backbone inside is the MAE encoder); `decoder`:
    see `mae_decoder`. `y["noise"]` (N, patches) picks the kept patches: the `num_visible` lowest."""

    def __init__(self, network: keras.Model, decoder: keras.Model, backbone_name: str, num_visible: int,
                 norm_pix_loss: bool = False, **kwargs: Any) -> None:
        super().__init__(network, **{"output": "embedding", **kwargs})
        from lensnet.models.masked import VisibleTokenEncoder

        self.decoder = decoder
        self.backbone_name = backbone_name
        self.num_visible = int(num_visible)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.encoder = VisibleTokenEncoder(network.get_layer(backbone_name))
        self.built = network.built and decoder.built

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.encoder.patch_size)

    def split(self, noise: Any) -> tuple[Any, Any, Any]:
        """(kept patch indices (N, K), ids_restore (N, P), mask (N, P): 1 = masked) from per-patch noise."""
        ids_shuffle = tf.argsort(noise, axis=1, stable=True)
        ids_restore = tf.argsort(ids_shuffle, axis=1, stable=True)
        keep = ids_shuffle[:, : self.num_visible]
        shuffled_mask = tf.concat([tf.zeros_like(keep, tf.float32),
                                   tf.ones_like(ids_shuffle[:, self.num_visible:], tf.float32)], 1)
        return keep, ids_restore, tf.gather(shuffled_mask, ids_restore, batch_dims=1)

    def targets(self, images: Any) -> Any:
        from lensnet.models.masked import patchify

        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = tf.nn.moments(target, axes=[-1], keepdims=True)
            target = (target - mean) / tf.sqrt(var + 1e-6)
        return target

    def predict_patches(self, images: Any, noise: Any, training: bool = False) -> tuple[Any, Any]:
        """(predicted patches (N, P, pixels), mask (N, P))."""
        keep, ids_restore, mask = self.split(noise)
        encoded = self.encoder.encode(images, keep, training=training)
        pixels = self.decoder([encoded, ids_restore], training=training)
        return pixels[:, self.encoder.num_prefix_tokens:, :], mask

    def per_patch_error(self, images: Any, noise: Any, training: bool = False) -> tuple[Any, Any]:
        pred, mask = self.predict_patches(images, noise, training)
        return tf.reduce_mean(tf.square(pred - self.targets(images)), axis=-1), mask

    def reconstruct(self, images: Any, noise: Any) -> tuple[Any, Any]:
        """(masked input, reconstruction with the visible patches pasted back), as images; inference mode."""
        from lensnet.models.masked import patchify, unpatchify

        images = tf.convert_to_tensor(images, tf.float32)
        pred, mask = self.predict_patches(images, noise, training=False)
        patches = patchify(images, self.patch_size)
        if self.norm_pix_loss:  # predictions are per-patch normalised: bring back the visible scale
            mean, var = tf.nn.moments(patches, axes=[-1], keepdims=True)
            pred = pred * tf.sqrt(var + 1e-6) + mean
        m = mask[..., None]
        shape = tuple(images.shape[1:])
        masked = unpatchify(patches * (1 - m), self.patch_size, shape)
        return masked, unpatchify(patches * (1 - m) + pred * m, self.patch_size, shape)

    def compute_step(self, x: Any, y: Any, sample_weight: Any = None, training: bool = False,
                     global_batch_size: Any = None) -> tuple[tf.Tensor, MetricInputs]:
        per_patch, mask = self.per_patch_error(x, y["noise"], training)
        per_example = masked_patch_loss(per_patch, mask)
        weight = _ones_like_rows(x) if sample_weight is None else sample_weight
        loss = average_loss(per_example * weight, global_batch_size) + self.regularization()
        return loss, MetricInputs(per_example, per_example)

    def get_config(self) -> dict:
        return {**super().get_config(), "decoder": keras.saving.serialize_keras_object(self.decoder),
                "backbone_name": self.backbone_name, "num_visible": self.num_visible,
                "norm_pix_loss": self.norm_pix_loss}

    @classmethod
    def from_config(cls, config: dict) -> MAEModel:
        config = dict(config)
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return super().from_config(config)


def map_decoder(grid: tuple[int, int], channels: int, cell_pixels: int, name: str = "mim_decoder") -> keras.Model:
    """Feature map (N, gh, gw, C) -> pixels of each map cell (N, gh*gw, cell_pixels): SimMIM's light
    one-layer head (a linear map per cell, as its 1x1 convolution + pixel shuffle)."""
    features = keras.Input((grid[0], grid[1], channels), name="features")
    x = keras.layers.Dense(cell_pixels, dtype="float32", name="decoder_pixels")(features)
    x = keras.layers.Reshape((grid[0] * grid[1], cell_pixels), name="decoder_cells")(x)
    return keras.Model(features, x, name=name)


@keras.saving.register_keras_serializable(package="lensnet")
class MaskedMapModel(MAEModel):
    """Masked image modelling for a backbone that needs the whole grid (Swin's shifted windows):
    SimMIM's recipe. The masked cells of the final feature map's grid are blanked in the input (0 in
    normalised units, the mean sky), the backbone sees the whole image, a linear head predicts each
    cell's pixels, and the loss counts the masked cells only. Same step, mask draw and loss as MAEModel."""

    def __init__(self, network: keras.Model, decoder: keras.Model, backbone_name: str, num_visible: int,
                 norm_pix_loss: bool = False, **kwargs: Any) -> None:
        TaskModel.__init__(self, network, **{"output": "embedding", **kwargs})
        self.decoder = decoder
        self.backbone_name = backbone_name
        self.num_visible = int(num_visible)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.backbone = network.get_layer(backbone_name)
        grid = tuple(self.backbone.patch_grid)
        shape = tuple(self.backbone.input_shape[1:])
        self.grid, self.cell = grid, (shape[0] // grid[0], shape[1] // grid[1])
        self.built = network.built and decoder.built

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.cell

    def blank(self, images: Any, mask: Any) -> Any:
        """`images` with the masked cells set to 0."""
        m = tf.reshape(mask, (-1, self.grid[0], 1, self.grid[1], 1, 1))
        shape = tf.shape(images)
        cells = tf.reshape(images, (shape[0], self.grid[0], self.cell[0], self.grid[1], self.cell[1], shape[3]))
        return tf.reshape(cells * (1.0 - m), shape)

    def predict_patches(self, images: Any, noise: Any, training: bool = False) -> tuple[Any, Any]:
        _, _, mask = self.split(noise)
        features = self.backbone(self.blank(images, mask), training=training)
        return self.decoder(features, training=training), mask
