"""Distillation from a teacher run (`lensnet.fit --teacher`): the teacher's pull, hard targets, the
teacher's own normalisation, separate heads averaged at inference, no teacher in the export, and
bad teachers as one-line errors with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import TINY, write_run_dir

from lensnet.core.errors import LensnetError, run_cli
from lensnet.fit import main as fit_main

CLASSES = ["class0", "class1", "class2"]
DEIT = [f"--set=model.args.{k}={json.dumps(v)}" for k, v in TINY["deit_tiny"].items()]
VIT = [f"--set=model.args.{k}={json.dumps(v)}" for k, v in TINY["vit_tiny"].items()]


@pytest.fixture(scope="module")
def three_class(tmp_path_factory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("distil") / "three"
    write_synthetic(path, 96, image_shape=(16, 16, 1), num_classes=3, seed=1, records_per_shard=32)
    return path


def spec(classes=CLASSES) -> dict:
    from lensnet.artifacts.outputs import OutputSpec

    return OutputSpec("probabilities", "probabilities", columns=tuple(f"p_{c}" for c in classes),
                      class_names=tuple(classes)).to_json()


def constant_teacher(run_dir: Path, favourite: int, classes=CLASSES, task: str = "substructure",
                     normalisation: dict | None = None, shape: tuple = (16, 16, 1)) -> Path:
    """A teacher run whose model predicts class `favourite` for every image."""
    inputs = keras.Input(shape, name="images")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    head = keras.layers.Dense(len(classes), activation="softmax", name="head")
    outputs = head(x)
    net = keras.Model(inputs, outputs)
    bias = np.full(len(classes), -5.0, "float32")
    bias[favourite] = 5.0
    head.set_weights([np.zeros((1, len(classes)), "float32"), bias])
    return write_run_dir(run_dir, net, task=task, model="constant", shape=shape,
                         normalisation=normalisation or {"method": "standard"}, output=spec(classes))


def flux_teacher(run_dir: Path, normalisation: dict) -> Path:
    """A teacher whose probabilities depend on the absolute level of its (normalised) input."""
    inputs = keras.Input((16, 16, 1), name="images")
    x = keras.layers.Flatten()(inputs)
    head = keras.layers.Dense(3, activation="softmax", name="head")
    net = keras.Model(inputs, head(x))
    rng = np.random.default_rng(0)
    head.set_weights([rng.normal(0, 0.3, (256, 3)).astype("float32"), np.zeros(3, "float32")])
    return write_run_dir(run_dir, net, task="substructure", model="flux", shape=(16, 16, 1),
                         normalisation=normalisation, output=spec())


def fit(capsys, *argv: str) -> tuple[int, str, str]:
    code = run_cli(fit_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_hard_targets_are_the_teacher_argmax():
    from lensnet.tasks.distillation import distillation_targets

    p = np.random.default_rng(0).dirichlet(np.ones(4), size=32).astype("float32")
    hard = np.asarray(distillation_targets(p, "hard"))
    np.testing.assert_array_equal(hard, np.eye(4)[p.argmax(axis=1)])
    soft = np.asarray(distillation_targets(p, "soft", temperature=1.0))
    np.testing.assert_allclose(soft, p, atol=1e-5)  # T = 1 is the teacher's own distribution
    warm = np.asarray(distillation_targets(p, "soft", temperature=4.0))
    assert (warm.max(axis=1) <= p.max(axis=1) + 1e-6).all()  # a higher temperature softens


@pytest.mark.parametrize("student, teacher", [
    ({"method": "none"}, {"method": "dataset", "mean": [3.0], "std": [2.0]}),
    ({"method": "dataset", "mean": [1.0], "std": [4.0]}, {"method": "none"}),
    ({"method": "standard"}, {"method": "minmax"}),
    ({"method": "minmax"}, {"method": "standard"}),
    ({"method": "dataset", "mean": [1.0], "std": [4.0]}, {"method": "standard"}),
    ({"method": "none"}, {"method": "asinh", "beta": 2.0}),
    ({"method": "standard"}, {"method": "asinh", "beta": 2.0, "bands": "joint"}),
    ({"method": "asinh", "beta": 2.0}, {"method": "asinh", "beta": 2.0}),
])
def test_teacher_sees_images_normalised_its_own_way(tmp_path, student, teacher):
    """The classic bug: the student's normalised images fed to a teacher trained on other units."""
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation
    from lensnet.tasks.distillation import load_teacher

    run = flux_teacher(tmp_path / "teacher", teacher)
    loaded = load_teacher(str(run), "substructure", CLASSES, (16, 16, 1), student)
    raw = (5.0 + 3.0 * np.random.default_rng(1).standard_normal((6, 16, 16, 1))).astype("float32")
    got = np.asarray(loaded.probabilities(apply_normalisation(raw, student), student))
    want = np.asarray(loaded.model(apply_normalisation(raw, teacher)))
    np.testing.assert_allclose(got, want, atol=1e-4)
    wrong = np.asarray(loaded.model(apply_normalisation(raw, student)))  # fed the student's way
    if teacher["method"] in ("none", "dataset"):
        assert np.abs(wrong - want).max() > 1e-2  # the test would see the bug
    assert tf.reduce_all(tf.math.is_finite(got))


