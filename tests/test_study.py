"""`python -m lensnet.study detectability`: a tiny sweep end to end, resume after an interruption, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import run_cli
from lensnet.studies.detectability import StudySpec, pair_auc, run_study
from lensnet.study import main

TINY = ["--data-set", "image.size=16", "--fit-set", "data.batch_size=16", "--fit-set", "run.verbose=0",
        "--fit-set", "model.args.filters=[8,16]"]


def tiny_spec(**changes) -> StudySpec:
    spec = dict(name="tiny", knob="m_min", grid=[1e6, 1e8], dataset="model_ii", num=48, model="cnn_small",
                epochs=1, seed=3, data_set=["image.size=16"],
                fit_set=["data.batch_size=16", "run.verbose=0", "model.args.filters=[8,16]"], bootstrap=20)
    spec.update(changes)
    return StudySpec(**spec)


def test_pair_auc_and_interval() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2] * 10)
    probs = np.zeros((labels.size, 3))
    probs[np.arange(labels.size), labels] = 0.9  # a perfect classifier
    probs[probs == 0] = 0.05
    perfect = pair_auc(labels, probs, ["no_sub", "cdm", "axion"], "cdm", "no_sub", bootstrap=50, seed=0)
    assert perfect["auc"] == 1.0 and perfect["low"] == 1.0 and perfect["n"] == 40
    flipped = pair_auc(labels, probs[:, [1, 0, 2]], ["no_sub", "cdm", "axion"], "cdm", "no_sub", 50, 0)
    assert flipped["auc"] == 0.0
    missing = pair_auc(labels, probs, ["no_sub", "cdm", "other"], "axion", "no_sub", 50, 0)
    assert missing["auc"] is None


@pytest.mark.slow
def test_study_runs_and_resumes(tmp_path: Path) -> None:
    spec = tiny_spec()

    def stop_at_second_point(line: str) -> None:
        if line.startswith("point 1 "):
            raise KeyboardInterrupt  # as if the job were killed when point 1 starts

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path, stop_at_second_point)
    root = tmp_path / "tiny"
    first = root / "points" / "00" / "result.json"
    assert first.is_file() and not (root / "points" / "01" / "result.json").exists()
    stamp = first.stat().st_mtime_ns

    lines: list[str] = []
    run_study(spec, tmp_path, lines.append)
    assert any("point 0 (m_min=1e+06) already done" in line for line in lines)
    assert first.stat().st_mtime_ns == stamp  # not recomputed
    with open(root / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["value"]) for r in rows] == [1e6, 1e8]
    for row in rows:
        for pair in ("cdm_vs_no_sub", "axion_vs_no_sub"):
            assert 0.0 <= float(row[f"auc_{pair}"]) <= 1.0
            assert float(row[f"auc_{pair}_low"]) <= float(row[f"auc_{pair}"]) <= float(row[f"auc_{pair}_high"])
    assert (root / "detectability.png").stat().st_size > 1000
    resolved = (root / "points" / "01" / "dataset.yaml").read_text()
    assert "m_min: 100000000.0" in resolved
    saved = json.loads((root / "study.json").read_text())
    assert saved["grid"] == [1e6, 1e8] and saved["knob"] == "m_min"

    with pytest.raises(Exception, match="exists with other arguments"):
        run_study(tiny_spec(epochs=2), tmp_path, lines.append)


@pytest.mark.parametrize("args, message", [
    (["--knob", "mass_of_everything", "--grid", "1,2"], "unknown knob 'mass_of_everything'"),
    (["--knob", "m_min", "--grid", ","], "--grid is empty"),
    (["--knob", "m_min", "--grid", "1e6,abc"], "--grid must be comma-separated numbers"),
    (["--knob", "f_sub", "--grid", "0.01", "--dataset", "lens_finding"], "needs no_sub"),
    (["--knob", "exposure_time", "--grid", "100", "--dataset", "deeplense_model_ii"], "replica"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  args: list[str], message: str) -> None:
    studies = tmp_path / "studies"
    code = run_cli(main, ["detectability", *args, "--studies-dir", str(studies), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not studies.exists()


VIEWS_TINY = ["--epochs", "1", "--batch-size", "16", "--bootstrap", "20", "--fit-set", "run.verbose=0",
              "--fit-set", "model.args.filters=[8,16]", "--fit-set", "task.projection_dim=8",
              "--fit-set", "task.projection_hidden=16", "--fit-set", "train.precise_bn_batches=2"]


@pytest.mark.slow
def test_views_study_scores_each_view_and_a_rerun_continues(tmp_path: Path, synthetic_dataset: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    studies = tmp_path / "studies"
    argv = ["views", "--data", str(synthetic_dataset), "--views", "none,shift", "--name", "v",
            "--studies-dir", str(studies), *VIEWS_TINY]
    assert run_cli(main, argv) == 0
    root = studies / "v"
    rows = json.loads((root / "results.json").read_text())["rows"]
    assert [r["view"] for r in rows] == ["none", "shift"]
    for r in rows:
        assert 0.0 <= r["knn_macro_auc"] <= 1.0 and r["probe_low"] <= r["probe_macro_auc"] <= r["probe_high"]
        assert r["n_test"] == 16
    capsys.readouterr()

    # killed after the shift run finished but before its result was written: the rerun reuses the run
    (root / "views" / "shift" / "result.json").unlink()
    assert run_cli(main, argv) == 0
    assert json.loads((root / "results.json").read_text())["rows"] == [
        {**r, "seconds": json.loads((root / "results.json").read_text())["rows"][i]["seconds"]}
        for i, r in enumerate(rows)]

    code = run_cli(main, [*argv[:4], "blurry", *argv[5:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--views must be among" in err[0]
