"""int8 ONNX beside an export's float model: onnxruntime quantisation, calibrated and checked on the run's data.

`python -m lensnet.export --quantize int8` writes `model.int8.onnx` next to `model.onnx`:

- static quantisation (QDQ format, activations uint8, weights int8 per output channel), its
  activation ranges calibrated (min/max) on raw training images of the run's dataset (or
  `--calibration DIR`), for models whose heavy ops are convolutions and dense layers;
- dynamic quantisation (int8 weights per channel, activations quantised on the fly) for models
  with attention (a MatMul of two computed tensors), where static activation ranges are unreliable;
- the choice, the quantised op types and the ops left in float32 are recorded in card.json.

The int8 model is compared with the float model on the run's test images: the task's metric
(ROC AUC of a binary output, macro ROC AUC otherwise; mean |difference| for other outputs) for
both, file sizes and CPU latency per image at batch 1 and 64. Its `runtime` entry in card.json
becomes `onnx-int8` (what predict and serve use by default) only when the metric moved by at
most `tolerance`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

INT8_FILE = "model.int8.onnx"
DEFAULT_TOLERANCE = 0.002  # the largest metric change that makes the int8 model the version's runtime
# Op types holding the weights quantisation is for; a model has at least one or nothing is gained.
_STATIC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_DYNAMIC_OPS = ("Conv", "MatMul", "Gemm")


class QuantizationError(LensnetError):
    """The model cannot be quantised to int8."""


def _weight_ops(model: Any) -> list[str]:
    """Op types of the nodes that take a float weight tensor (an initializer of rank >= 2)."""
    import onnx

    weights = {init.name for init in model.graph.initializer
               if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(init.dims) >= 2}
    return [node.op_type for node in model.graph.node if any(name in weights for name in node.input)]


def preprocessing_nodes(model: Any, weight_ops: tuple[str, ...]) -> list[str]:
    """Names of the nodes no weight op precedes: the layout and normalisation of the raw input.

    They stay float32: the raw pixels' range spans every image of the calibration set, and per-image
    normalisation after them would magnify their quantisation error on faint images.
    """
    weights = {init.name for init in model.graph.initializer}
    downstream: set[str] = set()  # tensors computed after some weight op
    keep = []
    for node in model.graph.node:  # ONNX graphs are stored in topological order
        after = any(name in downstream for name in node.input)
        if after or (node.op_type in weight_ops and any(name in weights for name in node.input)):
            downstream.update(node.output)
        else:
            keep.append(node.name)
    return keep


def has_attention(model: Any) -> bool:
    """A MatMul of two computed tensors (queries x keys, weights x values): attention."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return any(node.op_type == "MatMul" and not any(name in constants for name in node.input)
               for node in model.graph.node)


class _Calibration:
    """onnxruntime's CalibrationDataReader over a stack of images, `batch` at a time."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([{input_name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # onnxruntime >= 1.17 may ask
        pass


def quantize_onnx(float_path: Path, out_path: Path, calibration: np.ndarray, *, mode: str = "auto",
                  label: str = "") -> dict:
    """Write the int8 model of `float_path` to `out_path`; returns what was done, for the card.

    mode: auto (dynamic if the model has attention, else static), static or dynamic. label names
    the model in errors (default: the file).
    """
    label = label or str(float_path)
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(os.fspath(float_path))
    if mode == "auto":
        mode = "dynamic" if has_attention(model) else "static"
    weight_ops = sorted(set(_weight_ops(model)))
    supported = _STATIC_OPS if mode == "static" else _DYNAMIC_OPS
    quantisable = [op for op in weight_ops if op in supported]
    if not quantisable:
        raise QuantizationError(
            f"{label}: no op can be quantised to int8: the model's weights feed "
            f"{', '.join(weight_ops) or 'no op'}, and onnxruntime's {mode} int8 quantisation covers only "
            f"{', '.join(supported)}"
        )
    input_name = model.graph.input[0].name
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=out_path.parent))
    try:
        prepared = work / "prepared.onnx"
        try:  # folds BatchNormalization into Conv and infers shapes: better ranges, fewer float islands
            quant_pre_process(os.fspath(float_path), os.fspath(prepared), skip_symbolic_shape=True)
        except Exception:  # an optimisation only: quantise the model as converted
            shutil.copyfile(float_path, prepared)
        try:
            if mode == "static":
                quantize_static(os.fspath(prepared), os.fspath(work / "int8.onnx"),
                                _Calibration(input_name, calibration), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_exclude=preprocessing_nodes(onnx.load(os.fspath(prepared)), _STATIC_OPS))
            else:
                quantize_dynamic(os.fspath(prepared), os.fspath(work / "int8.onnx"), per_channel=True,
                                 weight_type=QuantType.QInt8, op_types_to_quantize=quantisable)
        except Exception as exc:  # onnxruntime's quantiser raises assorted types, naming the node it failed on
            raise QuantizationError(f"{label}: int8 quantisation failed: {type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:300]}") from None
        quantised = onnx.load(os.fspath(work / "int8.onnx"))
        os.replace(work / "int8.onnx", out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = [node.op_type for node in quantised.graph.node]
    left_float = sorted({op for op in _weight_ops(quantised) if op in weight_ops})
    return {"mode": mode, "format": "QDQ" if mode == "static" else "integer ops", "per_channel": True,
            "weights": "int8", "activations": "uint8" if mode == "static" else "uint8 (dynamic)",
            "quantised_ops": sorted(set(quantisable)), "float_weight_ops": left_float,
            "int8_nodes": sum(op in ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger",
                                     "DynamicQuantizeLinear") for op in after)}


def session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; the message names the node
        raise QuantizationError(f"onnxruntime cannot load the int8 model: {' '.join(str(exc).split())[:300]}") from None


def onnx_predict(path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Raw images -> the single output of the ONNX model at `path`."""
    sess = session(path, threads)
    name, output = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return lambda images: sess.run([output], {name: images})[0]


