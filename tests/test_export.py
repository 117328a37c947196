"""Export: every model family exports to a SavedModel + ONNX pair that matches Keras within 1e-4,
versions are numbered and atomic, exact GELU converts, mixed precision exports, and an unfaithful
export fails with one line and no version directory.

Image outputs export like the others: a tiny image-to-image run (tests/helpers.make_image_run)
exports with its inverse normalisation inside, and ONNX and the SavedModel agree with Keras.
Run directories are written by hand with tests/helpers.py (make_run, make_image_run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, keras_outputs, make_image_run, make_run, raw_images, three_way

from lensnet.core.errors import LensnetError, run_cli

FAMILIES = {"cnn": "cnn_small", "resnet": "resnet18", "efficientnet": "effnetv2_b0", "vit": "vit_tiny",
            "deit": "deit_tiny", "swin": "swin_tiny", "cvt": "cvt_tiny",
            "cct": "cct_2", "equivariant": "d4cnn_small"}


# One registry family each, spread over output kinds, normalisations and channel counts.
FAMILY_CASES = [
    ("cnn", "binary", {"method": "dataset", "mean": [0.5], "std": [2.0]}, 1),
    ("resnet", "regression", {"method": "minmax"}, 1),
    ("efficientnet", "multiclass", {"method": "standard"}, 3),
    ("vit", "multiclass", {"method": "standard"}, 1),
    ("deit", "binary", {"method": "none"}, 1),
    ("swin", "multiclass", {"method": "dataset", "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}, 3),
    ("cvt", "multiclass", {"method": "standard"}, 1),
    ("cct", "multiclass", {"method": "standard"}, 1),
    ("equivariant", "multiclass", {"method": "standard"}, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("family, kind, normalisation, channels", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_every_family_exports_faithfully(tmp_path, family, kind, normalisation, channels):
    from lensnet.serving.export import export_run

    shape = (16, 16, channels)
    run = make_run(tmp_path / "run", FAMILIES[family], kind=kind, shape=shape, normalisation=normalisation)
    result = export_run(run, tmp_path / "export" / family)
    assert result.version == 1 and result.path == tmp_path / "export" / family / "1"
    check = result.card["verification"]
    assert check["max_abs_diff_savedmodel"] <= 1e-4 and check["max_abs_diff_onnxruntime"] <= 1e-4
    assert sorted(p.name for p in result.path.iterdir()) == [
        "assets", "card.json", "fingerprint.pb", "model.onnx", "saved_model.pb", "variables"
    ]

    # Independently of the exporter's own check: fresh raw images on the scale of the training data.
    loc, scale = (0.5, 2.0) if normalisation["method"] == "dataset" else (3.0, 5.0)
    diffs = three_way(result.path, run, raw_images(9, shape, seed=7, loc=loc, scale=scale))
    assert diffs["savedmodel"] <= 1e-4 and diffs["onnx"] <= 1e-4, diffs

    # The serving contract: raw float32 images named "images" with any batch size.
    import onnx
    import tensorflow as tf

    signature = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, *shape]
    graph = onnx.load(str(result.path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["images"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {k: v for k, v in result.card["output"].items() if k != "shape"} == read_run(run).output


@pytest.mark.slow
@pytest.mark.parametrize("args", [{"tokenizer": "shifted"}, {"tokenizer": "conv"}, {"attention": "locality"}])
def test_vit_options_export_faithfully(tmp_path, args):
    # the shifted-patch tokenizer (slices, pad, per-patch normalisation), the conv stem and locality
    # self-attention (diagonal mask, learned temperature) convert to ONNX
    from lensnet.serving.export import export_run

    run = make_run(tmp_path / "run", "vit_tiny", args=args)
    result = export_run(run, tmp_path / "export")
    check = result.card["verification"]
    assert check["max_abs_diff_savedmodel"] <= 1e-4 and check["max_abs_diff_onnxruntime"] <= 1e-4
    diffs = three_way(result.path, run, raw_images(9, (16, 16, 1), seed=7, loc=3.0, scale=5.0))
    assert diffs["savedmodel"] <= 1e-4 and diffs["onnx"] <= 1e-4, diffs


def read_run(run: Path):
    from lensnet.artifacts.runs import read_run as read

    return read(run)


@pytest.mark.slow
def test_gelu_becomes_erf_and_a_missing_handler_fails_loudly(tmp_path, monkeypatch):
    import onnx
    from tf2onnx.handler import tf_op

    from lensnet.serving.export import export_run
    from lensnet.serving.onnx_convert import OnnxExportError, register_handlers

    run = make_run(tmp_path / "run", "vit_tiny")
    result = export_run(run, tmp_path / "export")
    ops = {node.op_type for node in onnx.load(str(result.path / "model.onnx")).graph.node}
    assert "Erf" in ops and "Erfc" not in ops  # exact GELU kept exact (no tanh approximation)

    # Without lensnet's handler tf2onnx would write an invalid file; here the export stops instead.
    register_handlers()
    monkeypatch.delitem(tf_op._OPSETS[""][9], "Erfc")
    with pytest.raises(OnnxExportError, match="Erfc"):
        export_run(run, tmp_path / "export")
    assert sorted(os.listdir(tmp_path / "export")) == ["1"]


def test_unknown_ops_detects_ops_without_schema():
    import onnx
    from onnx import TensorProto, helper

    from lensnet.serving.onnx_convert import unknown_ops

    node = helper.make_node("Erfc", ["x"], ["y"])
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert unknown_ops(model) == ["Erfc"]
    assert onnx.defs.has("Erf")


@pytest.mark.slow
def test_unfaithful_export_fails_with_one_line_and_leaves_no_version(tmp_path, monkeypatch, capsys):
    from tf2onnx.handler import tf_op

    from lensnet import export
    from lensnet.serving.export import export_run
    from lensnet.serving.onnx_convert import register_handlers

    run = make_run(tmp_path / "run", "vit_tiny", kind="binary")
    out = tmp_path / "export" / "lens"
    assert export_run(run, out).version == 1

    # A plausible but wrong handler (erfc(x) -> erf(x)) converts without complaint: only the
    # numerical comparison can catch it.
    register_handlers()

    @classmethod
    def wrong(cls, ctx, node, **kwargs):
        node.type = "Erf"

    class WrongErfc:
        version_9 = wrong

    monkeypatch.setitem(tf_op._OPSETS[""][9], "Erfc", tf_op._OPSETS[""][9]["Erfc"])
    tf_op("Erfc")(WrongErfc)
    status = run_cli(export.main, ["--run", str(run), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("error: export is not faithful: onnxruntime differs from Keras by") and "\n" not in err
    assert sorted(os.listdir(out)) == ["1"]  # no version 2, no temporary directory


@pytest.mark.slow
def test_versions_count_up_and_card_describes_the_model(tmp_path):
    from lensnet.artifacts.exports import load_export
    from lensnet.artifacts.versions import list_versions
    from lensnet.serving.export import export_run

    metrics = {"accuracy": 0.91, "macro_auc": 0.97}
    run = make_run(tmp_path / "run", "cnn_small", classes=3, metrics=metrics)
    out = tmp_path / "export" / "substructure"
    first, second = export_run(run, out), export_run(run, out)
    assert (first.version, second.version) == (1, 2)
    assert list_versions(out) == [1, 2]
    newest = load_export(out)
    assert newest.version == 2 and newest.name == "substructure"
    card = json.loads((out / "2" / "card.json").read_text())
    assert card["version"] == 2 and card["name"] == "substructure"
    assert card["task"] == "substructure"
    assert card["input"] == {"name": "images", "shape": [None, 16, 16, 1], "dtype": "float32",
                             "normalised_inside": True}
    assert card["normalisation"] == {"method": "standard"}
    assert card["output"] == {
        "kind": "probabilities", "name": "probabilities", "columns": ["p_c0", "p_c1", "p_c2"],
        "class_names": ["c0", "c1", "c2"], "positive_class": None, "units": [], "meaning": "", "image": None,
        "shape": [None, 3],
    }
    assert newest.spec.class_names == ("c0", "c1", "c2")
    assert card["metrics"] == metrics
    assert card["dataset"]["checksum"] == "0" * 64
    assert {"tensorflow", "keras", "tf2onnx", "onnxruntime"} <= set(card["versions"])
    assert card["exported_at"].endswith("+00:00")
    assert card["verification"]["images"] == 17 and card["verification"]["atol"] == 1e-4
    assert card["precision"] == {"exported": "float32", "trained": ["float32"]}


@pytest.mark.slow
def test_mixed_precision_run_exports_in_float32(tmp_path):
    import onnx
    from onnx import TensorProto

    from lensnet.serving.export import export_run
    from lensnet.tasks.checkpoints import load_model

    run = make_run(tmp_path / "run", "vit_tiny", policy="mixed_float16")
    assert load_model(run).get_layer("vit_tiny").dtype_policy.name == "mixed_float16"
    result = export_run(run, tmp_path / "export")
    assert result.card["precision"]["trained"] == ["mixed_float16"]
    assert result.card["precision"]["max_abs_diff_vs_trained"] < 0.05  # float16 rounding only
    model = onnx.load(str(result.path / "model.onnx"))
    assert all(init.data_type != TensorProto.FLOAT16 for init in model.graph.initializer)
    diffs = three_way(result.path, run, raw_images(5, (16, 16, 1)))
    assert max(diffs.values()) <= 1e-4


@pytest.mark.slow
def test_interrupted_export_leaves_no_version_and_stale_temporaries_are_removed(tmp_path, monkeypatch):
    from lensnet.artifacts.versions import list_versions
    from lensnet.serving import export

    run = make_run(tmp_path / "run", "cnn_small")
    out = tmp_path / "export"
    # A SIGKILLed export leaves its hidden temporary dir; it never counts as a version...
    stale = out / ".tmp-export-999999999-abc"
    stale.mkdir(parents=True)
    (stale / "card.json").write_text("{}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_run(run, out)
    assert list_versions(out) == [] and not any(p.name.isdigit() for p in out.iterdir())
    # ...and the next export clears it away (its process is gone).
    assert not stale.exists()
    assert [p.name for p in out.iterdir()] == []
    monkeypatch.undo()
    assert export.export_run(run, out).version == 1


def test_next_version_skips_numbers_in_use(tmp_path):
    from lensnet.artifacts.versions import next_version

    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "notes", ".tmp-export-1-x"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 4


@pytest.mark.slow
def test_bad_runs_are_one_line_errors(tmp_path):
    from lensnet.serving.export import export_run

    with pytest.raises(LensnetError, match="run directory not found"):
        export_run(tmp_path / "nope", tmp_path / "out")
    run = make_run(tmp_path / "run", "cnn_small")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "normalisation": {"method": "zscore"}}))
    with pytest.raises(LensnetError, match="unknown method 'zscore'"):
        export_run(run, tmp_path / "out")
    (run / "run.json").write_text(json.dumps({**info, "input_shape": [32, 32, 1]}))
    with pytest.raises(LensnetError, match="model takes"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_command_line(tmp_path):
    run = make_run(tmp_path / "run", "cnn_small", kind="regression")
    out = tmp_path / "export" / "radius"
    command = [sys.executable, "-m", "lensnet.export", "--run", str(run), "--out", str(out), "--seed", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"-> {out / '1'}" in done.stdout and "onnxruntime" in done.stdout
    bad = subprocess.run([*command[:4], str(tmp_path / "missing"), *command[5:]], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: run directory not found")
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_a_real_fit_run_exports_and_predicts_like_keras(tmp_path):
    """Through lensnet.fit: the exporter verifies on the run's own dataset, and predict on that
    dataset reproduces the trained Keras model (with the pipeline's normalisation) record by record."""
    import csv

    from lensnet.artifacts.runs import read_run
    from lensnet.data.pipeline import load
    from lensnet.data.synthetic import write_synthetic
    from lensnet.fit import main as fit_main
    from lensnet.predict import main as predict_main
    from lensnet.serving.export import export_run
    from lensnet.tasks.checkpoints import load_model

    data = tmp_path / "data"
    write_synthetic(data, 48, image_shape=(16, 16, 1), num_classes=2, seed=3, records_per_shard=16)
    argv = ["--task", "lens_finding", "--data", str(data), "--epochs", "1", "--runs", str(tmp_path / "runs"),
            "--run-name", "lf", "--set", "task.positive_class=class1", "--set", "model.args.filters=[4,8]",
            "--set", "train.warmup_epochs=0", "--no-progress"]
    assert run_cli(fit_main, argv) == 0
    run = tmp_path / "runs" / "lf"
    info = read_run(run)
    result = export_run(run, tmp_path / "export" / "lf")
    assert result.card["verification"]["source"].startswith(f"{data} split test")
    assert result.card["metrics"] == json.loads((run / "metrics.json").read_text())
    assert result.card["dataset"]["checksum"] == info.dataset["checksum"]

    out = tmp_path / "p.csv"
    assert run_cli(predict_main, ["--model", str(tmp_path / "export" / "lf"), str(data), "--split", "test",
                                  "--out", str(out), "--no-progress"]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    batch = next(iter(load(data, "test", batch_size=64, fields=["id", "image"], normalise=info.normalisation)))
    keras_p = load_model(run)(batch["image"], training=False).numpy()[:, 0]
    by_id = {r["source"]: float(r["p_class1"]) for r in rows}
    predicted = np.array([by_id[i.decode()] for i in batch["id"].numpy()])
    np.testing.assert_allclose(predicted, keras_p, atol=1e-4)


@pytest.mark.slow
def test_a_head_that_disagrees_with_the_output_spec_is_refused(tmp_path):
    from lensnet.serving.export import export_run

    run = make_run(tmp_path / "run", "cnn_small", kind="multiclass", classes=3)
    info = json.loads((run / "run.json").read_text())
    two = {**info["output"], "columns": ["p_a", "p_b"], "class_names": ["a", "b"]}
    (run / "run.json").write_text(json.dumps({**info, "output": two}))
    with pytest.raises(LensnetError, match=r"a probabilities output \(p_a, p_b\) has shape \(N, 2\); "
                                           r"the model returns \(17, 3\)"):
        export_run(run, tmp_path / "out")
    image = {"kind": "image", "name": "image", "image": {"shape": [16, 16, 1], "inverse": None}}
    (run / "run.json").write_text(json.dumps({**info, "output": image}))
    with pytest.raises(LensnetError, match=r"an image output has shape \(N, 16, 16, 1\)"):
        export_run(run, tmp_path / "out")
    (run / "run.json").write_text(json.dumps({**info, "output": {**info["output"], "kind": "heatmap"}}))
    with pytest.raises(LensnetError, match="unknown output kind 'heatmap'; known kinds: image, probabilities"):
        export_run(run, tmp_path / "out")
    legacy = {k: v for k, v in info.items() if k != "output"}
    (run / "run.json").write_text(json.dumps({**legacy, "output_kind": "multiclass", "class_names": ["a"]}))
    with pytest.raises(LensnetError, match="written by an older lensnet"):
        export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("normalisation", [
    {"method": "dataset", "mean": [100.0, 50.0], "std": [20.0, 5.0]},
    {"method": "standard"},
    {"method": "minmax"},
], ids=["dataset", "standard", "minmax"])
def test_image_outputs_export_in_input_units_and_verify_with_onnx(tmp_path, normalisation):
    """An image-to-image model: the exported function inverts the normalisation, so raw pixels in
    give pixels in input units out, and SavedModel and ONNX agree with Keras within 1e-4 of the range."""
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation
    from lensnet.serving.export import export_run
    from lensnet.tasks.checkpoints import load_model

    shape = (16, 16, 2)
    run = make_image_run(tmp_path / "run", shape=shape, normalisation=normalisation)
    result = export_run(run, tmp_path / "export" / "img")
    card = result.card
    assert card["output"]["kind"] == "image" and card["output"]["shape"] == [None, 16, 16, 2]
    assert card["output"]["image"] == {"shape": [16, 16, 2], "inverse": "input"}
    check = card["verification"]
    assert check["tolerance"] > 0 and max(check["max_abs_diff_savedmodel"], check["max_abs_diff_onnxruntime"]) \
        <= check["tolerance"]

    images = raw_images(5, shape, seed=3, loc=100.0, scale=20.0)
    reference = keras_outputs(run, images)
    span = float(np.ptp(reference))
    diffs = three_way(result.path, run, images)
    assert max(diffs.values()) <= 1e-4 * span, diffs

    # In input units: the raw network output, mapped back by hand, is what the export returns.
    net = load_model(run)
    normalised_out = net(apply_normalisation(images, normalisation)).numpy()
    if normalisation["method"] == "dataset":
        by_hand = normalised_out * np.array([20.0, 5.0]) + np.array([100.0, 50.0])
    elif normalisation["method"] == "standard":
        by_hand = normalised_out * images.std(axis=(1, 2), keepdims=True) + images.mean(axis=(1, 2), keepdims=True)
    else:
        low, high = images.min(axis=(1, 2), keepdims=True), images.max(axis=(1, 2), keepdims=True)
        by_hand = normalised_out * (high - low) + low
    signature = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    served = signature(images=tf.constant(images))["image"].numpy()
    np.testing.assert_allclose(served, by_hand, atol=1e-3 * span)


def test_image_export_tolerance_is_relative_to_the_output_range():
    from lensnet.artifacts.outputs import OutputSpec

    spec = OutputSpec("image", "image", image={"shape": [2, 2, 1], "inverse": None})
    reference = np.array([0.0, 5000.0], dtype=np.float32)
    assert spec.handler.tolerance(spec, reference, 1e-4) == pytest.approx(0.5)
    assert spec.handler.tolerance(spec, np.zeros(3, np.float32), 1e-4) == 1e-4
    probabilities = OutputSpec("probabilities", "p", columns=("p_a", "p_b"), class_names=("a", "b"))
    assert probabilities.handler.tolerance(probabilities, reference, 1e-4) == 1e-4


@pytest.mark.slow
def test_cards_of_an_older_format_are_refused_with_one_line(tmp_path):
    import shutil

    from lensnet.artifacts.exports import load_export
    from lensnet.serving.export import export_run

    result = export_run(make_run(tmp_path / "run", "cnn_small"), tmp_path / "export")
    old = tmp_path / "export" / "2"
    shutil.copytree(result.path, old)
    card = json.loads((old / "card.json").read_text())
    card.update(format_version=1, output={"name": "probabilities", "kind": "multiclass", "columns": ["p_c0"],
                                          "shape": [None, 1]})
    (old / "card.json").write_text(json.dumps(card))
    with pytest.raises(LensnetError, match=r"card.json is not a valid model card: .*older lensnet"):
        load_export(tmp_path / "export", 2)
    assert load_export(tmp_path / "export", 1).spec.kind == "probabilities"


@pytest.mark.slow
def test_a_new_output_kind_is_one_registered_class(tmp_path):
    """Defined here, outside export/predict/serve: the kind's own check_shape, post-processing (inside the
    exported graph, ONNX included), CSV columns and JSON reach every stage without editing them."""
    import csv

    from lensnet.artifacts.exports import load_export
    from lensnet.artifacts.outputs import OutputKind, OutputSpec, register_output_kind
    from lensnet.predict import main as predict_main
    from lensnet.serving.export import export_run
    from lensnet.serving.runtimes import open_runner

    @register_output_kind
    class Magnitude(OutputKind):  # the model's log10 flux as an AB-like magnitude
        name = "test_magnitude"

        def check_shape(self, spec, shape):
            if len(shape) != 2 or shape[1] != 1:
                raise LensnetError(f"a magnitude output is (N, 1), got {tuple(shape)}")

        def postprocess(self, spec, outputs, images, normalisation):
            return -2.5 * outputs + 25.0

        def csv_header(self, spec):
            return ["magnitude"]

        def json_outputs(self, spec, outputs):
            return [{"magnitude": float(v)} for v in outputs[:, 0]]

    run = make_run(tmp_path / "run", "cnn_small", kind="regression")
    info = json.loads((run / "run.json").read_text())
    spec = OutputSpec("test_magnitude", "magnitude")
    (run / "run.json").write_text(json.dumps({**info, "output": spec.to_json()}))
    result = export_run(run, tmp_path / "export")
    assert result.card["output"]["kind"] == "test_magnitude"

    images = raw_images(3, (16, 16, 1), seed=2, loc=3.0)
    reference = keras_outputs(run, images)
    assert max(three_way(result.path, run, images).values()) <= 1e-4
    exported = load_export(tmp_path / "export")
    np.testing.assert_allclose(open_runner(exported, "onnx")(images), reference, atol=1e-4)
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "p.csv"
    assert run_cli(predict_main, ["--model", str(tmp_path / "export"), str(tmp_path / "x.npy"), "--out", str(out),
                                  "--no-progress"]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["source", "magnitude"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], reference[:, 0], atol=1e-4)
    assert exported.kind.json_outputs(exported.spec, reference)[0] == {"magnitude": float(reference[0, 0])}
