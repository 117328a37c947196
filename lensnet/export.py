"""`python -m lensnet.export --run runs/X --out export/NAME`: a verified SavedModel + ONNX version of a run.

Writes export/NAME/<version>/ (1, 2, ... as TF Serving expects; a new export takes
the next number) holding:

- a SavedModel whose `serving_default` signature takes raw images `images`
  (N, H, W, C) float32 and applies the run's normalisation itself;
- `model.onnx`, the same function (input `images`, one output);
- `card.json`: task, classes, input shape, normalisation, output, test metrics,
  dataset checksum, package versions, export time and the verification figures.

Before a version is published, Keras (float32 model + normalisation), the reloaded
SavedModel and onnxruntime score the same batch and must agree within `--atol`
(default 1e-4). Everything is built in a hidden temporary directory beside the
versions and renamed into place only when verified, so a failed or killed export
leaves no version behind.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.errors import LensnetError, cli_exit
from lensnet.fileio import write_json
from lensnet.inference import CARD, INPUT_NAME, ONNX_FILE, SIGNATURE, ExportedModel, OnnxRunner, TFRunner
from lensnet.runs import RunInfo, read_run

DEFAULT_ATOL = 1e-4
OUTPUT_KINDS = ("binary", "multiclass", "regression")
_TMP_PREFIX = ".tmp-export-"
_NUMERIC = re.compile(r"^[0-9]+$")


class UnfaithfulExport(LensnetError):
    """The exported artifacts do not reproduce the Keras model."""


@dataclass
class ExportResult:
    path: Path
    version: int
    card: dict


# ---- the model as exported ------------------------------------------------------------------------


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


def serving_function(model: Any, normalisation: dict, input_shape: Sequence[int], output_name: str) -> Any:
    """tf.function raw images (N, H, W, C) -> {output_name: model(normalise(images))}."""
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation

    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(images: tf.Tensor) -> dict:
        outputs = model(apply_normalisation(images, normalisation), training=False)
        return {output_name: tf.cast(outputs, tf.float32)}

    return serve


def keras_reference(model: Any, normalisation: dict, images: np.ndarray) -> np.ndarray:
    """What the run's Keras model says about raw `images` (normalised as in training), eagerly."""
    from lensnet.data.normalise import apply_normalisation

    return np.asarray(model(apply_normalisation(images, normalisation), training=False), dtype=np.float32)


def output_name(kind: str) -> str:
    return "value" if kind == "regression" else "probabilities"


# ---- the verification batch -----------------------------------------------------------------------


def verification_images(info: RunInfo, batch: int, seed: int) -> tuple[np.ndarray, str]:
    """Raw images to compare the runtimes on: the run's dataset if it is here, else random pixels.

    An all-zero image is appended: a blank cutout is the edge case where per-image
    normalisation divides by a floored zero std, and runtimes must agree there too.
    """
    shape = tuple(info.input_shape)
    images, source = _dataset_images(info, batch, shape)
    if images is None:
        rng = np.random.default_rng(seed)
        spec = info.normalisation
        if spec.get("method") == "dataset":
            mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
        else:
            mean, std = np.zeros(shape[-1], np.float32), np.ones(shape[-1], np.float32)
        images = (mean + std * rng.standard_normal((batch, *shape))).astype(np.float32)
        source = f"random pixels (seed {seed})"
    zero = np.zeros((1, *shape), np.float32)
    return np.concatenate([images, zero]), source


def _dataset_images(info: RunInfo, batch: int, shape: tuple) -> tuple[np.ndarray | None, str]:
    path = (info.dataset or {}).get("path")
    if not path or not Path(path, "manifest.json").is_file():
        return None, ""
    try:
        from lensnet.data.pipeline import load, open_dataset

        data = open_dataset(path)
        field = "image" if "image" in data.image_names else data.image_names[0]
        for split in ("test", "val", "train"):
            if data.counts.get(split):
                ds = load(data, split, batch_size=batch, fields=[field], normalise="none", shuffle=False)
                images = next(iter(ds))[field].numpy()
                if images.shape[1:] == shape:
                    return images.astype(np.float32), f"{path} split {split}, first {len(images)} records"
                return None, ""
    except Exception:  # an unreadable dataset must not block the export: random pixels still verify
        return None, ""
    return None, ""


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; a shape mismatch or NaN in only one counts as infinitely different."""
    if a.shape != b.shape:
        return float("inf")
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    diff = np.abs(np.nan_to_num(a.astype(np.float64)) - np.nan_to_num(b.astype(np.float64)))
    return float(diff.max()) if diff.size else 0.0


# ---- version directories --------------------------------------------------------------------------


def next_version(out_dir: Path) -> int:
    """One above every numbered entry (complete or not), so a number is never reused."""
    numbers = [int(p.name) for p in out_dir.iterdir() if _NUMERIC.match(p.name)] if out_dir.is_dir() else []
    return max(numbers, default=0) + 1


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary dirs of exports that were killed (their process no longer exists)."""
    for path in out_dir.glob(f"{_TMP_PREFIX}*"):
        pid = path.name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, out_dir: Path, card: dict) -> int:
    """Rename `tmp` to the next free version number; the card is written just before."""
    for _ in range(1000):
        version = next_version(out_dir)
        card["version"] = version
        write_json(tmp / CARD, card)
        try:
            os.rename(tmp, out_dir / str(version))  # fails on an existing non-empty dir: a concurrent export won
            return version
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise LensnetError(f"could not find a free version number under {out_dir}")


# ---- export ----------------------------------------------------------------------------------------


