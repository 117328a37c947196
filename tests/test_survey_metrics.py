"""Survey metrics of a lens finder on hand-computable sets (lensnet.tasks.survey_metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensnet.tasks.scores import tpr_at_false_positives
from lensnet.tasks.survey_metrics import format_survey, headline, roc_curve, survey_scores

# 4 lenses, 10 non-lenses; sorted scores: 0.9 L, 0.85 N, 0.8 L, 0.5 N, 0.3 L, 0.2 N x8 ..., 0.1 L
Y = np.array([1, 1, 1, 1] + [0] * 10)
S = np.array([0.9, 0.8, 0.3, 0.1, 0.85, 0.5] + [0.2] * 8)


def test_tpr_at_fpr_counts_false_positives_by_hand():
    out = survey_scores(Y, S, fprs=(0.1, 1e-3), n_boot=0)
    # FPR 0.1 of 10 negatives allows one false positive: threshold 0.8 passes 0.9, 0.85 (FP), 0.8 -> TPR 2/4
    entry = out["tpr_at_fpr"]["1e-1"]
    assert entry["value"] == pytest.approx(0.5)
    assert entry["threshold"] == pytest.approx(0.8)
    assert entry["allowed_fp"] == 1
    assert entry["reliable"] is False and "warning" in entry["note"]  # 10 negatives < 10 / 0.1
    # FPR 1e-3 cannot even allow one false positive among 10 negatives: n/a with the reason
    na = out["tpr_at_fpr"]["1e-3"]
    assert na["value"] is None and "1,000" in na["note"] and "has 10" in na["note"]


def test_recall_at_zero_fp_and_legacy_tpr0_agree():
    out = survey_scores(Y, S, n_boot=0)
    assert out["recall_at_zero_fp"]["value"] == pytest.approx(0.25)  # only 0.9 is above the first non-lens
    assert tpr_at_false_positives(Y, S, 0) == pytest.approx(0.25)
    assert tpr_at_false_positives(Y, S, 1) == pytest.approx(0.5)
    assert tpr_at_false_positives(Y, S, 2) == pytest.approx(0.75)  # 0.3 passes before the 0.2 ties


def test_purity_is_reweighted_to_the_stated_prevalence():
    # 50% completeness is first reached at threshold 0.8: TPR 0.5, FPR 1/10
    for prevalence in (0.5, 0.001):
        out = survey_scores(Y, S, prevalence=prevalence, completeness=(0.5,), n_boot=0)
        entry = out["purity_at_completeness"]["0.5"]
        expected = prevalence * 0.5 / (prevalence * 0.5 + (1 - prevalence) * 0.1)
        assert entry["value"] == pytest.approx(expected)
        assert entry["fpr"] == pytest.approx(0.1) and entry["threshold"] == pytest.approx(0.8)
    # at 90% completeness the 0.1 lens must pass: every non-lens passes too, FPR 1
    out = survey_scores(Y, S, prevalence=0.5, completeness=(0.9,), n_boot=0)
    assert out["purity_at_completeness"]["0.9"]["value"] == pytest.approx(0.5)  # TPR 1, FPR 1


def test_ties_pass_together():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.7, 0.7, 0.2, 0.1])
    curve = roc_curve(y, s)
    assert curve.tp.tolist() == [1, 2, 2] and curve.fp.tolist() == [1, 1, 2]
    assert survey_scores(y, s, n_boot=0)["recall_at_zero_fp"]["value"] == 0.0


def test_one_class_sets_are_n_a_with_a_reason_never_nan():
    out = survey_scores(np.ones(5), np.linspace(0, 1, 5), n_boot=10)
    assert out["recall_at_zero_fp"]["value"] is None and "no non-lenses" in out["notes"][0]
    json.dumps(out, allow_nan=False)
    assert all(v is None for v in headline(out).values())
    assert any("n/a" in line for line in format_survey(out))


def test_bootstrap_intervals_are_seeded_and_bracket_the_value():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(200), np.zeros(3000)]
    s = np.r_[rng.normal(2.0, 1.0, 200), rng.normal(0.0, 1.0, 3000)]
    a = survey_scores(y, s, n_boot=100, seed=3)
    b = survey_scores(y, s, n_boot=100, seed=3)
    assert a == b
    entry = a["tpr_at_fpr"]["1e-3"]
    lo, hi = entry["ci95"]
    assert lo <= entry["value"] <= hi and hi - lo > 0.01
    perfect = survey_scores(y, np.r_[np.ones(200), np.zeros(3000)], n_boot=50)
    assert perfect["tpr_at_fpr"]["1e-3"]["ci95"] == [1.0, 1.0]
    json.dumps(a, allow_nan=False)


def test_per_bin_recall_and_per_subtype_fpr_at_the_operating_threshold():
    # 1,000 negatives allow FPR 1e-3 (one false positive): the threshold is the 2nd-highest negative's
    # score plus; lenses with score above it count as found.
    n = 1000
    y = np.r_[np.ones(4), np.zeros(n)]
    neg = np.linspace(0.0, 0.5, n)
    neg[-1] = 0.95  # the one allowed false positive, subtype 1
    s = np.r_[[0.99, 0.9, 0.4, 0.3], neg]
    snr = np.r_[[50.0, 50.0, 5.0, 15.0], np.full(n, np.nan)]
    codes = np.r_[np.full(4, np.nan), np.zeros(n - 1), [1.0]]
    out = survey_scores(y, s, records={"arc_snr": snr, "non_lens_subtype": codes},
                        subtype_names=["spiral", "ring", "star"], n_boot=20)
    assert out["operating_point"]["threshold"] == pytest.approx(0.9)
    rows = {row["low"]: row for row in out["per_bin_recall"]["arc_snr"]}
    assert rows[0.0]["value"] == 0.0 and rows[0.0]["count"] == 1
    assert rows[10.0]["value"] == 0.0
    assert rows[40.0]["value"] == 1.0 and rows[40.0]["count"] == 2
    assert rows[20.0]["value"] is None and rows[20.0]["note"] == "no lenses in this bin"
    fprs = out["fpr_per_subtype"]
    assert fprs["ring"]["value"] == 1.0 and fprs["ring"]["false_positives"] == 1
    assert fprs["spiral"]["value"] == 0.0 and fprs["spiral"]["count"] == n - 1
    assert fprs["star"]["value"] is None and fprs["star"]["count"] == 0
    json.dumps(out, allow_nan=False)


def test_too_few_negatives_fall_back_to_threshold_half_with_a_note():
    out = survey_scores(Y, S, records={"arc_snr": np.r_[[30.0] * 4, [np.nan] * 10]}, n_boot=0)
    assert out["operating_point"]["threshold"] == 0.5 and "cannot be set" in out["operating_point"]["note"]
    # 0.9 and 0.8 pass 0.5; the 0.3 and 0.1 lenses do not
    assert out["per_bin_recall"]["arc_snr"][2]["value"] == pytest.approx(0.5)


def test_evaluate_reports_survey_metrics_by_arc_snr_theta_e_and_subtype(tmp_path, capsys):
    """fit + evaluate on tiny lens_finding_survey sets: the per-record fields reach the metrics."""
    from lensnet.core.errors import run_cli
    from lensnet.evaluate import main as evaluate_main
    from lensnet.fit import main as fit_main
    from lensnet.simulate.dataset import simulate_dataset
    from lensnet.simulate.survey_population import SUBTYPES

    tiny = {"image": {"size": 16}, "records_per_shard": 40}
    simulate_dataset("lens_finding_survey", tmp_path / "train", num=40, seed=0, overrides=tiny, progress=False)
    simulate_dataset("lens_finding_survey", tmp_path / "survey", num=60, seed=1, progress=False,
                     overrides={**tiny, "prevalence": 0.2, "splits": {"train": 0.1, "val": 0.0, "test": 0.9}})
    assert run_cli(fit_main, ["--task", "lens_finding", "--data", str(tmp_path / "train"), "--epochs", "1",
                              "--runs", str(tmp_path / "runs"), "--run-name", "lf", "--no-progress",
                              "--set", "model.args.filters=[8,16]", "--set", "train.warmup_epochs=0",
                              "--set", "task.bootstrap=20"]) == 0
    capsys.readouterr()
    run = str(tmp_path / "runs" / "lf")
    assert run_cli(evaluate_main, ["--run", run, "--data", str(tmp_path / "survey")]) == 0
    out = capsys.readouterr().out
    assert "survey metrics: 10 lenses, 44 non-lenses" in out and "TPR at FPR 1e-3: n/a" in out
    metrics = json.loads(next((tmp_path / "runs" / "lf" / "eval").glob("*/metrics.json")).read_text())
    survey = metrics["survey"]
    assert survey["n_positive"] == 10 and survey["prevalence"] == 0.001
    assert sum(row.get("count", 0) for row in survey["per_bin_recall"]["arc_snr"]) == 10
    assert sum(row.get("count", 0) for row in survey["per_bin_recall"]["theta_E"]) == 10
    assert sum(row.get("count", 0) for row in survey["per_bin_recall"]["counter_image_snr"]) == 10
    assert set(survey["fpr_per_subtype"]) == set(SUBTYPES)
    assert sum(e["count"] for e in survey["fpr_per_subtype"].values()) == 44
    assert metrics["tpr_at_fpr_1e-3"] is None and 0.0 <= metrics["recall_at_zero_fp"] <= 1.0
    saved = np.load(next((tmp_path / "runs" / "lf" / "eval").glob("*/predictions.npz")), allow_pickle=False)
    assert len(saved["ids"]) == len(saved["y_pred"]) == 54 and int(saved["y_true"].sum()) == 10
    assert np.isfinite(saved["record_arc_snr"][saved["y_true"] == 1]).all()  # per-lens fields, beside the scores


def test_benchmark_table_keeps_nested_figures_out_and_cells_say_n_a():
    from lensnet.core.tables import format_table
    from lensnet.tasks.survey_metrics import survey_cells

    survey = survey_scores(Y, S, n_boot=0)
    cells = survey_cells(survey)
    assert cells["tpr@fpr1e-4"] == "n/a" and cells["n_neg"] == 10
    assert cells["recall@0fp"] == "25%"
    table = format_table([{"model": "m", **cells, "survey": survey}])
    assert "survey" not in table.splitlines()[0] and "tpr@fpr1e-3" in table
