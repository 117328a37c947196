"""Export: every model family exports to a SavedModel + ONNX pair that matches Keras within 1e-4,
versions are numbered and atomic, exact GELU converts, mixed precision exports, and an unfaithful
export fails with one line and no version directory.

`make_run` (also used by test_predict.py and test_serve.py) writes a run directory by hand:
a tiny registry backbone + the task head, saved where lensnet.fit saves it, and run.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from test_models import TINY  # overrides that make each registry model build in well under a second

from lensnet.errors import LensnetError, run_cli
from lensnet.runs import RunInfo, write_run

FAMILIES = {"cnn": "cnn_small", "resnet": "resnet18", "efficientnet": "effnetv2_b0", "vit": "vit_tiny",
            "deit": "deit_tiny", "swin": "swin_tiny"}
ROOT = Path(__file__).resolve().parents[1]


def make_run(
    run_dir: Path,
    model: str = "cnn_small",
    *,
    kind: str = "multiclass",
    shape: tuple[int, int, int] = (16, 16, 1),
    classes: int = 3,
    normalisation: dict | None = None,
    policy: str = "float32",
    seed: int = 0,
    metrics: dict | None = None,
) -> Path:
    """A run directory as lensnet.fit leaves it: checkpoints/best.keras + run.json (+ metrics.json)."""
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        backbone = create_model(model, shape, **TINY.get(model, {}))
        inputs = keras.Input(shape, name="images")
        features = pool_features(backbone, backbone(inputs))
        if kind == "binary":
            outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head")(features)
        elif kind == "multiclass":
            outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="head")(features)
        else:
            outputs = keras.layers.Dense(1, dtype="float32", name="head")(features)
        net = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Larger weights than the default init, so outputs are far from uniform and a wrong
    # conversion cannot hide behind near-constant probabilities.
    head = net.get_layer("head")
    rng = np.random.default_rng(seed)
    head.set_weights([rng.normal(0, 3.0, w.shape).astype("float32") for w in head.get_weights()])
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    net.save(run_dir / "checkpoints" / "best.keras")
    names = {"binary": ["non_lens", "lens"], "multiclass": [f"c{k}" for k in range(classes)], "regression": []}[kind]
    info = RunInfo(
        task={"binary": "lens_finding", "multiclass": "substructure", "regression": "regression"}[kind],
        model=model,
        output_kind=kind,
        input_shape=list(shape),
        normalisation=normalisation or {"method": "standard"},
        class_names=names,
        positive_class="lens" if kind == "binary" else None,
        target="radius" if kind == "regression" else None,
        dataset={"path": "nowhere", "name": "synthetic", "checksum": "0" * 64},
        seed=seed,
        status="finished",
        epochs_done=1,
        best_epoch=1,
    )
    write_run(run_dir, info)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def raw_images(n: int, shape: tuple[int, int, int], seed: int = 1, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return (loc + scale * np.random.default_rng(seed).standard_normal((n, *shape))).astype("float32")


def three_way(version_dir: Path, run_dir: Path, images: np.ndarray) -> dict[str, float]:
    """Max |diff| of the reloaded SavedModel and onnxruntime against Keras (+ normalisation) on `images`."""
    import onnxruntime as ort
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation
    from lensnet.export import float32_model
    from lensnet.runs import load_model, read_run

    info = read_run(run_dir)
    model, _ = float32_model(load_model(run_dir))
    reference = model(apply_normalisation(images, info.normalisation), training=False).numpy()
    card = json.loads((version_dir / "card.json").read_text())
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    saved = signature(images=tf.constant(images))[card["output"]["name"]].numpy()
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": images})[0]
    return {"savedmodel": float(np.abs(saved - reference).max()), "onnx": float(np.abs(onnx_out - reference).max())}


# One registry family each, spread over output kinds, normalisations and channel counts.
FAMILY_CASES = [
    ("cnn", "binary", {"method": "dataset", "mean": [0.5], "std": [2.0]}, 1),
    ("resnet", "regression", {"method": "minmax"}, 1),
    ("efficientnet", "multiclass", {"method": "standard"}, 3),
    ("vit", "multiclass", {"method": "standard"}, 1),
    ("deit", "binary", {"method": "none"}, 1),
    ("swin", "multiclass", {"method": "dataset", "mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}, 3),
]


@pytest.mark.parametrize("family, kind, normalisation, channels", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_every_family_exports_faithfully(tmp_path, family, kind, normalisation, channels):
    from lensnet.export import export_run

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
    assert result.card["output"]["columns"] == read_run_info(run).output_names()


def read_run_info(run: Path) -> RunInfo:
    from lensnet.runs import read_run

    return read_run(run)


def test_gelu_becomes_erf_and_a_missing_handler_fails_loudly(tmp_path, monkeypatch):
    import onnx
    from tf2onnx.handler import tf_op

    from lensnet.export import export_run
    from lensnet.onnx_utils import OnnxExportError, register_handlers

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

    from lensnet.onnx_utils import unknown_ops

    node = helper.make_node("Erfc", ["x"], ["y"])
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert unknown_ops(model) == ["Erfc"]
    assert onnx.defs.has("Erf")


def test_unfaithful_export_fails_with_one_line_and_leaves_no_version(tmp_path, monkeypatch, capsys):
    from tf2onnx.handler import tf_op

    from lensnet import export
    from lensnet.onnx_utils import register_handlers

    run = make_run(tmp_path / "run", "vit_tiny", kind="binary")
    out = tmp_path / "export" / "lens"
    assert export.export_run(run, out).version == 1

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


def test_versions_count_up_and_card_describes_the_model(tmp_path):
    from lensnet.export import export_run
    from lensnet.inference import list_versions, load_export

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
    assert card["task"] == "substructure" and card["class_names"] == ["c0", "c1", "c2"]
    assert card["input"] == {"name": "images", "shape": [None, 16, 16, 1], "dtype": "float32",
                             "normalised_inside": True}
    assert card["normalisation"] == {"method": "standard"}
    assert card["output"] == {"name": "probabilities", "kind": "multiclass", "columns": ["p_c0", "p_c1", "p_c2"],
                              "shape": [None, 3]}
    assert card["metrics"] == metrics
    assert card["dataset"]["checksum"] == "0" * 64
    assert {"tensorflow", "keras", "tf2onnx", "onnxruntime"} <= set(card["versions"])
    assert card["exported_at"].endswith("+00:00")
    assert card["verification"]["images"] == 17 and card["verification"]["atol"] == 1e-4
    assert card["precision"] == {"exported": "float32", "trained": ["float32"]}


def test_mixed_precision_run_exports_in_float32(tmp_path):
    import onnx
    from onnx import TensorProto

    from lensnet.export import export_run
    from lensnet.runs import load_model

    run = make_run(tmp_path / "run", "vit_tiny", policy="mixed_float16")
    assert load_model(run).get_layer("vit_tiny").dtype_policy.name == "mixed_float16"
    result = export_run(run, tmp_path / "export")
    assert result.card["precision"]["trained"] == ["mixed_float16"]
    assert result.card["precision"]["max_abs_diff_vs_trained"] < 0.05  # float16 rounding only
    model = onnx.load(str(result.path / "model.onnx"))
    assert all(init.data_type != TensorProto.FLOAT16 for init in model.graph.initializer)
    diffs = three_way(result.path, run, raw_images(5, (16, 16, 1)))
    assert max(diffs.values()) <= 1e-4


def test_interrupted_export_leaves_no_version_and_stale_temporaries_are_removed(tmp_path, monkeypatch):
    from lensnet import export
    from lensnet.inference import list_versions

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
    from lensnet.export import next_version

    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "notes", ".tmp-export-1-x"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 4


def test_bad_runs_are_one_line_errors(tmp_path):
    from lensnet.export import export_run

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


def test_a_real_fit_run_exports_and_predicts_like_keras(tmp_path):
    """Through lensnet.fit: the exporter verifies on the run's own dataset, and predict on that
    dataset reproduces the trained Keras model (with the pipeline's normalisation) record by record."""
    import csv

    from lensnet.data.pipeline import load
    from lensnet.data.synthetic import write_synthetic
    from lensnet.export import export_run
    from lensnet.fit import main as fit_main
    from lensnet.predict import main as predict_main
    from lensnet.runs import load_model, read_run

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


def test_a_head_that_disagrees_with_run_json_is_refused(tmp_path):
    from lensnet.export import export_run

    run = make_run(tmp_path / "run", "cnn_small", kind="multiclass", classes=3)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "class_names": ["a", "b"]}))
    with pytest.raises(LensnetError, match=r"outputs shape \(3,\), but a multiclass run \(p_a, p_b\) needs \(2,\)"):
        export_run(run, tmp_path / "out")
