"""lensnet.tasks.scores: the test-set figures, on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from lensnet.tasks.scores import binary_scores, multiclass_scores, regression_scores, tpr_at_false_positives


def test_tpr_at_false_positives_slides_the_threshold_down_the_scores() -> None:
    y = np.array([1, 0, 1, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert tpr_at_false_positives(y, s, 0) == pytest.approx(1 / 3)  # stops before the first non-lens
    assert tpr_at_false_positives(y, s, 1) == pytest.approx(2 / 3)
    assert tpr_at_false_positives(y, s, 2) == 1.0
    assert tpr_at_false_positives(y, s, 10) == 1.0  # more allowed false positives than non-lenses


def test_tied_scores_pass_the_threshold_together() -> None:
    # a lens tied with a non-lens at the top: no threshold takes the lens without the non-lens
    y = np.array([1, 0, 1])
    s = np.array([0.9, 0.9, 0.8])
    assert tpr_at_false_positives(y, s, 0) == 0.0
    assert tpr_at_false_positives(y, s, 1) == 1.0
    # order within a tie does not matter
    assert tpr_at_false_positives(y[::-1], s[::-1], 0) == 0.0
    # two lenses tied above every non-lens count together
    assert tpr_at_false_positives(np.array([1, 1, 0, 1]), np.array([0.7, 0.7, 0.6, 0.1]), 0) == pytest.approx(2 / 3)
    # a tie of non-lenses that would exceed the budget is not split: 2 tied non-lenses with max_fp=1
    y = np.array([1, 0, 0, 1])
    s = np.array([0.9, 0.5, 0.5, 0.4])
    assert tpr_at_false_positives(y, s, 1) == 0.5
    assert tpr_at_false_positives(y, s, 2) == 1.0


def test_tpr_without_positives_is_undefined() -> None:
    assert tpr_at_false_positives(np.zeros(4), np.linspace(0, 1, 4), 0) is None


def test_binary_scores_perfect_and_single_class() -> None:
    y = np.array([0, 0, 1, 1])
    out = binary_scores(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert out["roc_auc"] == 1.0 and out["pr_auc"] == 1.0 and out["accuracy"] == 1.0
    assert out["tpr_at_0_fp"] == 1.0 and out["n"] == 4 and out["n_positive"] == 2
    inverted = binary_scores(y, np.array([0.9, 0.8, 0.2, 0.1]))
    assert inverted["roc_auc"] == 0.0 and inverted["accuracy"] == 0.0 and inverted["tpr_at_0_fp"] == 0.0
    single = binary_scores(np.ones(3), np.array([0.2, 0.6, 0.9]))
    assert single["roc_auc"] is None and single["pr_auc"] is None and "single class" in single["notes"]
    assert single["accuracy"] == pytest.approx(2 / 3)


def test_multiclass_scores_confusion_and_absent_class() -> None:
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    out = multiclass_scores(labels, probs, ["a", "b", "c"])
    assert out["accuracy"] == 0.75
    assert out["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert set(out["per_class_roc_auc"]) == {"a", "b", "c"} and out["macro_roc_auc"] is not None
    absent = multiclass_scores(np.array([0, 0, 1]), probs[:3], ["a", "b", "c"])
    assert absent["per_class_roc_auc"]["c"] is None and absent["macro_roc_auc"] is None
    assert "absent" in absent["notes"]


def test_regression_scores_mask_nan_targets() -> None:
    out = regression_scores(np.array([1.0, np.nan, 3.0]), np.array([2.0, 100.0, 3.0]))
    assert out["n"] == 2 and out["n_masked"] == 1
    assert out["mae"] == 0.5 and out["rmse"] == pytest.approx(np.sqrt(0.5)) and out["bias"] == 0.5
    assert out["r2"] == pytest.approx(1 - 0.5 / 1.0)
    constant = regression_scores(np.array([2.0, 2.0]), np.array([1.0, 3.0]))
    assert constant["r2"] is None and constant["mae"] == 1.0
    empty = regression_scores(np.array([np.nan]), np.array([1.0]))
    assert empty["mae"] is None and empty["n"] == 0 and "no record" in empty["notes"]


def test_paired_difference_of_two_classifiers_on_the_same_images() -> None:
    from lensnet.tasks.scores import macro_auc_interval, paired_macro_auc_difference

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    noise = rng.dirichlet(np.ones(3), 400)
    weak = noise + 0.3 * np.eye(3)[labels]
    strong = noise + 0.9 * np.eye(3)[labels]  # the same noise, a stronger signal: better on every resample
    same = paired_macro_auc_difference(labels, weak, weak, bootstrap=200, seed=0)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    found = paired_macro_auc_difference(labels, weak, strong, bootstrap=200, seed=0)
    assert 0 < found["low"] < found["difference"] < found["high"]
    # paired: the difference's interval is narrower than the two separate intervals suggest
    lo_w, hi_w = macro_auc_interval(labels, weak, 200, 0)
    lo_s, hi_s = macro_auc_interval(labels, strong, 200, 0)
    assert found["high"] - found["low"] < (hi_w - lo_w) + (hi_s - lo_s)
    assert paired_macro_auc_difference(labels, strong, weak, bootstrap=200, seed=0)["difference"] == pytest.approx(
        -found["difference"])
