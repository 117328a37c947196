"""Label efficiency (issues 10, 25): nested, id-keyed training subsets in the reader, and
`python -m lensnet.bench label-efficiency` on tiny data (two fractions, one epoch): bootstrap
intervals, the k-NN mode, pretraining on a separate unlabelled set whose labels are never read,
and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import run_cli


def ids_of(info, split: str, subset) -> list[str]:
    from lensnet.data import load

    out = []
    for batch in load(info, split, batch_size=7, fields=("id",), shuffle=True, seed=3, subset=subset):
        out.extend(v.decode() for v in batch["id"].numpy())
    return out


def test_subsets_are_nested_fixed_and_seeded(synthetic_info) -> None:
    from lensnet.data.pipeline import subset_ids

    every = set(ids_of(synthetic_info, "train", None))
    small, large = set(subset_ids(synthetic_info, "train", 0.3, 0)), set(subset_ids(synthetic_info, "train", 0.6, 0))
    assert 0 < len(small) < len(large) < len(every) and small <= large <= every
    assert set(ids_of(synthetic_info, "train", (0.3, 0))) == small  # shuffled reading keeps the same records
    assert set(subset_ids(synthetic_info, "train", 1.0, 0)) == every
    assert set(subset_ids(synthetic_info, "train", 0.3, 1)) != small  # another subset seed, another subset


@pytest.mark.slow
def test_bad_fraction_is_one_line(capsys, synthetic_dataset: Path, tmp_path: Path) -> None:
    from lensnet.fit import main as fit_main

    for value in ("0", "1.5"):
        code = run_cli(fit_main, ["--task", "substructure", "--data", str(synthetic_dataset), "--runs", str(tmp_path),
                                  "--set", f"data.train_fraction={value}", "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == 2 and "data.train_fraction" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_label_efficiency_bench_on_tiny_data(capsys, synthetic_dataset: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from lensnet.bench.__main__ import main as bench_main

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    argv = ["label-efficiency", "--data", str(synthetic_dataset), "--fractions", "0.5,1.0", "--epochs", "1",
            "--pretrain-epochs", "1", "--batch-size", "16", "--runs-dir", str(tmp_path / "runs"),
            "--set", "model.args.filters=[8,16]", "--set", "train.precise_bn_batches=2",
            "--set", "run.verbose=0", "--pretrain-set", "task.projection_dim=8",
            "--pretrain-set", "task.projection_hidden=16"]
    assert run_cli(bench_main, argv) == 0
    out = capsys.readouterr().out
    assert "published anchors" in out and "0.969" in out
    results = sorted((tmp_path / "results").glob("label-efficiency-*Z.json"))
    assert len(results) == 1
    rows = json.loads(results[0].read_text())["rows"]
    assert [(r["fraction"], r["mode"]) for r in rows] == [(f, m) for f in (0.5, 1.0)
                                                           for m in ("scratch", "knn", "probe", "finetune")]
    assert all(r["accuracy"] is not None for r in rows)
    for r in rows:  # a 95% bootstrap interval around every AUC
        assert r["low"] <= r["macro_roc_auc"] <= r["high"] and r["n_test"] == 16
    assert "target at 1 of the labels" in out
    half = {r["n_train"] for r in rows if r["fraction"] == 0.5}
    assert len(half) == 1 and 0 < half.pop() < 32
    ids = json.loads(next((tmp_path / "results").glob("*-ids.json")).read_text())
    assert ids["ids"]["1"] == "all" and len(ids["ids"]["0.5"]) == rows[0]["n_train"]
    assert next((tmp_path / "results").glob("label-efficiency-*.png")).stat().st_size > 0
    run = Path(rows[0]["run"])
    assert (run / "train_ids.txt").read_text().split() == ids["ids"]["0.5"]  # the run recorded what it saw
    probe = Path(rows[2]["run"]) / "config.yaml"
    assert "freeze: backbone" in probe.read_text() and "pretrain-simclr" in probe.read_text()

    # a rerun (after a kill, or to add a mode) reuses the finished runs instead of refusing their directories
    assert run_cli(bench_main, argv) == 0
    assert "reusing the finished run" in capsys.readouterr().out
    again = json.loads(sorted((tmp_path / "results").glob("label-efficiency-*Z.json"))[-1].read_text())["rows"]
    assert [r["macro_roc_auc"] for r in again] == [r["macro_roc_auc"] for r in rows]
    assert all(r["reused"] for r in again if r["mode"] != "knn") and not any(r["reused"] for r in rows
                                                                             if r["mode"] != "knn")
    changed = [a if a != "1" else "2" for a in argv]  # another --epochs: the old runs are not this job's
    code = run_cli(bench_main, changed)
    err = capsys.readouterr().err
    assert code == 2 and "holds a run of another config" in err and len(err.strip().splitlines()) == 1


def tiny_argv(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["label-efficiency", "--data", str(data), "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "16",
            "--runs-dir", str(tmp_path / "runs"), "--set", "model.args.filters=[8,16]",
            "--set", "train.precise_bn_batches=2", "--set", "run.verbose=0", "--pretrain-set", "task.projection_dim=8",
            "--pretrain-set", "task.projection_hidden=16", "--bootstrap", "50", "--fractions", "1.0", *extra]


def corrupt_labels(path: Path) -> None:
    """Declare the label field as bytes: parsing it from any record fails (it is stored as int64)."""
    manifest = json.loads((path / "manifest.json").read_text())
    for feature in manifest["features"]:
        if feature["name"] == "label":
            feature["kind"] = "bytes"
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_unlabelled_set_is_pretrained_on_and_its_labels_never_read(
        capsys, synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lensnet.data.pipeline as pipeline
    from lensnet.bench.__main__ import main as bench_main
    from lensnet.data import open_dataset
    from lensnet.data.synthetic import write_synthetic

    unlabelled = tmp_path / "unlabelled"
    write_synthetic(unlabelled, 128, image_shape=(16, 16, 1), seed=7, records_per_shard=32)
    corrupt_labels(unlabelled)
    import tensorflow as tf

    with pytest.raises((tf.errors.OpError, Exception)):  # the corruption is real: reading labels fails
        next(iter(pipeline.load(open_dataset(unlabelled), "train", batch_size=4, fields=("label",))))

    asked = []  # every field list the reader is asked for on the unlabelled set
    original = pipeline.load

    def spy(info, split, *args, **kwargs):
        if Path(getattr(info, "path", info)).resolve() == unlabelled.resolve():
            asked.append(tuple(kwargs.get("fields") or ("ALL",)))
        return original(info, split, *args, **kwargs)

    monkeypatch.setattr(pipeline, "load", spy)
    monkeypatch.setattr("lensnet.data.load", spy)
    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    argv = tiny_argv(synthetic_dataset, tmp_path, "--unlabelled", str(unlabelled), "--unlabelled-fractions",
                     "0.5,1.0", "--fractions", "1.0", "--modes", "scratch,knn")
    assert run_cli(bench_main, argv) == 0, capsys.readouterr().err
    assert asked and not any("label" in f or "ALL" in f for f in asked), asked
    rows = json.loads(next((tmp_path / "results").glob("label-efficiency-*Z.json")).read_text())["rows"]
    knn = [r for r in rows if r["mode"] == "knn"]
    assert len(knn) == 2 and knn[0]["n_unlabelled"] < knn[1]["n_unlabelled"] == 64  # the unlabelled train split
    assert knn[1]["x_labelled"] == 2.0  # 64 unlabelled vs 32 labelled training images
    config = (tmp_path / "runs" / "pretrain-simclr-u1" / "config.yaml").read_text()
    assert str(unlabelled) in config and "labels: false" in config


@pytest.mark.parametrize("extra, message", [
    (["--unlabelled-fractions", "0.001"], "--unlabelled-fractions 0.001 selects no record"),
    (["--fractions", "0.001"], "--fractions 0.001 selects no record"),
    (["--pretrain-method", "swav"], "--pretrain-method must be among"),
    (["--pretrain-method", "simclr,mae"], "MAE needs a model of the vit, deit or swin family"),  # before simclr trains
    (["--shape"], "has images of shape (24, 24, 1)"),
    (["--lrs", "1e-3,fast"], "--lrs must be comma-separated numbers"),
    (["--lrs", "0"], "--lrs must be positive"),
])
def test_bad_unlabelled_input_is_one_line(capsys, synthetic_dataset: Path, tmp_path: Path, extra, message,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from lensnet.bench.__main__ import main as bench_main
    from lensnet.data.synthetic import write_synthetic

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    unlabelled = tmp_path / "unlabelled"
    shape = (24, 24, 1) if extra == ["--shape"] else (16, 16, 1)
    write_synthetic(unlabelled, 64, image_shape=shape, seed=7, records_per_shard=32)
    extra = [] if extra == ["--shape"] else extra
    code = run_cli(bench_main, tiny_argv(synthetic_dataset, tmp_path, "--unlabelled", str(unlabelled), *extra))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_lrs_trains_each_rate_and_keeps_the_best_validation_run(capsys, synthetic_dataset: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--lrs: one run per rate, the row is the run with the best validation AUC (never the test split's)."""
    import csv

    from lensnet.bench.__main__ import main as bench_main

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    argv = tiny_argv(synthetic_dataset, tmp_path, "--modes", "scratch", "--lrs", "1e-3,0.02", "--epochs", "2")
    assert run_cli(bench_main, argv) == 0, capsys.readouterr().err
    (row,) = json.loads(next((tmp_path / "results").glob("label-efficiency-*Z.json")).read_text())["rows"]
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["substructure-1-scratch", "substructure-1-scratch-lr0.02"]
    assert "learning_rate: 0.02" in (runs / "substructure-1-scratch-lr0.02" / "config.yaml").read_text()
    best_val = {}
    for name, rate in (("substructure-1-scratch", "0.001"), ("substructure-1-scratch-lr0.02", "0.02")):
        with open(runs / name / "history.csv", newline="") as handle:
            best_val[rate] = max(float(r["val_macro_roc_auc"]) for r in csv.DictReader(handle))
    assert row["val_by_lr"] == {k: round(v, 4) for k, v in best_val.items()}
    chosen = max(best_val, key=best_val.get)
    assert row["learning_rate"] == float(chosen) and row["run"].endswith("-lr0.02") == (chosen == "0.02")
    metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
    assert row["macro_roc_auc"] == metrics["macro_roc_auc"]


