"""Self-supervised pretraining: `python -m lensnet.fit --task pretrain --set task.method=simclr|byol|dino|mae`.

Labels are never used for training, so any dataset works (imported real cutouts included); with
`task.labels: false` they are not even read (the record parser never asks for the field). The
models are in lensnet.tasks.ssl_models, the lens views in lensnet.data.views. The exported model
(best.keras) is the backbone's pooled embedding, an output of kind "values" with columns
emb_0..emb_{D-1}; `--init RUN` copies its backbone into a supervised task's model.

What the run saw: run.json's task_state holds the training split, its record count and a sha256
of its sorted record ids. Test figures are label-free (embedding spread, to catch a collapse)
plus, when the dataset has classes, the leave-one-out k-nearest-neighbour accuracy of the test
embeddings; the plots show a 2-D PCA projection of them coloured by class, and for MAE the
reconstructions of validation images (original / masked / reconstructed) at every epoch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.outputs import OutputSpec
from lensnet.core.errors import LensnetError
from lensnet.tasks.base import BackboneFactory, BatchContext, Task, pooled_network, register_task

METHODS = ("simclr", "byol", "dino", "mae")
KNN = 5


@dataclass
class PretrainConfig:
    method: str = "simclr"  # simclr | byol | dino | mae
    labels: bool = True  # read the dataset's labels for the test k-NN score (never for training); false: never read
    temperature: float = 0.1  # simclr: NT-Xent temperature; dino: the student's temperature
    projection_dim: int = 128  # simclr / byol: projector output; dino: the bottleneck before the prototypes
    projection_hidden: int = 512  # simclr / byol / dino: projector (and BYOL predictor) hidden width
    # byol / dino: target (teacher) = m * target + (1 - m) * online every step, m on BYOL's cosine schedule
    # from `ema` to 1 over the run (ema_schedule: cosine) or the constant `ema` (constant)
    ema: float = 0.996
    ema_schedule: str = "cosine"  # cosine | constant
    schedule_epochs: int | None = None  # horizon of the EMA and teacher-temperature schedules (None = train.epochs)
    prototypes: int = 1024  # dino: width of the weight-normalised last layer (DINO: 65536)
    teacher_temperature: float = 0.04  # dino: the teacher's (sharpening) temperature after warm-up
    teacher_temperature_start: float = 0.04  # dino: ... at step 0, warmed up linearly
    teacher_warmup: float = 0.3  # dino: fraction of the schedule horizon the warm-up lasts (DINO: 30 of 100 epochs)
    centre_momentum: float = 0.9  # dino: centre = m * centre + (1 - m) * batch mean of the teacher's logits
    local_crops: int = 2  # dino: small crops per image besides the 2 global ones
    local_crop_min: float = 0.05  # dino: smallest area fraction of a local crop
    local_crop_max: float = 0.4  # dino: largest area fraction of a local crop
    mask_ratio: float = 0.75  # mae: fraction of patches hidden from the encoder, in (0, 1)
    decoder_dim: int = 128  # mae: light decoder width
    decoder_depth: int = 2  # mae: decoder transformer blocks
    decoder_heads: int = 4  # mae
    norm_pix_loss: bool = False  # mae: regress per-patch normalised pixels
    symmetry: str | None = "auto"  # view symmetry: auto (= data.augment) | d4 | flips | rot180 | none
    # The views below, when null, take the dataset preset's measured defaults (lensnet.data.views.PRESET_VIEWS,
    # set from `python -m lensnet.study views`: docs/ssl.md), else GENERIC_VIEWS. Blur and re-drawn noise are off
    # in both: they wash out the few-pixel perturbations substructure makes (measured on the Model II replica:
    # SimCLR with blur 1 px + noise 0.1 made fine-tuning at 10% labels worse than scratch, 0.617 vs 0.897 AUC).
    view_shift: int | None = None  # max integer shift of a view, pixels
    view_crop: float | None = None  # smallest area fraction of a random crop resized back to full size (1 = none)
    view_blur: float | None = None  # max PSF-like gaussian sigma, pixels
    view_flux: float | None = None  # flux scale in [1/view_flux, view_flux]
    view_noise: float | None = None  # re-drawn gaussian noise, as a fraction of the image std


@register_task
class Pretrain(Task):
    name = "pretrain"
    description = "self-supervised pretraining (simclr, byol, dino, mae); exports the pooled embedding"
    monitor = "loss"
    monitor_mode = "min"
    Config = PretrainConfig

    def check_config(self) -> None:
        c = self.config
        if c.method not in METHODS:
            raise LensnetError(f"task.method must be one of {', '.join(METHODS)}, got {c.method!r}")
        if not isinstance(c.mask_ratio, (int, float)) or isinstance(c.mask_ratio, bool) \
                or not 0 < c.mask_ratio < 1:
            raise LensnetError(f"task.mask_ratio must be in (0, 1) exclusive, got {c.mask_ratio!r}")
        if not 0 <= float(c.ema) < 1:
            raise LensnetError(f"task.ema must be in [0, 1), got {c.ema!r}")
        if c.ema_schedule not in ("cosine", "constant"):
            raise LensnetError(f"task.ema_schedule must be cosine or constant, got {c.ema_schedule!r}")
        for key in ("temperature", "teacher_temperature", "teacher_temperature_start"):
            if not float(getattr(c, key)) > 0:
                raise LensnetError(f"task.{key} must be > 0, got {getattr(c, key)!r}")
        for key in ("teacher_warmup", "centre_momentum"):
            if not 0 <= float(getattr(c, key)) <= 1:
                raise LensnetError(f"task.{key} must be in [0, 1], got {getattr(c, key)!r}")
        if not 0 < float(c.local_crop_min) <= float(c.local_crop_max) <= 1:
            raise LensnetError(f"task.local_crop_min / local_crop_max must satisfy 0 < min <= max <= 1, got "
                               f"{c.local_crop_min!r} / {c.local_crop_max!r}")
        if not isinstance(c.local_crops, int) or isinstance(c.local_crops, bool) or c.local_crops < 0:
            raise LensnetError(f"task.local_crops must be an integer >= 0, got {c.local_crops!r}")
        if c.schedule_epochs is not None and (not isinstance(c.schedule_epochs, int) or c.schedule_epochs < 1):
            raise LensnetError(f"task.schedule_epochs must be a positive integer or null, got {c.schedule_epochs!r}")
        for key in ("projection_dim", "projection_hidden", "decoder_dim", "decoder_depth", "decoder_heads",
                    "prototypes"):
            value = getattr(c, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LensnetError(f"task.{key} must be a positive integer, got {value!r}")
        self.view_options(None).check()

    def view_options(self, data_augment: str | None) -> Any:
        """The views of this run: task.view_* where set, else the dataset preset's defaults."""
        from lensnet.data.views import ViewOptions, preset_views

        c = self.config
        info = getattr(self, "info", None)
        defaults = preset_views(info.name if info is not None else None)
        value = {key: defaults[key] if getattr(c, key) is None else getattr(c, key) for key in defaults}
        symmetry = data_augment if c.symmetry == "auto" else c.symmetry
        symmetry = None if symmetry in (None, "none") else symmetry
        return ViewOptions(symmetry=symmetry, shift=value["view_shift"],
                           blur=float(value["view_blur"]), flux=float(value["view_flux"]),
                           noise=float(value["view_noise"]), crop=float(value["view_crop"]))

    def local_view_options(self) -> Any:
        """DINO's local crops: the global views' options with a small crop."""
        import dataclasses

        c = self.config
        return dataclasses.replace(self.views, crop=float(c.local_crop_min), crop_max=float(c.local_crop_max))

    def check_data_options(self, data_config: dict) -> None:
        self.views = self.view_options(data_config.get("augment"))
        self.views.check()
        if not self.seen and data_config.get("path"):
            fraction = float(data_config.get("train_fraction", 1.0))
            subset = (fraction, int(data_config.get("subset_seed", 0))) if fraction < 1 else None
            self.seen = self.record_ids_digest(data_config["train_split"], subset)

    # ---- data ------------------------------------------------------------------------------------
    def setup(self, info: Any, state: dict | None = None) -> None:
        self.info = info
        self.views = self.view_options(None)
        self.has_labels = bool(self.config.labels) and "label" in info.schema and len(info.class_names) >= 2
        self.fields = ("image", "label") if self.has_labels else ("image",)
        self.class_names = list(info.class_names) if self.has_labels else []
        state = state or {}
        self.embedding_dim = state.get("embedding_dim")
        self.num_patches = state.get("num_patches")
        self.seen = state.get("seen")

    def record_ids_digest(self, split: str, subset: tuple[float, int] | None = None) -> dict:
        """The split (and subset), count and sha256 of the sorted ids of the records a run trains on."""
        from lensnet.data.pipeline import subset_ids

        if not self.info.counts.get(split):
            return {}
        ids = subset_ids(self.info, split, *(subset or (1.0, 0)))
        digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
        seen = {"split": split, "count": len(ids), "ids_sha256": digest}
        return {**seen, "train_fraction": subset[0], "subset_seed": subset[1]} if subset else seen

    def state(self) -> dict:
        import dataclasses

        views = dataclasses.asdict(self.views) if getattr(self, "views", None) is not None else None
        return {"method": self.config.method, "embedding_dim": self.embedding_dim, "num_patches": self.num_patches,
                "class_names": self.class_names, "seen": self.seen, "views": views}

    def prepare(self, batch: dict, context: BatchContext) -> tuple:
        import tensorflow as tf

        from lensnet.data.views import lens_views

        images = batch["image"]
        n = tf.shape(images)[0]
        if self.config.method == "mae":
            y = {"noise": tf.random.stateless_uniform([n, int(self.num_patches or 1)], context.random_seed(1))}
            return images, y, tf.ones([n])
        # Two views of every record, from the batch's stateless seed (rows draw their own numbers). The
        # model's input stays the clean image: what scoring, precise BatchNorm and the exported model see.
        y = {"view1": lens_views(images, context.random_seed(1), self.views),
             "view2": lens_views(images, context.random_seed(2), self.views)}
        if self.config.method == "dino" and self.config.local_crops:
            local = self.local_view_options()
            y["local"] = tf.stack([lens_views(images, context.random_seed(3 + k), local)
                                   for k in range(int(self.config.local_crops))], axis=1)
        return images, y, tf.ones([n])

    # ---- model -----------------------------------------------------------------------------------
    def build(self, backbone_factory: BackboneFactory, info: Any, config: dict) -> Any:
        method = self.config.method
        name = config["model"]["name"]
        builders = {"simclr": self._build_simclr, "byol": self._build_byol, "dino": self._build_dino,
                    "mae": self._build_mae}
        model = builders[method](backbone_factory, info, name, config)
        self.embedding_dim = int(model.network.output["embedding"].shape[-1])
        return model

    def _projector(self, features: Any, prefix: str) -> Any:
        import keras

        c = self.config
        x = keras.layers.Dense(c.projection_hidden, name=f"{prefix}_hidden")(features)
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{prefix}_relu")(x)
        return keras.layers.Dense(c.projection_dim, dtype="float32", name=f"{prefix}_out")(x)

    def _encoder(self, backbone_factory: BackboneFactory, info: Any, name: str) -> Any:
        """images -> {"embedding": pooled backbone features, "projection": projector(embedding)}."""
        def head(features: Any) -> dict:
            return {"embedding": features, "projection": self._projector(features, "projector")}

        return pooled_network(backbone_factory, info.image_shape, head, name=name)

    def _build_simclr(self, backbone_factory: BackboneFactory, info: Any, name: str, config: dict) -> Any:
        from lensnet.tasks.ssl_models import SimCLRModel

        network = self._encoder(backbone_factory, info, f"simclr_{name}")
        return SimCLRModel(network, temperature=self.config.temperature, metrics_list=self.metrics(),
                           name="simclr_model")

    def schedule_steps(self, config: dict) -> int:
        """The EMA / teacher-temperature schedule horizon in optimizer steps.

        The steps per epoch are the trainer's: train.steps_per_epoch, or one pass over the records
        the run trains on (counted by `check_data_options`, or restored with a resumed run's state).
        """
        train = config.get("train", {})
        count = int((self.seen or {}).get("count") or 0)
        per_epoch = int(train.get("steps_per_epoch") or math.ceil(count / int(config["data"]["batch_size"])))
        return max(per_epoch, 1) * int(self.config.schedule_epochs or train.get("epochs") or 1)

    def ema_steps(self, config: dict) -> int:
        """The cosine EMA schedule's horizon (0: the constant `task.ema`)."""
        return 0 if self.config.ema_schedule == "constant" else self.schedule_steps(config)

    def _build_byol(self, backbone_factory: BackboneFactory, info: Any, name: str, config: dict) -> Any:
        import keras

        from lensnet.tasks.ssl_models import BYOLModel

        encoder = self._encoder(backbone_factory, info, "online_encoder")
        images = keras.Input(tuple(info.image_shape), name="images")
        outputs = encoder(images)
        prediction = self._projector(outputs["projection"], "predictor")
        network = keras.Model(images, {"embedding": outputs["embedding"], "projection": outputs["projection"],
                                       "prediction": prediction}, name=f"byol_{name}")
        target = self._encoder(backbone_factory, info, "target_encoder")
        model = BYOLModel(network, target, ema=self.config.ema, total_steps=self.ema_steps(config),
                          metrics_list=self.metrics(), name="byol_model")
        model.copy_online_to_target()
        return model

    def _dino_encoder(self, backbone_factory: BackboneFactory, info: Any, name: str) -> Any:
        """images -> {"embedding", "logits"}: DINO's head (MLP, L2-normalised bottleneck, weight-normalised
        prototypes) on the pooled backbone features."""
        import keras

        from lensnet.tasks.ssl_models import NormalisedDense

        def head(features: Any) -> dict:
            x = self._projector(features, "dino_head")
            x = keras.layers.UnitNormalization(axis=-1, name="dino_bottleneck_norm")(x)
            return {"embedding": features,
                    "logits": NormalisedDense(int(self.config.prototypes), dtype="float32", name="dino_prototypes")(x)}

        return pooled_network(backbone_factory, info.image_shape, head, name=name)

    def _build_dino(self, backbone_factory: BackboneFactory, info: Any, name: str, config: dict) -> Any:
        import keras

        from lensnet.tasks.ssl_models import DINOModel, centre_model

        c = self.config
        encoder = self._dino_encoder(backbone_factory, info, "student_encoder")
        images = keras.Input(tuple(info.image_shape), name="images")
        network = keras.Model(images, encoder(images), name=f"dino_{name}")
        teacher = self._dino_encoder(backbone_factory, info, "teacher_encoder")
        model = DINOModel(network, teacher, centre_model(int(c.prototypes)), ema=c.ema,
                          total_steps=self.ema_steps(config),
                          student_temperature=c.temperature, teacher_temperature=c.teacher_temperature,
                          teacher_temperature_start=c.teacher_temperature_start,
                          teacher_warmup_steps=int(round(float(c.teacher_warmup) * self.schedule_steps(config))),
                          centre_momentum=c.centre_momentum, metrics_list=self.metrics(), name="dino_model")
        model.copy_online_to_target()
        return model

    def _build_mae(self, backbone_factory: BackboneFactory, info: Any, name: str, config: dict) -> Any:
        import keras

        from lensnet.models.masked import VisibleTokenEncoder
        from lensnet.models.pooling import pool_features
        from lensnet.tasks.ssl_models import MAEModel, MaskedMapModel, mae_decoder, map_decoder

        c = self.config
        backbone = backbone_factory(tuple(info.image_shape))
        swin = type(backbone).__name__ == "SwinBackbone"  # shifted windows need the whole grid: SimMIM
        encoder = None if swin else VisibleTokenEncoder(backbone)  # a one-line error for other families
        images = keras.Input(tuple(info.image_shape), name="images")
        network = keras.Model(images, {"embedding": pool_features(backbone, backbone(images))},
                              name=f"mae_{name}")
        grid = tuple(backbone.patch_grid)
        self.num_patches = grid[0] * grid[1]
        visible = int(self.num_patches * (1 - float(c.mask_ratio)))
        if not 1 <= visible < self.num_patches:
            raise LensnetError(f"task.mask_ratio {c.mask_ratio} leaves {visible} of {self.num_patches} "
                               "patches visible; it must leave at least one visible and one masked")
        channels = int(info.image_shape[-1])
        if swin:
            cell = (info.image_shape[0] // grid[0]) * (info.image_shape[1] // grid[1]) * channels
            decoder = map_decoder(grid, backbone.feature_dim, cell)
            return MaskedMapModel(network, decoder, backbone_name=backbone.name, num_visible=visible,
                                  norm_pix_loss=c.norm_pix_loss, metrics_list=self.metrics(), name="mae_model")
        decoder = mae_decoder(self.num_patches, encoder.num_prefix_tokens, visible, encoder.hidden_dim,
                              encoder.patch_size[0] * encoder.patch_size[1] * channels, dim=c.decoder_dim,
                              depth=c.decoder_depth, heads=c.decoder_heads)
        return MAEModel(network, decoder, backbone_name=backbone.name, num_visible=visible,
                        norm_pix_loss=c.norm_pix_loss, metrics_list=self.metrics(), name="mae_model")

    def metrics(self) -> list:
        import keras

        if self.config.method == "simclr":
            return [keras.metrics.Accuracy(name="pair_accuracy")]
        return []

    def callbacks(self, run_dir: Path, info: Any, config: dict, val_batches: Any) -> list:
        """MAE: reconstructions of a few validation images, to plots/ and TensorBoard, every epoch."""
        if self.config.method != "mae":
            return []
        from lensnet.tasks.ssl_plots import ReconstructionImages

        return [ReconstructionImages(run_dir, info, config, self.num_patches)]

    # ---- scoring ---------------------------------------------------------------------------------
    def targets(self, batch: dict) -> np.ndarray:
        if self.has_labels and "label" in batch:
            return np.asarray(batch["label"])
        return np.full(len(batch["id"]), -1)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
        from lensnet.tasks.ssl_plots import knn_accuracy

        emb = np.asarray(y_pred, np.float64)
        result: dict = {"n": int(len(emb)), "embedding_dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
                        "embedding_std": float(np.mean(np.std(emb, axis=0))) if len(emb) > 1 else None}
        labelled = y_true >= 0
        if self.has_labels and labelled.sum() > KNN and len(np.unique(y_true[labelled])) > 1:
            result[f"knn{KNN}_accuracy"] = knn_accuracy(emb[labelled], y_true[labelled], KNN)
        return result

    def plot(self, y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path) -> dict[str, Path]:
        from lensnet.tasks import plots
        from lensnet.tasks.ssl_plots import embedding_figure

        if len(y_pred) < 3:
            return {}
        return {"embedding_pca": plots.save(embedding_figure(y_pred, y_true, self.class_names),
                                            out_dir / "embedding_pca.png")}

    def describe(self, y_pred_row: np.ndarray) -> str:
        return f"|emb| {float(np.linalg.norm(y_pred_row)):.3g}"

    def truth(self, y_true_row: Any) -> str:
        k = int(y_true_row)
        return self.class_names[k] if 0 <= k < len(self.class_names) else ""

    def output_spec(self) -> OutputSpec:
        if not self.embedding_dim:
            raise LensnetError("the pretrain task's output is known once its model is built")
        return OutputSpec("values", "embedding", columns=tuple(f"emb_{i}" for i in range(int(self.embedding_dim))))