def run_batches(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def latency_ms(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int,
               seconds: float = 0.5) -> float:
    """Milliseconds per image at `batch`, over about `seconds` of calls after a warm-up call."""
    feed = np.resize(images, (batch, *images.shape[1:])).astype(np.float32)
    predict(feed)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        predict(feed)
        calls += 1
    return 1000.0 * (time.perf_counter() - start) / (calls * batch)


def task_metric(spec: Any, outputs: np.ndarray, labels: np.ndarray | None, class_names: list[str]) -> tuple[str, Any]:
    """(name, value) of the metric the int8 model is judged on; None when the labels cannot give one."""
    from lensnet.tasks.scores import binary_scores, multiclass_scores

    if spec.kind != "probabilities" or labels is None or not class_names:
        return "", None
    names = [class_names[int(k)] for k in labels]
    if spec.positive_class is not None:
        return "roc_auc", binary_scores(np.array([n == spec.positive_class for n in names]), outputs[:, 0])["roc_auc"]
    keep = [i for i, n in enumerate(names) if n in spec.class_names]
    index = np.array([spec.class_names.index(names[i]) for i in keep])
    return "macro_roc_auc", multiclass_scores(index, outputs[keep], list(spec.class_names))["macro_roc_auc"]


def compare(float_path: Path, int8_path: Path, spec: Any, images: np.ndarray, labels: np.ndarray | None,
            class_names: list[str], source: str,
            int8_predict: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """The int8 model against the float ONNX model on `images`: metric, differences, sizes, CPU latency.

    `int8_predict` runs the int8 model (default: `int8_path` in onnxruntime); both run on one thread, so the
    latencies compare kernels rather than thread pools."""
    float_predict = onnx_predict(float_path, threads=1)
    int8_predict = int8_predict or onnx_predict(int8_path, threads=1)
    reference, quantised = run_batches(float_predict, images), run_batches(int8_predict, images)
    diff = np.abs(reference.astype(np.float64) - quantised.astype(np.float64))
    name, float_metric = task_metric(spec, reference, labels, class_names)
    _, int8_metric = task_metric(spec, quantised, labels, class_names)
    change = None if float_metric is None or int8_metric is None else int8_metric - float_metric
    latency = {f"batch_{b}": {"float32": round(latency_ms(float_predict, images, b), 4),
                              "int8": round(latency_ms(int8_predict, images, b), 4)} for b in (1, 64)}
    return {
        "images": int(len(images)), "source": source,
        "metric": {"name": name or "mean_abs_diff", "float32": float_metric, "int8": int8_metric, "change": change},
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "size_bytes": {"float32": os.path.getsize(float_path), "int8": os.path.getsize(int8_path)},
        "latency_ms_per_image": latency,
    }


def dataset_images(path: str | os.PathLike, splits: tuple[str, ...], count: int,
                   labels: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """(raw images, labels or None, class names, description) of the first `count` records of the first split
    of `splits` the dataset at `path` has."""
    from lensnet.data.pipeline import load, open_dataset

    data = open_dataset(path)
    field = "image" if "image" in data.image_names else data.image_names[0]
    split = next((s for s in splits if data.counts.get(s)), None)
    if split is None:
        raise LensnetError(f"dataset {path} has no records in split(s) {', '.join(splits)}")
    with_labels = labels and bool(data.class_names)
    fields = [field, "label"] if with_labels else [field]
    images, found = [], []
    for batch in load(data, split, batch_size=64, fields=fields, normalise="none", shuffle=False):
        images.append(batch[field].numpy())
        if with_labels:
            found.append(batch["label"].numpy())
        if sum(len(x) for x in images) >= count:
            break
    stack = np.concatenate(images)[:count].astype(np.float32)
    label_stack = np.concatenate(found)[:count] if with_labels else None
    return stack, label_stack, list(data.class_names), f"{path} split {split}, first {len(stack)} records"


def calibration_images(path: str | os.PathLike, shape: tuple[int, ...], count: int) -> tuple[np.ndarray, str]:
    """Raw training images to calibrate on; another image shape than the model's is an error."""
    if not Path(path, "manifest.json").is_file():
        raise LensnetError(f"calibration data {path} is not a dataset directory (no manifest.json); give "
                           "--calibration DIR, a dataset of the run's image shape")
    images, _, _, source = dataset_images(path, ("train", "val", "test"), count)
    if tuple(images.shape[1:]) != tuple(shape):
        raise LensnetError(f"calibration data {path} holds images of shape {tuple(images.shape[1:])}; the model "
                           f"takes {tuple(shape)}")
    if not np.isfinite(images).all():
        raise LensnetError(f"calibration data {path} holds NaN or Inf pixels in {source}")
    return images, source