def _check_run(info: RunInfo, run_dir: Path) -> None:
    from lensnet.data.normalise import check_spec

    if info.output_kind not in OUTPUT_KINDS:
        raise LensnetError(f"{run_dir}: unknown output_kind {info.output_kind!r}; expected one of {OUTPUT_KINDS}")
    if len(info.input_shape) != 3:
        raise LensnetError(f"{run_dir}: input_shape must be (H, W, C), got {info.input_shape}")
    if info.output_kind == "binary" and not info.positive_class:
        raise LensnetError(f"{run_dir}: a binary run must name its positive_class")
    check_spec(info.normalisation)


def _read_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LensnetError(f"{path} is not valid JSON: {exc}") from None


def _write_savedmodel(model: Any, function: Any, path: Path) -> None:
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


def verify(version_path: Path, card: dict, images: np.ndarray, reference: np.ndarray, atol: float) -> dict:
    """Score `images` with the SavedModel and onnxruntime from disk and compare with `reference`."""
    exported = ExportedModel(name="", version=0, path=version_path, card=card)
    results = {
        "savedmodel": TFRunner(exported)(images),
        "onnxruntime": OnnxRunner(exported)(images),
    }
    diffs = {name: max_abs_diff(reference, out) for name, out in results.items()}
    figures = {f"max_abs_diff_{name}": diff for name, diff in diffs.items()}
    worst = max(diffs, key=lambda k: diffs[k])
    if not diffs[worst] <= atol:
        raise UnfaithfulExport(
            f"export is not faithful: {worst} differs from Keras by {diffs[worst]:.3g} (> {atol:g}) "
            f"on {len(images)} images; nothing was published"
        )
    return {"atol": atol, **figures}


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    batch: int = 16,
    atol: float = DEFAULT_ATOL,
    opset: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export the run's best model to the next version under `out_dir`, verified (see module doc)."""
    from lensnet.onnx_utils import DEFAULT_OPSET, convert_function
    from lensnet.runinfo import package_versions
    from lensnet.runs import best_model_path, load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = read_run(run_dir)
    _check_run(info, run_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LensnetError(f"--out {out_dir} exists and is not a directory")
    metrics = _read_metrics(run_dir)
    shape = tuple(int(d) for d in info.input_shape)
    opset = opset or DEFAULT_OPSET

    trained = load_model(run_dir)
    if tuple(trained.input_shape[1:]) != shape:
        raise LensnetError(f"{run_dir}: model takes {tuple(trained.input_shape[1:])}, run.json says {shape}")
    model, replaced = float32_model(trained)
    name = output_name(info.output_kind)

    images, image_source = verification_images(info, batch, seed)
    reference = keras_reference(model, info.normalisation, images)
    columns = info.output_names()
    if reference.ndim != 2 or reference.shape[1] != len(columns):
        raise LensnetError(
            f"{run_dir}: the model outputs shape {reference.shape[1:]}, but a {info.output_kind} run "
            f"({', '.join(columns)}) needs ({len(columns)},)"
        )
    if not np.isfinite(reference).all():
        raise LensnetError(f"{run_dir}: the model outputs NaN or Inf on the verification images; not exported")
    precision: dict[str, Any] = {"exported": "float32", "trained": replaced or ["float32"]}
    if replaced:
        as_trained = keras_reference(trained, info.normalisation, images)
        precision["max_abs_diff_vs_trained"] = max_abs_diff(reference, as_trained)

    card = {
        "format": "lensnet-export",
        "format_version": 1,
        "name": out_dir.resolve().name,
        "version": None,
        "task": info.task,
        "model": info.model,
        "class_names": list(info.class_names),
        "positive_class": info.positive_class,
        "target": info.target,
        "input": {"name": INPUT_NAME, "shape": [None, *shape], "dtype": "float32", "normalised_inside": True},
        "normalisation": info.normalisation,
        "output": {
            "name": name,
            "kind": info.output_kind,
            "columns": columns,
            "shape": [None, int(reference.shape[1])],
        },
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

    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=out_dir))
    try:
        function = serving_function(model, info.normalisation, shape, name)
        _write_savedmodel(model, function, tmp)
        convert_function(function, [tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)], tmp / ONNX_FILE, opset)
        figures = verify(tmp, card, images, reference, atol)
        card["verification"] = {"images": int(len(images)), "source": image_source, **figures}
        version = _publish(tmp, out_dir, card)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(path=out_dir / str(version), version=version, card=card)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory (holds run.json)")
    parser.add_argument("--out", required=True, help="export directory export/NAME; versions go below it")
    parser.add_argument("--batch", type=int, default=16, help="verification images (default 16, plus a blank one)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"max abs difference (default {DEFAULT_ATOL})")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification images")
    args = parser.parse_args(argv)
    if args.batch < 1:
        raise LensnetError("--batch must be at least 1")
    if not args.atol > 0:
        raise LensnetError("--atol must be positive")
    from lensnet.runinfo import seed_everything

    seed_everything(args.seed, deterministic_ops=False)
    result = export_run(args.run, args.out, batch=args.batch, atol=args.atol, opset=args.opset, seed=args.seed)
    check = result.card["verification"]
    print(
        f"exported {args.run} -> {result.path} (SavedModel + {ONNX_FILE} + {CARD}); verified on "
        f"{check['images']} images: max |diff| vs Keras SavedModel {check['max_abs_diff_savedmodel']:.2g}, "
        f"onnxruntime {check['max_abs_diff_onnxruntime']:.2g} (atol {check['atol']:g})"
    )
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