def test_teacher_needing_absolute_flux_from_a_per_image_student_is_refused(tmp_path):
    from lensnet.tasks.distillation import load_teacher

    run = flux_teacher(tmp_path / "teacher", {"method": "dataset", "mean": [3.0], "std": [2.0]})
    with pytest.raises(LensnetError, match="data.normalise=dataset"):
        load_teacher(str(run), "substructure", CLASSES, (16, 16, 1), {"method": "standard"})


def test_an_asinh_student_needs_a_teacher_run_with_its_own_spec(tmp_path):
    """asinh is non-linear: a teacher normalised any other way cannot be given its input."""
    from lensnet.tasks.distillation import load_teacher

    student = {"method": "asinh", "beta": 1.0}
    for teacher in ({"method": "standard"}, {"method": "asinh", "beta": 3.0}):
        run = flux_teacher(tmp_path / f"teacher-{len(teacher)}", teacher)
        with pytest.raises(LensnetError, match="cannot be recovered from images normalised by 'asinh'"):
            load_teacher(str(run), "substructure", CLASSES, (16, 16, 1), student)


def test_teacher_class_order_is_mapped_by_name(tmp_path):
    from lensnet.tasks.distillation import load_teacher

    run = constant_teacher(tmp_path / "teacher", 0, classes=["class2", "class0", "class1"])  # predicts class2
    loaded = load_teacher(str(run), "substructure", CLASSES, (16, 16, 1), {"method": "standard"})
    p = np.asarray(loaded.probabilities(np.zeros((2, 16, 16, 1), "float32"), {"method": "standard"}))
    assert (p.argmax(axis=1) == 2).all()


@pytest.mark.slow
def test_a_one_class_teacher_pulls_the_student_there_and_is_not_exported(capsys, three_class, tmp_path):
    teacher = constant_teacher(tmp_path / "teacher", favourite=1)
    code, out, err = fit(capsys, "--task", "substructure", "--model", "deit_tiny", "--data", str(three_class),
                         "--teacher", str(teacher), "--epochs", "3", "--lr", "0.01", "--runs", str(tmp_path),
                         "--run-name", "student", "--set", "task.alpha=1.0", "--set", "train.warmup_epochs=0",
                         "--set", "train.precise_bn_batches=0", *DEIT)
    assert code == 0, err
    run = tmp_path / "student"
    from lensnet.tasks.checkpoints import load_model

    best = load_model(run)
    images = np.random.default_rng(0).standard_normal((16, 16, 16, 1)).astype("float32")
    # alpha 1: the labels have no weight, the distillation head learned the teacher's one class
    distill_head = keras.Model(best.inputs, best.get_layer("distill_logits").output)
    assert (np.asarray(distill_head(images)).argmax(axis=1) == 1).all()
    p = np.asarray(best(images))  # the mean of both heads leans there too
    assert p[:, 1].mean() > 0.5
    # the exported network is the student alone: class + distillation heads averaged, no teacher layer
    names = {layer.name for layer in best.layers}
    assert {"class_logits", "distill_logits", "class_probabilities"} <= names and "head" not in names
    from lensnet.models import create_model

    backbone = create_model("deit_tiny", (16, 16, 1), **TINY["deit_tiny"])
    assert best.count_params() == backbone.count_params() + 2 * (16 * 3 + 3)
    config = json.loads((run / "run.json").read_text())
    assert config["output"]["class_names"] == CLASSES

    from lensnet.serving.export import export_run

    result = export_run(run, tmp_path / "export")
    assert result.card["verification"]["max_abs_diff_onnxruntime"] <= 1e-4
    # the student's export can teach the next student (teacher from an export directory)
    from lensnet.tasks.distillation import load_teacher

    again = load_teacher(str(tmp_path / "export"), "substructure", CLASSES, (16, 16, 1), {"method": "standard"})
    from lensnet.data.normalise import apply_normalisation

    q = np.asarray(again.probabilities(apply_normalisation(images, {"method": "standard"}), {"method": "standard"}))
    np.testing.assert_allclose(q, np.asarray(best(apply_normalisation(images, {"method": "standard"}))), atol=1e-4)


