"""export --quantize int8: the int8 ONNX model (and for a CNN the int8 TFLite model) beside the float one,
their comparisons in card.json, predict with each, and the bad inputs (a model with nothing to quantise,
calibration images of another shape, an unknown scheme)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import output_spec, write_run_dir

from lensnet.core.errors import run_cli
from lensnet.export import main as export_main
from lensnet.predict import main as predict_main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run, its dataset): one epoch of cnn_small on a tiny lens-finding set, as lensnet.fit leaves it."""
    from lensnet.data.synthetic import write_synthetic
    from lensnet.fit import main as fit_main

    root = tmp_path_factory.mktemp("int8")
    data = root / "data"
    write_synthetic(data, 96, image_shape=(16, 16, 1), num_classes=2, seed=3, records_per_shard=32)
    argv = ["--task", "lens_finding", "--data", str(data), "--epochs", "2", "--runs", str(root / "runs"),
            "--run-name", "lf", "--set", "task.positive_class=class1", "--set", "model.args.filters=[32,64]",
            "--set", "train.warmup_epochs=0", "--no-progress"]
    assert run_cli(fit_main, argv) == 0
    return root / "runs" / "lf", data


def _predictions(path: Path) -> np.ndarray:
    with open(path, newline="") as handle:
        return np.array([float(row["p_class1"]) for row in csv.DictReader(handle)])