def test_verdict_needs_the_margin_and_separate_intervals() -> None:
    from lensnet.bench.label_efficiency import verdict

    def row(fraction, mode, auc, low, high, n=None):
        return {"fraction": fraction, "mode": mode, "macro_roc_auc": auc, "low": low, "high": high,
                "method": None if mode == "scratch" else "dino", "n_unlabelled": n}

    rows = [row(0.01, "scratch", 0.70, 0.65, 0.75), row(0.01, "finetune", 0.80, 0.76, 0.84, 100),
            row(0.1, "scratch", 0.80, 0.75, 0.85), row(0.1, "finetune", 0.83, 0.79, 0.87, 100),
            row(1.0, "scratch", 0.95, 0.93, 0.97), row(1.0, "probe", 0.92, 0.90, 0.94, 100),
            row(0.1, "probe", 0.99, 0.98, 1.0, 10)]  # a smaller unlabelled set does not count
    lines = verdict(rows)
    assert len(lines) == 3
    assert lines[0].endswith(": met")  # +0.10, 0.76 > 0.75
    assert lines[1].endswith("NOT met")  # +0.03 but the intervals overlap
    assert lines[2].endswith("NOT met")  # 0.95 above the pretrained row's high end 0.94


def test_macro_auc_with_interval_and_weighted_knn() -> None:
    from lensnet.tasks.scores import macro_auc_with_interval
    from lensnet.tasks.ssl_plots import knn_probabilities

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300) + 0.6 * np.eye(3)[labels]
    found = macro_auc_with_interval(labels, probs / probs.sum(1, keepdims=True), bootstrap=200, seed=0)
    assert found["low"] < found["macro_roc_auc"] < found["high"] and 0.7 < found["macro_roc_auc"] < 1
    half = macro_auc_with_interval(labels[:75], probs[:75], bootstrap=200, seed=0)  # fewer images, a wider interval
    assert half["high"] - half["low"] > found["high"] - found["low"]
    # k-NN: two clusters in embedding space vote for their own class
    train = np.concatenate([rng.normal([5, 0], 0.5, (20, 2)), rng.normal([0, 5], 0.5, (20, 2))])
    p = knn_probabilities(train, np.repeat([0, 1], 20), np.array([[4.0, 0.5], [0.3, 6.0]]), 2, k=5)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[0, 0] > 0.99 and p[1, 1] > 0.99