@pytest.mark.slow
def test_soft_distillation_trains(capsys, three_class, tmp_path):
    teacher = constant_teacher(tmp_path / "teacher", favourite=1)
    code, _, err = fit(capsys, "--task", "substructure", "--model", "deit_tiny", "--data", str(three_class),
                       "--teacher", str(teacher), "--epochs", "1", "--runs", str(tmp_path), "--run-name", "s",
                       "--set", "task.alpha=0.5", "--set", "task.distill=soft", "--set", "train.warmup_epochs=0",
                       "--set", "train.precise_bn_batches=0", *DEIT)
    assert code == 0, err


@pytest.mark.slow
def test_feature_distillation_vit_from_vit(capsys, three_class, tmp_path):
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(0)
    backbone = create_model("vit_tiny", (16, 16, 1), **{**TINY["vit_tiny"], "num_layers": 2})
    inputs = keras.Input((16, 16, 1), name="images")
    net = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(
        pool_features(backbone, backbone(inputs))))
    teacher = write_run_dir(tmp_path / "teacher", net, task="substructure", model="vit_tiny", shape=(16, 16, 1),
                            normalisation={"method": "standard"}, output=spec())
    code, _, err = fit(capsys, "--task", "substructure", "--model", "vit_tiny", "--data", str(three_class),
                       "--teacher", str(teacher), "--epochs", "1", "--runs", str(tmp_path), "--run-name", "fd",
                       "--set", "task.feature_block=0", "--set", "task.feature_weight=2.0",
                       "--set", "train.precise_bn_batches=0", *VIT)
    assert code == 0, err
    history = (tmp_path / "fd" / "history.csv").read_text()
    assert "nan" not in history.lower()

    from lensnet.tasks.distillation import DistillationModel

    last = keras.models.load_model(tmp_path / "fd" / "checkpoints" / "last.keras", safe_mode=True)
    assert isinstance(last, DistillationModel) and last.token_projection.kernel.shape == (16, 16)


@pytest.mark.parametrize("kind, message", [
    ("task", "trained for task 'lens_finding'"),
    ("classes", "classes (a, b, c) differ"),
    ("missing", "not found"),
    ("option", "task.distill must be one of"),
    ("shape", "takes images of shape (32, 32, 1), the dataset has (16, 16, 1)"),
])
def test_bad_teachers_are_one_line_and_write_nothing(capsys, three_class, tmp_path, kind, message):
    teacher = tmp_path / "teacher"
    extra = []
    if kind == "task":
        constant_teacher(teacher, 0, task="lens_finding")
    elif kind == "classes":
        constant_teacher(teacher, 0, classes=["a", "b", "c"])
    elif kind == "shape":
        constant_teacher(teacher, 0, shape=(32, 32, 1))
    elif kind == "option":
        constant_teacher(teacher, 0)
        extra = ["--set", "task.distill=lukewarm"]
    code, out, err = fit(capsys, "--task", "substructure", "--model", "deit_tiny", "--data", str(three_class),
                         "--teacher", str(teacher), "--runs", str(tmp_path / "runs"), "--run-name", "bad",
                         *extra, *DEIT)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "runs" / "bad").exists()


# ---- attention-map distillation (task.attention_block) -------------------------------------------


def transformer_teacher(run_dir: Path, model: str = "vit_tiny", seed: int = 0, **overrides):
    """A teacher run with random weights (ViT/DeiT: 2 blocks) and its backbone."""
    from lensnet.models import create_model, pool_features

    keras.utils.set_random_seed(seed)
    depth = {"num_layers": 2} if model in ("vit_tiny", "deit_tiny") else {}
    backbone = create_model(model, (16, 16, 1), **{**TINY[model], **depth, **overrides})
    inputs = keras.Input((16, 16, 1), name="images")
    net = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(
        pool_features(backbone, backbone(inputs))))
    write_run_dir(run_dir, net, task="substructure", model=model, shape=(16, 16, 1),
                  normalisation={"method": "standard"}, output=spec())
    return run_dir, backbone


