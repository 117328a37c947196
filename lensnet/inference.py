"""An export directory and the runtimes that score with it (shared by predict, serve and the benchmarks).

    export/<name>/<version>/      version = 1, 2, ... (TF Serving's layout)
      saved_model.pb, variables/  SavedModel; signature `serving_default`: images -> {output name: scores}
      model.onnx                  same function in ONNX: input `images`, one output
      card.json                   what the model is (see lensnet.export)

Both artifacts take *raw* images (N, H, W, C) float32 and apply the training
normalisation themselves, so callers never normalise.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.errors import LensnetError

CARD = "card.json"
ONNX_FILE = "model.onnx"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
RUNTIMES = ("onnx", "tf")
_VERSION = re.compile(r"^[1-9][0-9]*$")


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Complete versions under `model_dir`, ascending (a version is complete once its card exists)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if _VERSION.match(p.name) and (p / CARD).is_file())


def version_dir(model_dir: str | os.PathLike, version: int | None = None) -> Path:
    """The directory of `version`, or of the newest version when None."""
    model_dir = Path(model_dir)
    versions = list_versions(model_dir)
    if not model_dir.is_dir():
        raise LensnetError(f"model directory not found: {model_dir}")
    if not versions:
        raise LensnetError(f"{model_dir} holds no exported model version (run `python -m lensnet.export`)")
    if version is None:
        return model_dir / str(versions[-1])
    if version not in versions:
        raise LensnetError(f"{model_dir} has no version {version}; versions: {', '.join(map(str, versions))}")
    return model_dir / str(version)


@dataclass(frozen=True)
class ExportedModel:
    """One exported version and its card."""

    name: str
    version: int
    path: Path
    card: dict

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.card["input"]["shape"][1:])  # type: ignore[return-value]

    @property
    def output_kind(self) -> str:
        return str(self.card["output"]["kind"])

    @property
    def output_name(self) -> str:
        return str(self.card["output"]["name"])

    @property
    def columns(self) -> list[str]:
        """Names of the output's columns (RunInfo.output_names of the run)."""
        return list(self.card["output"]["columns"])

    @property
    def class_names(self) -> list[str]:
        return list(self.card.get("class_names") or [])

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE


def load_export(model_dir: str | os.PathLike, version: int | None = None) -> ExportedModel:
    """Read the card of `version` (newest when None) of the export at `model_dir`."""
    path = version_dir(model_dir, version)
    card_path = path / CARD
    try:
        card = json.loads(card_path.read_text())
        card["input"]["shape"], card["output"]["kind"], card["output"]["columns"]  # noqa: B018
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LensnetError(f"{card_path} is not a valid model card: {type(exc).__name__}: {exc}") from None
    return ExportedModel(name=Path(model_dir).resolve().name, version=int(path.name), path=path, card=card)


# ---- runtimes --------------------------------------------------------------------------------------


class Runner:
    """Scores raw images (N, H, W, C) float32 -> outputs (N, K) float32."""

    runtime = ""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRunner(Runner):
    runtime = "onnx"

    def __init__(self, exported: ExportedModel, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        try:
            self.session = ort.InferenceSession(
                os.fspath(exported.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LensnetError(f"cannot load {exported.onnx_path} in onnxruntime: {_first_line(exc)}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: images})[0]


class TFRunner(Runner):
    runtime = "tf"

    def __init__(self, exported: ExportedModel) -> None:
        import tensorflow as tf

        try:
            self.loaded = tf.saved_model.load(os.fspath(exported.path))
            self.function = self.loaded.signatures[SIGNATURE]
        except Exception as exc:  # damaged or foreign SavedModel
            raise LensnetError(f"cannot load SavedModel {exported.path}: {_first_line(exc)}") from None
        self.output_name = exported.output_name
        self._tf = tf

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.function(**{INPUT_NAME: self._tf.constant(images)})[self.output_name].numpy()


def open_runner(exported: ExportedModel, runtime: str = "onnx", threads: int | None = None) -> Runner:
    if runtime == "onnx":
        return OnnxRunner(exported, threads)
    if runtime == "tf":
        if threads:
            _set_tf_threads(threads)
        return TFRunner(exported)
    raise LensnetError(f"unknown runtime '{runtime}'; choose one of {', '.join(RUNTIMES)}")


def _set_tf_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    except RuntimeError:  # already initialised: keep TF's own choice
        pass


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


# ---- inputs and outputs ----------------------------------------------------------------------------


def as_image_batch(array: Any, expected: tuple[int, int, int], source: str) -> np.ndarray:
    """Shape `array` into a float32 batch (N, H, W, C) for a model taking (H, W, C) images.

    Accepted: one image (H, W, C), channel-first (C, H, W), or (H, W) when C is 1; or a stack of
    them with a leading N. Anything else is a LensnetError naming `source` and the expected shape.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise LensnetError(f"{source}: expected numeric pixels, got dtype {array.dtype}")
    h, w, c = expected
    shape = array.shape
    batch: np.ndarray | None = None
    if shape == (h, w, c):
        batch = array[None]
    elif len(shape) == 4 and shape[1:] == (h, w, c):
        batch = array
    elif shape == (c, h, w):
        batch = np.moveaxis(array, 0, -1)[None]
    elif len(shape) == 4 and shape[1:] == (c, h, w):
        batch = np.moveaxis(array, 1, -1)
    elif c == 1 and shape == (h, w):
        batch = array[None, :, :, None]
    elif c == 1 and len(shape) == 3 and shape[1:] == (h, w):
        batch = array[..., None]
    if batch is None:
        raise LensnetError(
            f"{source}: image shape {shape} does not fit the model, which takes images of shape {expected} "
            f"(H, W, C), or a stack (N, {h}, {w}, {c})"
        )
    return np.ascontiguousarray(batch, dtype=np.float32)


def finite_mask(batch: np.ndarray) -> np.ndarray:
    """True for each image of the batch whose pixels are all finite."""
    return np.isfinite(batch).reshape(len(batch), -1).all(axis=1)


def interpret(
    outputs: np.ndarray, exported: ExportedModel, threshold: float = 0.5
) -> tuple[list, list[str], np.ndarray]:
    """Model outputs (N, K) -> (predicted per image, probability column names, probabilities (N, P)).

    predicted is a class name (classification) or the target's value (regression, P = 0).
    Binary models output p(positive class); both classes' probabilities are returned.
    """
    kind = exported.output_kind
    if kind == "regression":
        return [float(v) for v in outputs[:, 0]], [], np.zeros((len(outputs), 0), np.float32)
    if kind == "binary":
        positive = exported.card.get("positive_class") or "positive"
        others = [c for c in exported.class_names if c != positive]
        negative = others[0] if others else f"not_{positive}"
        p = outputs[:, :1]
        predicted = [positive if v >= threshold else negative for v in p[:, 0]]
        return predicted, [f"p_{negative}", f"p_{positive}"], np.concatenate([1.0 - p, p], axis=1)
    names = exported.class_names or [f"class{k}" for k in range(outputs.shape[1])]
    return [names[k] for k in np.argmax(outputs, axis=1)], [f"p_{n}" for n in names], outputs
