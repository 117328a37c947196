"""The runtimes that score with an exported version: onnxruntime (default), its int8 model, the int8 TFLite
model (CNNs) and the SavedModel."""

from __future__ import annotations

import os

import numpy as np

from lensnet.artifacts.export_layout import INPUT_NAME, SIGNATURE
from lensnet.artifacts.exports import ExportedModel
from lensnet.core.errors import LensnetError

RUNTIMES = ("onnx", "onnx-int8", "tflite-int8", "tf")
CARD_RUNTIME = "card"  # the version's own choice: card.json "runtime" (the faster int8 model that passed)



class Runner:
    """Scores raw images (N, H, W, C) float32 -> the outputs the card's output spec describes, float32."""

    runtime = ""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRunner(Runner):
    runtime = "onnx"

    def __init__(self, exported: ExportedModel, threads: int | None = None, path: os.PathLike | None = None) -> None:
        import onnxruntime as ort

        path = path or exported.onnx_path

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LensnetError(f"cannot load {path} in onnxruntime: {_first_line(exc)}") from None
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


class Int8Runner(OnnxRunner):
    runtime = "onnx-int8"

    def __init__(self, exported: ExportedModel, threads: int | None = None) -> None:
        if not exported.int8_path:
            raise LensnetError(f"{exported.path} has no int8 model; export the run with --quantize int8")
        super().__init__(exported, threads, exported.int8_path)


class TFLiteInt8Runner(Runner):
    runtime = "tflite-int8"

    def __init__(self, exported: ExportedModel, threads: int | None = None) -> None:
        from lensnet.serving.tflite_int8 import TFLiteModel

        if not exported.tflite_int8_path:
            raise LensnetError(f"{exported.path} has no int8 TFLite model; export the run with --quantize int8 "
                               "(TFLite int8 is written for CNNs)")
        self.model = TFLiteModel(exported.tflite_int8_path, threads)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.model(images)


def resolve_runtime(exported: ExportedModel, runtime: str) -> str:
    """`card` -> the version's card.json runtime (onnx when it names none)."""
    return str(exported.card.get("runtime", "onnx")) if runtime == CARD_RUNTIME else runtime


def open_runner(exported: ExportedModel, runtime: str = "onnx", threads: int | None = None) -> Runner:
    runtime = resolve_runtime(exported, runtime)
    if runtime == "onnx":
        return OnnxRunner(exported, threads)
    if runtime == "onnx-int8":
        return Int8Runner(exported, threads)
    if runtime == "tflite-int8":
        return TFLiteInt8Runner(exported, threads)
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