def attention_student(teacher_run: Path, model: str = "vit_tiny", block: int = 1, seed: int = 1, **overrides):
    """A distillation model with attention matching at `block`, the teacher attached, as build_student makes it."""
    from lensnet.models import create_model
    from lensnet.tasks.distillation import (
        DistillationModel,
        DistillationOptions,
        check_block_matching,
        distillation_network,
        load_teacher,
    )

    keras.utils.set_random_seed(seed)
    teacher = load_teacher(str(teacher_run), "substructure", CLASSES, (16, 16, 1), {"method": "standard"})
    args = {**TINY[model], "num_layers": 2, **overrides}
    network = distillation_network(lambda shape: create_model(model, shape, **args), (16, 16, 1), 3)
    model_ = DistillationModel(network, attention_block=block, attention_weight=1.0,
                               normalisation={"method": "standard"},
                               teacher_prefix=int(teacher.backbone().num_prefix_tokens))
    check_block_matching(model_.student_backbone(), teacher.backbone(),
                         DistillationOptions(teacher=str(teacher_run), attention_block=block), str(teacher_run))
    model_.attach_teacher(teacher)
    return model_


def images(n: int = 8, seed: int = 0) -> np.ndarray:
    from lensnet.data.normalise import apply_normalisation

    raw = np.random.default_rng(seed).standard_normal((n, 16, 16, 1)).astype("float32")
    return np.asarray(apply_normalisation(raw, {"method": "standard"}))


def test_attention_loss_is_zero_for_a_student_equal_to_its_teacher(tmp_path):
    run, _ = transformer_teacher(tmp_path / "teacher")
    student = attention_student(run)
    loaded = student.attached.backbone
    student.student_backbone().set_weights(loaded.get_weights())
    x = images()
    loss = np.asarray(student.matching_losses(x, student.teacher_outputs(x))["attention"])
    assert loss.shape == (8,)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    other = attention_student(run, seed=5)  # other weights: a positive divergence
    assert float(np.min(other.matching_losses(x, other.teacher_outputs(x))["attention"])) > 1e-4


def test_attention_loss_decreases_on_a_fixed_batch(tmp_path):
    import tensorflow as tf

    run, _ = transformer_teacher(tmp_path / "teacher", model="vit_tiny")
    student = attention_student(run, model="deit_tiny", block=0)  # DeiT 2 prefix tokens vs ViT 1: patch part
    x = tf.constant(images())
    teacher = student.teacher_outputs(x)
    optimizer = keras.optimizers.Adam(1e-2)
    variables = student.student_backbone().trainable_variables
    losses = []
    for _ in range(8):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(student.matching_losses(x, teacher)["attention"])
        pairs = [(g, v) for g, v in zip(tape.gradient(loss, variables), variables) if g is not None]
        optimizer.apply_gradients(pairs)  # blocks after attention_block get no gradient
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_attention_distillation_trains_through_fit_and_exports_nothing_of_it(capsys, three_class, tmp_path):
    run, _ = transformer_teacher(tmp_path / "teacher", model="deit_tiny")
    code, _, err = fit(capsys, "--task", "substructure", "--model", "vit_tiny", "--data", str(three_class),
                       "--teacher", str(run), "--epochs", "1", "--runs", str(tmp_path), "--run-name", "ad",
                       "--set", "task.attention_block=-1", "--set", "task.attention_weight=2.0",
                       "--set", "train.precise_bn_batches=0", *VIT, "--set=model.args.num_layers=2")
    assert code == 0, err
    assert "nan" not in (tmp_path / "ad" / "history.csv").read_text().lower()
    from lensnet.tasks.checkpoints import load_model
    from lensnet.tasks.distillation import DistillationModel

    last = keras.models.load_model(tmp_path / "ad" / "checkpoints" / "last.keras", safe_mode=True)
    assert isinstance(last, DistillationModel)
    assert (last.attention_block, last.attention_weight, last.teacher_prefix) == (-1, 2.0, 2)
    config = last.get_config()
    again = DistillationModel.from_config(config)  # config round trip
    assert {k: again.get_config()[k] for k in ("attention_block", "attention_weight", "teacher_prefix")} == \
        {"attention_block": -1, "attention_weight": 2.0, "teacher_prefix": 2}
    best = load_model(tmp_path / "ad")  # the exported network: the student alone, no extra weights
    from lensnet.models import create_model

    backbone = create_model("vit_tiny", (16, 16, 1), **{**TINY["vit_tiny"], "num_layers": 2})
    assert best.count_params() == backbone.count_params() + 2 * (16 * 3 + 3)


