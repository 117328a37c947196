"""Inference speed: Keras vs the exported SavedModel vs onnxruntime (float32 and int8) vs TFLite int8 (CNNs),
at batch 1 and 64.

Each model is exported with lensnet.export (so the artifacts timed are the verified ones, raw
images in, normalisation inside); without `--run`, scratch runs of the registry models named by
`--models` (random weights, 64x64x1, standard normalisation) are made first. The runtimes
are timed in alternation (bench.common.interleaved_rates) so machine noise hits all alike.
Keras is `model.predict_on_batch` on images normalised by the same TF ops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SUMMARY = "Inference images/s and latency: Keras vs SavedModel vs onnxruntime (float32 and int8) vs TFLite int8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="append", default=None, help="run directory to export and time (repeatable)")
    parser.add_argument("--models", default="cnn_small,vit_tiny", help="registry models when no --run is given")
    parser.add_argument("--size", type=int, default=64, help="image size of the scratch models (default 64)")
    parser.add_argument("--channels", type=int, default=1, help="channels of the scratch models (default 1)")
    parser.add_argument("--batch-sizes", default="1,64", help="batch sizes (default 1,64)")
    parser.add_argument("--rounds", type=int, default=3, help="alternation rounds (default 3)")
    parser.add_argument("--unit-seconds", type=float, default=0.5, help="timed work per case and round")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and images")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of every runtime (default: each runtime's choice)")
    parser.add_argument("--profile", action="store_true",
                        help="add onnxruntime's per-node kernel times (float32 and int8) to the JSON rows")
    parser.add_argument("--no-int8", action="store_true",
                        help="skip the int8 model (export --quantize int8; scratch runs calibrate on random pixels)")


def scratch_run(run_dir: Path, model: str, shape: tuple[int, int, int], seed: int, classes: int = 3) -> Path:
    """A run directory with a randomly initialised registry model + softmax head (no training)."""
    import keras

    from lensnet.artifacts.outputs import OutputSpec
    from lensnet.artifacts.runs import BEST, RunInfo, write_run
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape, name="images")
    backbone = create_model(model, shape)
    outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32")(
        pool_features(backbone, backbone(inputs))
    )
    path = run_dir / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(path)
    write_run(
        run_dir,
        RunInfo(
            task="substructure",
            model=model,
            input_shape=list(shape),
            normalisation={"method": "standard"},
            seed=seed,
            status="finished",
            output=OutputSpec("probabilities", "probabilities", columns=tuple(f"p_c{k}" for k in range(classes)),
                              class_names=tuple(f"c{k}" for k in range(classes))).to_json(),
        ),
    )
    return run_dir


def scratch_export(work: Path, model: str, shape: tuple[int, int, int], seed: int,
                   int8: bool = False) -> tuple[Path, Path, dict]:
    """(run dir, export dir, card) of a scratch run exported with lensnet.serving.export
    (+ its int8 model calibrated on random pixels: a scratch run has no dataset)."""
    from lensnet.serving.export import export_run

    run = scratch_run(work / "runs" / model, model, shape, seed)
    calibration = np.random.default_rng(seed).standard_normal((64, *shape)).astype(np.float32) if int8 else None
    result = export_run(run, work / "export" / model, seed=seed, quantize="int8" if int8 else None,
                        calibration=calibration)
    return run, result.path.parent, result.card


def _calibrated(fn: Callable[[], None], batch: int, seconds: float) -> Callable[[], int]:
    """A unit of work of about `seconds`: `fn` repeated; returns images processed."""
    fn()  # warm-up (graph tracing, session allocation)
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    repeats = max(1, int(seconds / once))

    def unit() -> int:
        for _ in range(repeats):
            fn()
        return repeats * batch

    return unit


def time_export(
    run: Path, export_dir: Path, batch_sizes: list[int], rounds: int, seconds: float, seed: int,
    threads: int | None = None, card: dict | None = None, profile: bool = False,
) -> list[dict]:
    """Rows per batch size and runtime; `card` (the export's card.json) adds the int8 model's metric change, measured
    by the export on the run's test images, to the int8 rows."""
    from lensnet.artifacts.exports import load_export
    from lensnet.artifacts.runs import read_run
    from lensnet.bench.common import interleaved_rates, model_flops
    from lensnet.data.normalise import apply_normalisation
    from lensnet.serving.export import float32_model
    from lensnet.serving.runtimes import open_runner
    from lensnet.serving.verification import max_abs_diff
    from lensnet.tasks.checkpoints import load_model

    info = read_run(run)
    model, _ = float32_model(load_model(run))
    exported = load_export(export_dir)
    spec = exported.spec
    runners = {"savedmodel": open_runner(exported, "tf", threads),
               "onnxruntime": open_runner(exported, "onnx", threads)}
    if exported.int8_path:
        runners["onnxruntime-int8"] = open_runner(exported, "onnx-int8", threads)
    if exported.tflite_int8_path:
        runners["tflite-int8"] = open_runner(exported, "tflite-int8", threads)
    params, flops = int(model.count_params()), model_flops(model, exported.input_shape)
    rows = []
    for batch in batch_sizes:
        images = np.random.default_rng(seed).standard_normal((batch, *exported.input_shape)).astype(np.float32)

        def keras_call(images: np.ndarray = images) -> np.ndarray:
            outputs = model.predict_on_batch(apply_normalisation(images, info.normalisation))
            # as exported: an image output is mapped back to input units (identity for other kinds)
            return np.asarray(spec.handler.postprocess(spec, outputs, images, info.normalisation))

        calls = {"keras": keras_call, **{name: (lambda r=r, x=images: r(x)) for name, r in runners.items()}}
        reference = np.asarray(keras_call())
        diffs = {name: max_abs_diff(reference, np.asarray(fn())) for name, fn in calls.items()}
        units = {name: _calibrated(fn, batch, seconds) for name, fn in calls.items()}
        rates = interleaved_rates(units, rounds=rounds)
        profiles = {}
        if profile:
            files = {"onnxruntime": exported.onnx_path, "onnxruntime-int8": exported.int8_path}
            profiles = {name: op_profile(path, images, threads) for name, path in files.items() if path}
        for name, rate in rates.items():
            rows.append(
                {
                    "model": info.model,
                    "input": "x".join(map(str, exported.input_shape)),
                    "params": params,
                    "mflops": None if flops is None else round(flops / 1e6, 1),
                    "batch": batch,
                    "runtime": name,
                    "images_s": round(rate, 1),
                    "ms_per_image": round(1000.0 / rate, 3),
                    "ms_per_call": round(1000.0 * batch / rate, 3),
                    "vs_keras": round(rate / rates["keras"], 2),
                    "vs_onnx": round(rate / rates["onnxruntime"], 2),
                    "max_abs_diff": diffs[name],
                    **_int8_metric(card, name),
                    **({"op_profile": profiles[name]} if name in profiles else {}),
                    # Other jobs on a shared machine show up here: compare rows measured at similar load.
                    "load_1min": round(os.getloadavg()[0], 2),
                }
            )
    return rows


def op_profile(path: Path, images: np.ndarray, threads: int | None, calls: int = 20, top: int = 12) -> list[dict]:
    """The `top` nodes by onnxruntime kernel time (after its graph optimisations), in microseconds per image."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="lensnet-ort-profile-")) / "ort")
    if threads:
        options.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: images}
    for _ in range(calls):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    shutil.rmtree(trace.parent, ignore_errors=True)
    totals: dict[tuple[str, str], list] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = (event["args"]["op_name"], event["name"].removesuffix("_kernel_time"))
            shapes = [next(iter(s.values())) for s in event["args"].get("input_type_shape", [])[:2]]
            totals.setdefault(key, [0.0, shapes])[0] += event["dur"]
    scale = 1.0 / (calls * len(images))  # the profile covers every call, the session's first included
    nodes = sorted(totals.items(), key=lambda kv: -kv[1][0])
    everything = sum(t for t, _ in totals.values())
    return [{"op": op, "node": node, "inputs": shapes, "us_per_image": round(t * scale, 2),
             "share": round(t / everything, 4)} for (op, node), (t, shapes) in nodes[:top]]


def _int8_metric(card: dict | None, runtime: str = "onnxruntime-int8") -> dict:
    """The metric change the export measured for the int8 model `runtime` times (nothing for other runtimes)."""
    int8 = (card or {}).get("int8") or {}
    figures = {"onnxruntime-int8": int8, "tflite-int8": int8.get("tflite") or {}}.get(runtime) or {}
    metric = figures.get("comparison", {}).get("metric") or {}
    if metric.get("change") is None:
        return {}
    return {"int8_metric": metric["name"], "int8_metric_float32": round(metric["float32"], 5),
            "int8_metric_change": round(metric["change"], 5)}


def run(args: argparse.Namespace) -> list[dict]:
    batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lensnet-bench-infer-") as tmp:
        work = Path(tmp)
        if args.run:
            for index, run_dir in enumerate(args.run):
                from lensnet.serving.export import export_run

                result = export_run(run_dir, work / "export" / f"run{index}", seed=args.seed,
                                    quantize=None if args.no_int8 else "int8")
                rows += time_export(
                    Path(run_dir), result.path.parent, batch_sizes, args.rounds, args.unit_seconds, args.seed,
                    args.threads, result.card, args.profile,
                )
        else:
            shape = (args.size, args.size, args.channels)
            for model in [m.strip() for m in args.models.split(",") if m.strip()]:
                run_dir, export_dir, _ = scratch_export(work, model, shape, args.seed, int8=not args.no_int8)
                rows += time_export(run_dir, export_dir, batch_sizes, args.rounds, args.unit_seconds, args.seed,
                                    args.threads, profile=args.profile)
    return rows

