"""A training run -> a verified export version (SavedModel + ONNX + card.json) under export/NAME/.

The SavedModel's `serving_default` signature and `model.onnx` take raw images `images`
(N, H, W, C) float32, apply the run's normalisation, run the model and post-process its
outputs as the run's OutputSpec says (an image output is mapped back to input units), and
return one output named by the spec. `card.json` holds the task, input, normalisation, the
output spec (+ its shape), test metrics, dataset checksum, package versions, export time and
the verification figures.

Before a version is published, Keras (float32 model + normalisation + post-processing), the
reloaded SavedModel and onnxruntime score the same batch and must agree within the output
kind's tolerance of `atol` (default 1e-4). Everything is built in a hidden temporary directory
beside the versions and renamed into place only when verified, so a failed or killed export
leaves no version behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.export_layout import CARD_FORMAT, INPUT_NAME, ONNX_FILE, SIGNATURE, TMP_PREFIX
from lensnet.artifacts.outputs import OutputSpec
from lensnet.artifacts.runs import RunInfo, read_run
from lensnet.artifacts.versions import publish, remove_stale_temporaries
from lensnet.core.errors import LensnetError
from lensnet.core.fileio import follow_umask
from lensnet.serving.verification import (
    DEFAULT_ATOL,
    keras_reference,
    max_abs_diff,
    verification_images,
    verify,
)


@dataclass
class ExportResult:
    path: Path
    version: int
    card: dict


def _float32_config(value: Any, found: set[str]) -> Any:
    """Copy of a serialized Keras config with every non-float32 float dtype policy set to float32."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(value.get("config"), dict):
            name = str(value["config"].get("name", ""))
            if name != "float32":
                found.add(name)
                return {**value, "config": {**value["config"], "name": "float32"}}
            return value
        out = {}
        for key, item in value.items():
            if key == "dtype" and isinstance(item, str) and item in ("mixed_float16", "mixed_bfloat16"):
                found.add(item)
                out[key] = "float32"
            else:
                out[key] = _float32_config(item, found)
        return out
    if isinstance(value, list):
        return [_float32_config(item, found) for item in value]
    return value