@pytest.mark.parametrize("kind, message", [
    ("grid", "patch grid (4, 4) differs from the teacher's (2, 2)"),
    ("block", "task.attention_block=7: the teacher model"),
    ("cnn", "is not a ViT or DeiT"),
    ("weight", "task.attention_weight must be a non-negative number"),
])
def test_bad_attention_distillation_is_one_line_and_writes_nothing(capsys, three_class, tmp_path, kind, message):
    teacher = tmp_path / "teacher"
    extra = ["--set", "task.attention_block=0"]
    if kind == "grid":
        transformer_teacher(teacher, patch_size=8)
    elif kind == "block":
        transformer_teacher(teacher)
        extra = ["--set", "task.attention_block=7", "--set=model.args.num_layers=8"]
    elif kind == "cnn":
        transformer_teacher(teacher, model="resnet18")
    else:
        transformer_teacher(teacher)
        extra += ["--set", "task.attention_weight=-1"]
    code, out, err = fit(capsys, "--task", "substructure", "--model", "vit_tiny", "--data", str(three_class),
                         "--teacher", str(teacher), "--runs", str(tmp_path / "runs"), "--run-name", "bad",
                         *VIT, *extra)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.slow
def test_bench_distill_adds_an_attention_row(capsys, three_class, tmp_path, monkeypatch):
    from lensnet.bench.__main__ import main as bench_main

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    tiny = [f"--set=model.args.{k}={json.dumps(v)}" for k, v in {**TINY["vit_tiny"], "num_layers": 2}.items()]
    code = run_cli(bench_main, ["distill", "--data", str(three_class), "--teacher", "vit_tiny", "--student",
                                "vit_tiny", "--epochs", "1", "--repeats", "1", "--batch-size", "32",
                                "--attention-block", "1", "--seed", "0", *tiny,
                                "--set", "train.precise_bn_batches=0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (result,) = (tmp_path / "results").glob("distill-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [r["role"] for r in rows] == ["teacher", "student", "student+teacher", "student+teacher+attention"]
    assert rows[3]["params"] == rows[2]["params"]  # attention matching exports nothing
    for row in rows:  # every AUC has its interval; every row but the student's its paired difference from it
        assert row["auc_lo"] <= row["macro_auc"] <= row["auc_hi"], row
        if row["role"] != "student":
            assert row["auc_minus_student"] == pytest.approx(row["macro_auc"] - rows[1]["macro_auc"], abs=1e-3)
            assert row["diff_lo"] <= row["auc_minus_student"] <= row["diff_hi"], row
    assert "auc_minus_student" not in rows[1]


@pytest.mark.slow
def test_bench_distill_attention_with_a_cnn_teacher_is_refused_before_training(capsys, tmp_path):
    from lensnet.bench.__main__ import main as bench_main

    code = run_cli(bench_main, ["distill", "--data", str(tmp_path / "nowhere"), "--teacher", "resnet18",
                                "--attention-block", "3"])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: --attention-block: the teacher resnet18 is a resnet")
    assert len(err.strip().splitlines()) == 1


def test_bench_distill_with_a_teacher_of_another_input_shape_is_one_line_through_the_command(three_class, tmp_path):
    """Through `python -m lensnet.bench distill` itself: the teacher run takes 32 px, the data are 16 px."""
    import os
    import subprocess
    import sys

    teacher = constant_teacher(tmp_path / "teacher", 0, shape=(32, 32, 1))
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "lensnet.bench", "distill", "--data", str(three_class),
                           "--teacher-run", str(teacher), "--student", "deit_tiny", "--epochs", "1", "--seed", "0",
                           *DEIT], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "LENSNET_BENCH_DIR": str(results), "TF_CPP_MIN_LOG_LEVEL": "3"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert errors == [f"error: teacher {teacher} takes images of shape (32, 32, 1), the dataset has (16, 16, 1)"]
    assert "Traceback" not in done.stderr
    assert not results.exists() or not any(results.iterdir())