def test_fit_or_resume_never_replaces_a_directory_that_is_not_its_run(tmp_path: Path, synthetic_dataset: Path) -> None:
    from lensnet.core.errors import LensnetError
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import fit_or_resume

    config = resolve_fit_config("substructure", overrides={
        "data": {"path": str(synthetic_dataset)}, "run": {"dir": str(tmp_path), "name": "mine"}})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(LensnetError, match="holds no lensnet run"):
        fit_or_resume(config, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


@pytest.mark.slow
def test_test_set_scores_every_row_on_its_own_test_split(capsys, synthetic_dataset: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--test DIR: trained and k-NN rows are scored on that dataset's test split, not the labelled set's."""
    from sklearn.metrics import roc_auc_score

    from lensnet.bench.__main__ import main as bench_main
    from lensnet.data import open_dataset
    from lensnet.data.synthetic import write_synthetic
    from lensnet.studies.detectability import predictions_on_test

    held_out = tmp_path / "held-out"
    write_synthetic(held_out, 160, image_shape=(16, 16, 1), seed=9, records_per_shard=32,
                    splits={"train": 0.1, "val": 0.1, "test": 0.8})
    n_held_out, n_own = open_dataset(held_out).counts["test"], open_dataset(synthetic_dataset).counts["test"]
    assert n_held_out != n_own
    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    argv = tiny_argv(synthetic_dataset, tmp_path, "--modes", "scratch,knn", "--test", str(held_out))
    assert run_cli(bench_main, argv) == 0, capsys.readouterr().err
    rows = json.loads(next((tmp_path / "results").glob("label-efficiency-*Z.json")).read_text())["rows"]
    assert {r["mode"] for r in rows} == {"scratch", "knn"} and all(r["n_test"] == n_held_out for r in rows)
    scratch = next(r for r in rows if r["mode"] == "scratch")
    labels, probs, _ = predictions_on_test(Path(scratch["run"]), held_out)
    assert labels.size == n_held_out
    assert scratch["macro_roc_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert scratch["low"] <= scratch["macro_roc_auc"] <= scratch["high"]
    ids = json.loads(next((tmp_path / "results").glob("label-efficiency-*-ids.json")).read_text())
    assert ids["test"] == str(open_dataset(held_out).path)


@pytest.mark.parametrize("shape, classes, message", [
    ((24, 24, 1), 2, "--test {} has images of shape (24, 24, 1)"),
    ((16, 16, 1), 3, "--test {} has classes"),
])
def test_bad_test_set_is_one_line(capsys, synthetic_dataset: Path, tmp_path: Path, shape, classes, message,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lensnet.bench.__main__ import main as bench_main
    from lensnet.data import open_dataset
    from lensnet.data.synthetic import write_synthetic

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    held_out = tmp_path / "held-out"
    write_synthetic(held_out, 32, image_shape=shape, num_classes=classes, seed=9)
    code = run_cli(bench_main, tiny_argv(synthetic_dataset, tmp_path, "--modes", "scratch", "--test", str(held_out)))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message.format(open_dataset(held_out).path) in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_steps_per_epoch_gives_every_fraction_the_same_step_budget(capsys, synthetic_dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """By default every trained row (not the pretraining) takes the steps of one pass over the largest fraction,
    its smaller subset repeated; `--steps-per-epoch pass` is one pass over each row's own subset."""
    import math

    import keras

    from lensnet.bench.__main__ import main as bench_main

    def iterations(row: dict) -> int:
        model = keras.models.load_model(Path(row["run"]) / "checkpoints" / "last.keras", compile=True, safe_mode=True)
        return int(model.optimizer.iterations.numpy())

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results"))
    argv = tiny_argv(synthetic_dataset, tmp_path, "--modes", "scratch,probe", "--fractions", "0.25,1.0",
                     "--epochs", "2")
    assert run_cli(bench_main, argv) == 0, capsys.readouterr().err
    rows = json.loads(next((tmp_path / "results").glob("label-efficiency-*Z.json")).read_text())["rows"]
    small, full = rows[0]["n_train"], rows[-1]["n_train"]
    assert len(rows) == 4 and math.ceil(small / 16) < math.ceil(full / 16)
    assert [iterations(r) for r in rows] == [2 * math.ceil(full / 16)] * 4
    assert "steps_per_epoch: null" in (tmp_path / "runs" / "pretrain-simclr" / "config.yaml").read_text()
    assert "steps_per_epoch: null" in (Path(rows[-1]["run"]) / "config.yaml").read_text()  # one pass already

    monkeypatch.setenv("LENSNET_BENCH_DIR", str(tmp_path / "results-pass"))
    argv = tiny_argv(synthetic_dataset, tmp_path / "pass", "--modes", "scratch", "--fractions", "0.25", "--epochs", "2",
                     "--steps-per-epoch", "pass")
    assert run_cli(bench_main, argv) == 0, capsys.readouterr().err
    (row,) = json.loads(next((tmp_path / "results-pass").glob("label-efficiency-*Z.json")).read_text())["rows"]
    assert iterations(row) == 2 * math.ceil(small / 16)

    for bad in ("0", "fast"):
        code = run_cli(bench_main, tiny_argv(synthetic_dataset, tmp_path / "bad", "--steps-per-epoch", bad))
        err = capsys.readouterr().err
        assert code == 2 and "--steps-per-epoch must be auto, pass or a positive integer" in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