def float32_model(model: Any) -> tuple[Any, list[str]]:
    """`model` itself if it computes in float32, else a float32 rebuild with the same weights.

    ONNX export needs a float32 dtype policy; a mixed-precision run is rebuilt from its
    config with every policy set to float32 (variables are float32 under mixed precision
    already, so the weights carry over unchanged). Returns (model, policies replaced).
    """
    import keras

    found: set[str] = set()
    config = _float32_config(keras.saving.serialize_keras_object(model), found)
    if not found:
        return model, []
    try:
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:  # any failure here means the run cannot be exported faithfully
        raise LensnetError(
            f"cannot rebuild the {', '.join(sorted(found))} model in float32 for export: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None
    return rebuilt, sorted(found)


def serving_function(model: Any, normalisation: dict, input_shape: Sequence[int], spec: OutputSpec) -> Any:
    """tf.function raw images (N, H, W, C) -> {spec.name: postprocess(model(normalise(images)))}."""
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation

    signature = tf.TensorSpec([None, *input_shape], tf.float32, name=INPUT_NAME)
    kind = spec.handler

    @tf.function(input_signature=[signature])
    def serve(images: tf.Tensor) -> dict:
        outputs = tf.cast(model(apply_normalisation(images, normalisation), training=False), tf.float32)
        return {spec.name: kind.postprocess(spec, outputs, images, normalisation)}

    return serve


def check_run(info: RunInfo, run_dir: Path) -> OutputSpec:
    """The run's output spec, once the run description is fit to export."""
    from lensnet.data.normalise import check_spec

    if not info.output:
        raise LensnetError(f"{run_dir}: run.json has no output spec ('output'); retrain it with this lensnet")
    try:
        spec = OutputSpec.from_json(info.output)
    except LensnetError as exc:
        raise LensnetError(f"{run_dir}: {exc}") from None
    if len(info.input_shape) != 3:
        raise LensnetError(f"{run_dir}: input_shape must be (H, W, C), got {info.input_shape}")
    check_spec(info.normalisation)
    return spec


def _read_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LensnetError(f"{path} is not valid JSON: {exc}") from None


def write_savedmodel(model: Any, function: Any, path: Path) -> None:
    import keras

    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=function)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            archive.write_out(os.fspath(path), verbose=False)
    except Exception as exc:  # TF raises many types; all mean this model cannot be saved
        message = " ".join(str(exc).split())[:300]
        raise LensnetError(f"SavedModel export failed: {type(exc).__name__}: {message}") from None


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch: int = 16,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    seed: int = 0,
    quantize: str | None = None,
    calibration: str | os.PathLike | np.ndarray | None = None,
    calibration_images: int = 256,
    int8_tolerance: float = 0.002,
) -> ExportResult:
    """Export the run's best model to the next version under `out_dir`, verified (see module doc).

    quantize="int8" also writes model.int8.onnx, calibrated on `calibration` (default: the run's
    dataset), compared with the float model on the run's test images (lensnet.serving.quantize)."""
    from lensnet.artifacts.runs import best_model_path
    from lensnet.core.runinfo import package_versions
    from lensnet.serving.onnx_convert import DEFAULT_OPSET, convert_function
    from lensnet.tasks.checkpoints import load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = read_run(run_dir)
    spec = check_run(info, run_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LensnetError(f"--out {out_dir} exists and is not a directory")
    metrics = _read_metrics(run_dir)
    shape = tuple(int(d) for d in info.input_shape)
    opset = opset or DEFAULT_OPSET

    trained = load_model(run_dir)
    if tuple(trained.input_shape[1:]) != shape:
        raise LensnetError(f"{run_dir}: model takes {tuple(trained.input_shape[1:])}, run.json says {shape}")
    model, replaced = float32_model(trained)

    images, image_source = verification_images(info, batch, seed)
    raw = keras_reference(model, info.normalisation, images)
    try:
        spec.handler.check_shape(spec, raw.shape)
    except LensnetError as exc:
        raise LensnetError(f"{run_dir}: {exc}") from None
    reference = keras_reference(model, info.normalisation, images, spec)
    if not np.isfinite(reference).all():
        raise LensnetError(f"{run_dir}: the model outputs NaN or Inf on the verification images; not exported")
    precision: dict[str, Any] = {"exported": "float32", "trained": replaced or ["float32"]}
    if replaced:
        as_trained = keras_reference(trained, info.normalisation, images, spec)
        precision["max_abs_diff_vs_trained"] = max_abs_diff(reference, as_trained)

    card = {
        "format": "lensnet-export",
        "format_version": CARD_FORMAT,
        "name": out_dir.resolve().name,
        "version": None,
        "task": info.task,
        "model": info.model,
        "input": {"name": INPUT_NAME, "shape": [None, *shape], "dtype": "float32", "normalised_inside": True},
        "normalisation": info.normalisation,
        "output": {**spec.to_json(), "shape": [None, *(int(d) for d in reference.shape[1:])]},
        "signature": SIGNATURE,
        "files": {"savedmodel": "saved_model.pb", "onnx": ONNX_FILE},
        "onnx_opset": opset,
        "precision": precision,
        "metrics": metrics,
        "dataset": info.dataset,
        "run": {
            "path": os.fspath(run_dir),
            "checkpoint": os.fspath(best_model_path(run_dir).relative_to(run_dir)),
            "seed": info.seed,
            "status": info.status,
            "epochs_done": info.epochs_done,
            "best_epoch": info.best_epoch,
        },
        "versions": package_versions(),
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

    int8_inputs = _int8_inputs(info, run_dir, shape, quantize, calibration, calibration_images)

    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out_dir))
    try:
        follow_umask(tmp, directory=True)
        function = serving_function(model, info.normalisation, shape, spec)
        write_savedmodel(model, function, tmp)
        convert_function(function, [tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)], tmp / ONNX_FILE, opset)
        figures = verify(tmp, card, images, reference, atol)
        card["verification"] = {"images": int(len(images)), "source": image_source, **figures}
        if int8_inputs is not None:
            _add_int8(tmp, card, spec, int8_inputs, images, image_source, int8_tolerance)
        version = publish(tmp, out_dir, card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(path=out_dir / str(version), version=version, card=card)


def _int8_inputs(info: RunInfo, run_dir: Path, shape: tuple, quantize: str | None,
                 calibration: str | os.PathLike | np.ndarray | None, count: int) -> dict | None:
    """Calibration and test images for --quantize, read (and checked) before anything is written.

    `calibration` is a dataset directory (default: the run's) or raw images (N, H, W, C)."""
    from lensnet.serving.quantize import calibration_images, dataset_images

    if quantize is None:
        return None
    if quantize != "int8":
        raise LensnetError(f"--quantize {quantize!r} is not supported; valid: int8")
    dataset = (info.dataset or {}).get("path")
    if isinstance(calibration, np.ndarray):
        if tuple(calibration.shape[1:]) != tuple(shape):
            raise LensnetError(f"calibration images have shape {tuple(calibration.shape[1:])}; the model takes "
                               f"{tuple(shape)}")
        images, described = calibration[:count].astype(np.float32), f"{min(count, len(calibration))} given images"
    else:
        source = calibration or dataset
        if not source:
            raise LensnetError(f"{run_dir}: run.json names no dataset to calibrate int8 on; give --calibration DIR")
        images, described = calibration_images(source, shape, count)
    test = None
    if dataset and Path(dataset, "manifest.json").is_file():
        test = dataset_images(dataset, ("test", "val"), 2048, labels=True)
    return {"calibration": images, "calibration_source": described, "test": test}


def _add_int8(tmp: Path, card: dict, spec: OutputSpec, inputs: dict, images: np.ndarray, image_source: str,
              tolerance: float) -> None:
    """model.int8.onnx (and, for CNNs, model.int8.tflite) beside model.onnx, and what each costs and saves in
    card["int8"]; the version's runtime is the faster int8 model whose metric moved by at most `tolerance`."""
    from lensnet.serving.quantize import INT8_FILE, compare, quantize_onnx

    label = f"model {card['model']} of {card['run']['path']}"
    details = quantize_onnx(tmp / ONNX_FILE, tmp / INT8_FILE, inputs["calibration"], label=label)
    if inputs["test"] is not None:
        test_images, labels, class_names, source = inputs["test"]
    else:  # no test split here: the verification images, without labels
        test_images, labels, class_names, source = images, None, [], image_source
    figures = compare(tmp / ONNX_FILE, tmp / INT8_FILE, spec, test_images, labels, class_names, source)
    card["files"]["onnx_int8"] = INT8_FILE
    card["int8"] = {**details, "calibration": {"source": inputs["calibration_source"],
                                               "images": int(len(inputs["calibration"]))},
                    "comparison": figures, "tolerance": tolerance}
    candidates = {"onnx-int8": figures}
    if details["mode"] == "static":
        tflite = _add_tflite_int8(tmp, card, spec, inputs["calibration"], (test_images, labels, class_names, source),
                                  label)
        card["int8"]["tflite"] = tflite
        if "comparison" in tflite:
            candidates["tflite-int8"] = tflite["comparison"]
    else:
        card["int8"]["tflite"] = {"skipped": "attention: dynamic int8 quantisation is onnxruntime's only"}
    # predict and serve use an int8 model by default only if it scores as the float model does; of two, the faster
    passing = {name: f for name, f in candidates.items()
               if f["metric"]["change"] is not None and abs(f["metric"]["change"]) <= tolerance}
    card["runtime"] = min(passing, key=lambda n: passing[n]["latency_ms_per_image"]["batch_64"]["int8"],
                          default="onnx")


def _add_tflite_int8(tmp: Path, card: dict, spec: OutputSpec, calibration: np.ndarray, test: tuple,
                     label: str) -> dict:
    """model.int8.tflite from the SavedModel in `tmp`, compared with the float ONNX model on the same test
    images; a model TFLite cannot convert keeps its ONNX int8 model and the reason in the card."""
    from lensnet.serving.quantize import compare
    from lensnet.serving.tflite_int8 import TFLITE_INT8_FILE, TFLiteModel, quantize_tflite

    try:
        details = quantize_tflite(tmp, tmp / TFLITE_INT8_FILE, calibration, SIGNATURE, INPUT_NAME, label)
    except LensnetError as exc:
        return {"error": str(exc)}
    test_images, labels, class_names, source = test
    figures = compare(tmp / ONNX_FILE, tmp / TFLITE_INT8_FILE, spec, test_images, labels, class_names, source,
                      int8_predict=TFLiteModel(tmp / TFLITE_INT8_FILE, threads=1))
    card["files"]["tflite_int8"] = TFLITE_INT8_FILE
    return {**details, "comparison": figures}