def test_int8_model_beside_the_float_one_compared_and_predicting(capsys, trained_run, tmp_path: Path) -> None:
    run, data = trained_run
    out = tmp_path / "export" / "lf"
    code = run_cli(export_main, ["--run", str(run), "--out", str(out), "--quantize", "int8"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    version = out / "1"
    card = json.loads((version / "card.json").read_text())
    int8 = card["int8"]
    assert (version / "model.int8.onnx").is_file() and card["files"]["onnx_int8"] == "model.int8.onnx"
    assert int8["mode"] == "static" and int8["per_channel"] and "Conv" in int8["quantised_ops"]
    assert int8["calibration"]["source"].startswith(f"{data} split train")
    figures = int8["comparison"]
    assert figures["source"].startswith(f"{data} split test")
    metric = figures["metric"]
    assert metric["name"] == "roc_auc" and 0.0 <= metric["float32"] <= 1.0
    assert metric["change"] == pytest.approx(metric["int8"] - metric["float32"])
    assert figures["size_bytes"]["int8"] < 0.5 * figures["size_bytes"]["float32"]  # int8 weights, fp32 scales
    assert all(v["int8"] > 0 and v["float32"] > 0 for v in figures["latency_ms_per_image"].values())
    assert 0 < figures["max_abs_diff"] < 0.2  # quantised, so not identical, but the same model
    # a CNN also gets the TFLite int8 model: int8 convolutions, the raw input's normalisation left in float32
    tflite = int8["tflite"]
    assert (version / "model.int8.tflite").is_file() and card["files"]["tflite_int8"] == "model.int8.tflite"
    assert "CONV_2D" in tflite["int8_ops"] and any("moments" in n for n in tflite["float_nodes"])
    lite = tflite["comparison"]
    assert lite["source"] == figures["source"] and lite["metric"]["name"] == "roc_auc"
    assert lite["metric"]["float32"] == pytest.approx(metric["float32"], abs=1e-6)  # the same float reference
    assert lite["size_bytes"]["int8"] < 0.5 * lite["size_bytes"]["float32"]
    assert 0 < lite["max_abs_diff"] < 0.2
    # the default runtime: the faster of the int8 models within tolerance, else the float model
    passing = {n: f["latency_ms_per_image"]["batch_64"]["int8"] for n, f in
               (("onnx-int8", figures), ("tflite-int8", lite)) if abs(f["metric"]["change"]) <= int8["tolerance"]}
    assert card["runtime"] == (min(passing, key=passing.get) if passing else "onnx")
    assert "int8 (static, per-channel weights; calibrated on" in printed
    assert "  onnx-int8: roc_auc" in printed and "  tflite-int8: roc_auc" in printed
    assert f"default runtime: {card['runtime']}" in printed

    # predict: explicitly with each runtime, and by default with the card's
    csvs = {}
    for runtime in ("onnx", "onnx-int8", "tflite-int8", None):
        target = tmp_path / f"{runtime}.csv"
        argv = ["--model", str(out), str(data), "--split", "test", "--out", str(target), "--no-progress"]
        assert run_cli(predict_main, argv + (["--runtime", runtime] if runtime else [])) == 0
        _, err = capsys.readouterr()
        assert f"runtime {runtime or card['runtime']}" in err
        csvs[runtime] = _predictions(target)
    diff = np.abs(csvs["onnx"] - csvs["onnx-int8"])
    assert 0 < diff.max() == pytest.approx(figures["max_abs_diff"], abs=1e-3)
    lite_diff = np.abs(csvs["onnx"] - csvs["tflite-int8"])
    assert 0 < lite_diff.max() == pytest.approx(lite["max_abs_diff"], abs=1e-3)
    np.testing.assert_array_equal(csvs[None], csvs[card["runtime"]])


@pytest.mark.parametrize("runtime", ["onnx-int8", "tflite-int8"])
def test_predict_int8_without_an_int8_model_is_one_line(capsys, trained_run, tmp_path: Path, runtime: str) -> None:
    run, data = trained_run
    out = tmp_path / "export" / "plain"
    assert run_cli(export_main, ["--run", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    code = run_cli(predict_main, ["--model", str(out), str(data), "--runtime", runtime,
                                  "--out", str(tmp_path / "p.csv"), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "export the run with --quantize int8" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.csv").exists()


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not [p for p in out.iterdir()]


def test_a_model_without_quantisable_ops_is_named(capsys, trained_run, tmp_path: Path) -> None:
    _, data = trained_run
    inputs = keras.Input((16, 16, 1), name="images")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.PReLU(alpha_initializer="ones")(inputs))
    run = write_run_dir(tmp_path / "run", keras.Model(inputs, features), task="regression", model="prelu",
                        shape=(16, 16, 1), normalisation={"method": "standard"},
                        output=output_spec("regression").to_json())
    out = tmp_path / "export" / "prelu"
    code = run_cli(export_main, ["--run", str(run), "--out", str(out), "--quantize", "int8",
                                 "--calibration", str(data)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and f"model prelu of {run}: no op can be quantised" in err
    assert "the model's weights feed Mul," in err  # Keras' PReLU converts to Relu, Neg and Mul
    _nothing_written(out)


def test_calibration_images_of_another_shape(capsys, trained_run, tmp_path: Path) -> None:
    from lensnet.data.synthetic import write_synthetic

    run, _ = trained_run
    other = tmp_path / "big"
    write_synthetic(other, 16, image_shape=(32, 32, 1), num_classes=2, seed=0, records_per_shard=16)
    out = tmp_path / "export" / "lf"
    code = run_cli(export_main, ["--run", str(run), "--out", str(out), "--quantize", "int8",
                                 "--calibration", str(other)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"calibration data {other} holds images of shape (32, 32, 1); the model takes (16, 16, 1)" in err
    _nothing_written(out)


@pytest.mark.parametrize(("argv", "message"), [(["--quantize", "int4"], "--quantize 'int4' is not supported"),
                                              (["--quantize", "int8", "--calibration-images", "0"],
                                               "--calibration-images must be at least 1")])
def test_bad_quantize_options(capsys, trained_run, tmp_path: Path, argv: list[str], message: str) -> None:
    run, _ = trained_run
    out = tmp_path / "export"
    code = run_cli(export_main, ["--run", str(run), "--out", str(out), *argv])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and message in err
    _nothing_written(out)


def test_bench_infer_profile_ranks_the_nodes_by_kernel_time(tmp_path: Path) -> None:
    """--profile: onnxruntime's per-node kernel times, largest first, per image, every node named with its
    op and input shapes. Which node is slowest is a wall-clock fact (a loaded machine can reorder a Conv and
    its Relu), so only the order and the shares are asserted."""
    import onnx
    from onnx import TensorProto, helper

    from lensnet.bench.infer import _int8_metric, op_profile

    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 8, 3, 3], rng.standard_normal(64 * 8 * 9).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64, 32, 32])], [weight])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    nodes = op_profile(path, rng.standard_normal((4, 8, 32, 32)).astype(np.float32), threads=1, calls=3)
    conv = next(n for n in nodes if n["op"] in ("Conv", "FusedConv"))
    assert conv["inputs"][0] == [4, 8, 32, 32] and all(n["us_per_image"] >= 0 for n in nodes)
    assert all(a["us_per_image"] >= b["us_per_image"] for a, b in zip(nodes, nodes[1:]))
    assert 0 < sum(n["share"] for n in nodes) <= 1.0001
    card = {"int8": {"comparison": {"metric": {"name": "roc_auc", "float32": 0.99, "int8": 0.9904, "change": 0.0004}}}}
    assert _int8_metric(card) == {"int8_metric": "roc_auc", "int8_metric_float32": 0.99, "int8_metric_change": 0.0004}
    assert _int8_metric({}) == {}
    card["int8"]["tflite"] = {"comparison": {"metric": {"name": "roc_auc", "float32": 0.99, "int8": 0.9895,
                                                        "change": -0.0005}}}
    assert _int8_metric(card, "tflite-int8")["int8_metric_change"] == -0.0005
    assert _int8_metric(card, "onnxruntime") == {} and _int8_metric(card, "keras") == {}


def test_the_tflite_int8_runner_answers_concurrent_calls_and_serves(trained_run, tmp_path: Path) -> None:
    """A TFLite interpreter is not thread-safe (calls of different batch sizes from several threads raise
    without the runner's lock) and serve calls one runner from many threads: every answer is the one a
    lone call gives, directly and over HTTP."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from lensnet.artifacts.exports import load_export
    from lensnet.serving.runtimes import open_runner
    from lensnet.serving.server import ModelServer, serve_in_thread
    from lensnet.serving.tflite_int8 import TFLiteModel

    run, _ = trained_run
    out = tmp_path / "export" / "lf"
    assert run_cli(export_main, ["--run", str(run), "--out", str(out), "--quantize", "int8"]) == 0
    exported = load_export(out)
    rng = np.random.default_rng(4)
    batches = [(3.0 + rng.standard_normal((1 + k % 5, 16, 16, 1))).astype(np.float32) for k in range(200)]
    alone = TFLiteModel(exported.tflite_int8_path, threads=1)
    wanted = [alone(b) for b in batches]
    runner = open_runner(exported, "tflite-int8")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(runner, batches))
    for got, want in zip(answers, wanted):
        np.testing.assert_array_equal(got, want)

    with serve_in_thread(ModelServer(out, runtime="tflite-int8", concurrency=4)) as base:
        def ask(batch: np.ndarray) -> np.ndarray:
            body = json.dumps({"instances": batch.tolist()}).encode()
            request = urllib.request.Request(f"{base}/v1/models/lf:predict", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                return np.array(json.loads(response.read())["predictions"], dtype=np.float32)

        with ThreadPoolExecutor(4) as pool:
            served = list(pool.map(ask, batches[:12]))
    for got, want in zip(served, wanted):
        np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-6)
