"""int8 TFLite beside the int8 ONNX model, for CNNs: XNNPACK's int8 convolutions.

onnxruntime's int8 convolution is slower than its float32 kernel on a first convolution with few
input channels (3 -> 16 at 64x64: 0.41x, measured in docs/tuning.md), and in a small CNN that
convolution is most of the int8 time, so the ONNX int8 model of cnn_small gains little. TFLite's
XNNPACK delegate runs the same model fully in int8 at about twice the float ONNX throughput.

The model is converted from the export's SavedModel (raw images in, normalisation inside) with
TFLite's post-training quantisation: int8 weights per output channel, int8 activations calibrated
on the same raw training images as the ONNX model. The ops no weight op precedes (the per-image
normalisation of the raw input) stay float32, as in the ONNX model: quantising the raw pixels'
range before the normalisation loses faint images.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

TFLITE_INT8_FILE = "model.int8.tflite"
# TFLite builtin ops holding weights: what int8 quantisation is for.
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL")


def _interpreter(**kwargs: Any) -> Any:
    import tensorflow as tf

    with warnings.catch_warnings():  # TF >= 2.20 warns that tf.lite.Interpreter moves to LiteRT; it is still TF's
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(**kwargs)


def preprocessing_outputs(float_model: bytes) -> list[str]:
    """Output tensor names of the ops no weight op precedes: the normalisation of the raw input."""
    interpreter = _interpreter(model_content=float_model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    downstream: set[int] = set()
    keep = []
    for op in interpreter._get_ops_details():  # execution order; the only listing of ops TF's Python API has
        if op["op_name"] in WEIGHT_OPS or any(i in downstream for i in op["inputs"]):
            downstream.update(int(o) for o in op["outputs"])
        else:
            keep += [names[int(o)] for o in op["outputs"] if int(o) in names]
    return keep


def quantize_tflite(savedmodel_dir: Path, out_path: Path, calibration: np.ndarray, signature: str,
                    input_name: str, label: str) -> dict:
    """Write the int8 TFLite model of the SavedModel's `signature` to `out_path`; returns what was done."""
    import tensorflow as tf

    def representative() -> Iterator[dict]:
        for image in calibration:
            yield {input_name: image[None].astype(np.float32)}

    try:
        with _quiet():
            converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(savedmodel_dir),
                                                                 signature_keys=[signature])
            float_model = converter.convert()
            keep = preprocessing_outputs(float_model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=keep))
            quantised = debugger.get_nondebug_quantized_model()
    except Exception as exc:  # the converter raises assorted types, naming the op it cannot handle
        raise LensnetError(f"{label}: TFLite int8 conversion failed: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:300]}") from None
    out_path.write_bytes(quantised)
    ops = _op_types(quantised)
    return {"format": "TFLite builtin int8 ops (XNNPACK on CPU)", "per_channel": True, "weights": "int8",
            "activations": "int8", "float_nodes": keep, "int8_ops": sorted({o for o in ops if o in WEIGHT_OPS})}


def _op_types(model: bytes) -> list[str]:
    return [op["op_name"] for op in _interpreter(model_content=model)._get_ops_details()]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converter prints every pass from C++ on the process's stdout and stderr and warns that
    tf.lite moves to LiteRT; a user sees the export's summary instead (a failure raises with its message)."""
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


class TFLiteModel:
    """Raw images (N, H, W, C) float32 -> the model's single output, through TFLite; one call at a time
    (an interpreter is not thread-safe, and serve calls from many threads)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            self.interpreter = _interpreter(model_path=os.fspath(path), num_threads=int(threads) if threads else None)
        except Exception as exc:  # a damaged file raises ValueError or RuntimeError
            raise LensnetError(f"cannot load {path} in TFLite: {' '.join(str(exc).split())[:300]}") from None
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.shape: tuple[int, ...] | None = None
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        with self.lock:
            if images.shape != self.shape:
                self.interpreter.resize_tensor_input(self.input, images.shape)
                self.interpreter.allocate_tensors()
                self.shape = images.shape
            self.interpreter.set_tensor(self.input, images)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self.output).copy()
