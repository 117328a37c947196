"""lensnet.pipeline: a synthetic survey image with injected lenses is tiled, the lenses are found (recall at the
threshold), overlapping detections merge, RA/Dec round-trip through the WCS, a killed run resumes without
duplicated rows, NaN edges follow --fill-nonfinite, bad inputs are one `error:` line or skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run

from lensnet.core.errors import run_cli
from lensnet.pipeline import main
from lensnet.survey.synthetic import (
    lens_positions,
    lens_stamp,
    peak_finder_run,
    recall_precision,
    survey_header,
    survey_image,
    write_survey_fits,
)

SIZE = 32
LENSES = [(20, 20), (70, 40), (40, 100), (100, 96)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    from lensnet.serving.export import export_run

    base = tmp_path_factory.mktemp("survey")
    finder = peak_finder_run(base / "run_finder", SIZE)
    export_run(finder, base / "export" / "finder")
    classifier = make_run(base / "run_classifier", "cnn_small", kind="multiclass", shape=(SIZE, SIZE, 1))
    export_run(classifier, base / "export" / "classifier")
    regressor = make_run(base / "run_regressor", "cnn_small", kind="regression", shape=(SIZE, SIZE, 1), seed=2)
    export_run(regressor, base / "export" / "regressor")
    return {"finder": base / "export" / "finder", "classifier": base / "export" / "classifier",
            "regressor": base / "export" / "regressor"}


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tile") / "tile.fits"
    image = survey_image(128, 128, LENSES, seed=3, blank_columns=6)
    return write_survey_fits(path, image, survey_header(128, 128))


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def pipeline(*args) -> int:
    return run_cli(main, [*map(str, args), "--no-progress"])


@pytest.mark.slow
def test_finds_injected_lenses_with_sky_positions(tmp_path, exports, tile):
    from astropy.io import fits
    from astropy.wcs import WCS

    out = tmp_path / "results"
    status = pipeline(tile, "--finder", exports["finder"], "--classifier", exports["classifier"],
                      "--regressor", exports["regressor"], "--out", out, "--overlap", "8", "--threshold", "0.5")
    assert status == 0
    rows = read_rows(out / "candidates.csv")
    boxes = np.array([[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows])
    recall, precision, _ = recall_precision(boxes, LENSES)
    assert recall == 1.0
    assert precision == 1.0  # overlapping tiles that saw one lens were merged into one candidate
    assert len(rows) == len(LENSES)
    # Every score and column is there: finder, classifier probabilities, regressed value with its unit.
    assert {"finder_score", "classifier_predicted", "classifier_p_c0", "regressor_radius[arcsec]"} <= set(rows[0])
    # RA/Dec round-trip through the file's WCS to the box centre.
    wcs = WCS(fits.getheader(tile))
    for row, box in zip(rows, boxes):
        x, y = wcs.world_to_pixel_values(float(row["ra"]), float(row["dec"]))
        assert abs(x - (box[0] + box[2] - 1) / 2) < 1e-3 and abs(y - (box[1] + box[3] - 1) / 2) < 1e-3
    # Files: thumbnails, overlays and maps exist, inside the results folder.
    for row in rows:
        assert (out / row["thumbnail"]).is_file()
        assert (out / row["overlay_integrated_gradients"]).is_file()
        saliency = np.load(out / row["map_gradcam"], allow_pickle=False)
        assert saliency.shape == (SIZE, SIZE) and 0 <= saliency.min() and saliency.max() <= 1
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["status"] == "done" and set(meta["stages"]) == {"finder", "classifier", "regressor"}
    assert meta["stages"]["finder"]["card"]["task"] == "lens_finding"
    assert meta["interpretation"]["methods"] == ["integrated_gradients", "gradcam"]
    assert meta["totals"]["tiles"] > 0 and "versions" in meta


@pytest.mark.slow
def test_random_survey_recall(tmp_path, exports):
    positions = lens_positions(160, 160, 6, seed=5, spacing=40)
    image = survey_image(160, 160, positions, seed=6)
    path = write_survey_fits(tmp_path / "field.fits", image, survey_header(160, 160))
    out = tmp_path / "results"
    assert pipeline(path, "--finder", exports["finder"], "--out", out, "--methods", "none") == 0
    rows = read_rows(out / "candidates.csv")
    boxes = np.array([[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows])
    recall, precision, _ = recall_precision(boxes, positions)
    assert recall >= 5 / 6 and precision >= 0.8


@pytest.mark.slow
def test_kill_and_resume_never_duplicates_rows(tmp_path, exports, monkeypatch):
    from lensnet.survey.run import Pipeline

    folder = tmp_path / "cutouts"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.standard_normal((SIZE, SIZE)).astype("float32")
        if i % 2 == 0:
            image += survey_image(SIZE, SIZE, [(16, 16)], seed=i) - image * 0  # a lens in every other cutout
        np.save(folder / f"cut{i}.npy", image)
    args = [folder, "--finder", exports["finder"], "--classifier", exports["classifier"], "--methods", "none"]
    reference = tmp_path / "reference"
    assert pipeline(*args, "--out", reference) == 0
    expected = read_rows(reference / "candidates.csv")
    assert len(expected) == 3

    out = tmp_path / "killed"
    original = Pipeline.unit
    calls = {"n": 0}

    def dies_on_the_fourth(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as a kill between units
        return original(self, *a, **k)

    monkeypatch.setattr(Pipeline, "unit", dies_on_the_fourth)
    assert pipeline(*args, "--out", out) == 130
    monkeypatch.setattr(Pipeline, "unit", original)
    assert not (out / "candidates.csv").exists()
    # A unit killed after writing its rows but before its marker is redone, not appended twice.
    markers = sorted((out / "parts").glob("*.json"))
    assert len(markers) == 3
    markers[-1].unlink()
    assert pipeline(*args, "--out", out) == 0
    rows = read_rows(out / "candidates.csv")
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert len({r["id"] for r in rows}) == len(rows)
    # Other settings in the same folder are refused, not mixed in.
    assert pipeline(*args, "--out", out, "--threshold", "0.9") == 2


@pytest.mark.slow
def test_nonfinite_rule_and_bad_inputs(tmp_path, exports, capsys):
    image = survey_image(SIZE, SIZE, [(16, 16)], seed=1)
    image[:4] = np.nan
    np.save(tmp_path / "edge.npy", image)
    (tmp_path / "broken.fits").write_bytes(b"not a fits file")
    base = ["--finder", exports["finder"], "--methods", "none"]
    assert pipeline(tmp_path / "edge.npy", *base, "--out", tmp_path / "a", "--fill-nonfinite", "error") == 2
    assert "NaN or Inf" in capsys.readouterr().err
    assert pipeline(tmp_path / "edge.npy", *base, "--out", tmp_path / "b", "--fill-nonfinite", "zero") == 0
    assert len(read_rows(tmp_path / "b" / "candidates.csv")) == 1
    assert pipeline(tmp_path / "broken.fits", tmp_path / "edge.npy", *base, "--out", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "broken.fits" in err and "Traceback" not in err
    assert pipeline(tmp_path / "broken.fits", tmp_path / "edge.npy", *base, "--out", tmp_path / "d",
                    "--skip-bad") == 0
    assert len(read_rows(tmp_path / "d" / "candidates.csv")) == 1
    meta = json.loads((tmp_path / "d" / "pipeline.json").read_text())
    assert len(meta["totals"]["skipped"]) == 1


@pytest.mark.slow
def test_tfrecord_dataset_rows_carry_record_ids_and_true_classes(tmp_path, synthetic_dataset, synthetic_info):
    from lensnet.serving.export import export_run

    export_run(peak_finder_run(tmp_path / "run16", 16), tmp_path / "export" / "finder16")
    out = tmp_path / "results"
    assert pipeline(synthetic_dataset, "--finder", tmp_path / "export" / "finder16", "--out", out,
                    "--threshold", "0", "--split", "test", "--methods", "none") == 0
    rows = read_rows(out / "candidates.csv")
    assert len(rows) == synthetic_info.counts["test"]
    assert len({r["source"] for r in rows}) == len(rows)
    assert {r["true_class"] for r in rows} <= set(synthetic_info.class_names)
    assert {r["label"] for r in rows} == {"0"}  # no record is of the finder's positive class "lens"
    assert all(r["ra"] == "" for r in rows)  # records carry no WCS


def test_tiles_cover_the_image_and_nms_keeps_the_best_of_overlaps():
    from lensnet.survey.merge import nms
    from lensnet.survey.tiles import fill_nonfinite, tile_origins

    assert tile_origins(100, 32, 8) == [0, 24, 48, 68]  # the last tile ends on the edge
    assert tile_origins(32, 32, 8) == [0] and tile_origins(20, 32, 8) == []
    boxes = np.array([[0, 0, 32, 32], [24, 0, 56, 32], [100, 100, 132, 132], [48, 0, 80, 32]])
    scores = np.array([0.7, 0.9, 0.8, 0.6])
    assert nms(boxes, scores, 0.0).tolist() == [1, 2]  # 0 and 3 overlap the best (1); 2 stands alone
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 0, 3]
    images = np.ones((1, 4, 4, 2), "float32")
    images[0, 0, 0, 0] = np.nan
    images[0, :, :, 1] *= 3
    images[0, 1, 1, 1] = np.inf
    filled = fill_nonfinite(images, "median", "x")
    assert filled[0, 0, 0, 0] == 1.0 and filled[0, 1, 1, 1] == 3.0
    assert fill_nonfinite(images, "zero", "x")[0, 0, 0, 0] == 0.0


@pytest.mark.slow
def test_top_k_keeps_the_best_candidates(tmp_path, exports):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i, amplitude in enumerate([5.0, 7.0, 6.0, 8.0]):  # finder scores 0.12, 0.88, 0.5, 0.98 (no noise)
        np.save(folder / f"cut{i}.npy", lens_stamp(SIZE, amplitude))
    out = tmp_path / "results"
    assert pipeline(folder, "--finder", exports["finder"], "--out", out, "--top-k", "2", "--methods", "none",
                    "--threshold", "0") == 0
    rows = read_rows(out / "candidates.csv")
    assert sorted(Path(r["source"]).name for r in rows) == ["cut1.npy", "cut3.npy"]


def test_truths_give_survey_metrics_over_every_scored_tile(tmp_path, synthetic_dataset, synthetic_info, capsys):
    from lensnet.serving.export import export_run
    from lensnet.tasks.survey_metrics import survey_scores

    export_run(peak_finder_run(tmp_path / "run16", 16), tmp_path / "export" / "finder16")
    first = tmp_path / "first"
    assert pipeline(synthetic_dataset, "--finder", tmp_path / "export" / "finder16", "--out", first,
                    "--threshold", "0", "--split", "test", "--methods", "none") == 0
    rows = read_rows(first / "candidates.csv")
    labels = {r["source"]: str(i % 3 == 0) == "True" for i, r in enumerate(rows)}  # every third tile a "lens"
    with open(tmp_path / "labels.csv", "w") as handle:
        handle.write("source,label\n" + "".join(f"{s},{int(v)}\n" for s, v in labels.items()))
    out = tmp_path / "labelled"
    # a threshold of 0.99 keeps few candidates; the survey metrics still score every tile with a truth
    assert pipeline(synthetic_dataset, "--finder", tmp_path / "export" / "finder16", "--out", out,
                    "--threshold", "0.99", "--split", "test", "--methods", "none",
                    "--labels", tmp_path / "labels.csv") == 0
    assert "survey metrics:" in capsys.readouterr().err
    survey = json.loads((out / "pipeline.json").read_text())["totals"]["survey"]
    y = np.array([labels[r["source"]] for r in rows], dtype=float)
    s = np.array([float(r["finder_score"]) for r in rows])
    expected = survey_scores(y, s)
    assert survey["n_positive"] == int(y.sum()) and survey["n_negative"] == int((1 - y).sum())
    # the CSV rounds scores to 6 digits: the figures (not the thresholds) must agree
    assert survey["recall_at_zero_fp"]["value"] == pytest.approx(expected["recall_at_zero_fp"]["value"])
    for key, entry in expected["purity_at_completeness"].items():
        assert survey["purity_at_completeness"][key]["value"] == pytest.approx(entry["value"])
        assert survey["purity_at_completeness"][key]["ci95"] == pytest.approx(entry["ci95"])
    assert survey["tpr_at_fpr"]["1e-4"]["value"] is None  # a handful of negatives cannot measure FPR 1e-4


def test_two_lenses_a_tile_apart_stay_two_candidates(tmp_path, exports):
    """The default merge (by the position of what each tile saw, then cut again around it) keeps both, each
    centred in its candidate; box overlap (--iou 0, the old default) merged the overlapping tiles and kept one
    that shows only part of a ring."""
    pair = [(36, 60), (36 + SIZE, 60)]
    image = survey_image(128, 128, pair, seed=11)
    path = write_survey_fits(tmp_path / "pair.fits", image, survey_header(128, 128))
    base = [path, "--finder", exports["finder"], "--methods", "none"]
    assert pipeline(*base, "--out", tmp_path / "default") == 0
    rows = read_rows(tmp_path / "default" / "candidates.csv")
    boxes = np.array([[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows])
    recall, precision, found = recall_precision(boxes, pair)
    assert (found, len(rows), precision) == (2, 2, 1.0)
    for row, (x, y) in zip(rows, pair):  # centred on the lens (its brightest smoothed spot)
        centre = (int(row["x0"]) + int(row["x1"]) - 1) / 2, (int(row["y0"]) + int(row["y1"]) - 1) / 2
        assert np.hypot(centre[0] - x, centre[1] - y) <= 1.5
    assert pipeline(*base, "--out", tmp_path / "iou", "--iou", "0") == 0
    rows = read_rows(tmp_path / "iou" / "candidates.csv")
    assert recall_precision(np.array([[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows]), pair)[2] < 2


def test_merge_by_peak_keeps_separate_objects():
    from lensnet.survey.merge import merge_by_peak, tile_peaks

    images = np.zeros((3, 8, 8, 1), "float32")
    images[0, 4, 5] = images[1, 4, 1] = 10.0  # one object seen by two tiles 4 px apart
    images[2, 2, 2] = 9.0  # another object
    boxes = np.array([[0, 0, 8, 8], [4, 0, 12, 8], [8, 0, 16, 8]])
    peaks = tile_peaks(images, boxes)
    assert peaks.tolist() == [[5, 4], [5, 4], [10, 2]]
    assert merge_by_peak(peaks, np.array([0.9, 0.8, 0.7]), 2.0).tolist() == [0, 2]
    assert merge_by_peak(peaks, np.array([0.9, 0.8, 0.7]), 6.0).tolist() == [0]
