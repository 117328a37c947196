"""Test-set figures in NumPy/scikit-learn. Undefined figures are None with a reason, never a silent NaN."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def tpr_at_false_positives(y_true: np.ndarray, score: np.ndarray, max_fp: int) -> float | None:
    """Highest true-positive rate reachable with at most `max_fp` false positives.

    The lens-finding challenge figures TPR0 and TPR10 (Metcalf et al. 2019): the
    threshold slides down the scores until the (max_fp + 1)-th non-lens passes it
    (ties pass together; lensnet.tasks.survey_metrics holds the one implementation).
    """
    from lensnet.tasks.survey_metrics import roc_curve, tpr_at_fp_count

    return tpr_at_fp_count(roc_curve(y_true, score), max_fp)[0]


def binary_scores(y_true: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    y_true = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    out: dict = {"n": int(y_true.size), "n_positive": int(y_true.sum())}
    if len(np.unique(y_true)) < 2:
        out.update(roc_auc=None, pr_auc=None, notes="ROC/PR AUC undefined: the split holds a single class")
    else:
        out["roc_auc"] = _finite(skm.roc_auc_score(y_true, p))
        out["pr_auc"] = _finite(skm.average_precision_score(y_true, p))
    out["accuracy"] = _finite(np.mean((p >= threshold) == y_true))
    out["tpr_at_0_fp"] = tpr_at_false_positives(y_true, p, 0)
    out["tpr_at_10_fp"] = tpr_at_false_positives(y_true, p, 10)
    return out


def multiclass_scores(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    pred = probs.argmax(axis=1)
    out: dict = {"n": int(labels.size), "accuracy": _finite(np.mean(pred == labels))}
    per_class = {}
    for c, name in enumerate(class_names):
        y = labels == c
        per_class[name] = _finite(skm.roc_auc_score(y, probs[:, c])) if 0 < y.sum() < y.size else None
    out["per_class_roc_auc"] = per_class
    defined = [v for v in per_class.values() if v is not None]
    out["macro_roc_auc"] = float(np.mean(defined)) if len(defined) == k else None
    if out["macro_roc_auc"] is None:
        out["notes"] = "macro ROC AUC undefined: some class is absent from the split"
    out["confusion_matrix"] = skm.confusion_matrix(labels, pred, labels=list(range(k))).tolist()
    return out


def regression_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    mask = np.isfinite(y_true)
    out: dict = {"n": int(mask.sum()), "n_masked": int((~mask).sum())}
    if not mask.any():
        out.update(mae=None, rmse=None, r2=None, notes="no record has a finite target")
        return out
    t, p = y_true[mask], y_pred[mask]
    err = p - t
    out["mae"] = _finite(np.mean(np.abs(err)))
    out["rmse"] = _finite(np.sqrt(np.mean(err**2)))
    out["bias"] = _finite(np.mean(err))
    var = np.var(t)
    out["r2"] = _finite(1.0 - np.mean(err**2) / var) if var > 0 else None
    return out


def _macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in range(probs.shape[1])]))


def bootstrap_macro_aucs(labels: np.ndarray, probs: list[np.ndarray], bootstrap: int = 1000,
                         seed: int = 0) -> np.ndarray:
    """Macro AUCs of several models' `probs` on the same resamples of the test images, shape (usable, models).

    The resamples are shared so that differences between models are paired. Resamples in which a class
    is absent (its AUC undefined) are skipped.
    """
    labels = np.asarray(labels).astype(int).ravel()
    probs = [np.asarray(p, dtype=np.float64) for p in probs]
    k = probs[0].shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(bootstrap)):
        idx = rng.integers(0, labels.size, labels.size)
        y = labels[idx]
        if any(not 0 < (y == c).sum() < y.size for c in range(k)):
            continue
        values.append([_macro_auc(y, p[idx]) for p in probs])
    return np.asarray(values, dtype=np.float64).reshape(-1, len(probs))


def _percentiles(values: np.ndarray, bootstrap: int, level: float) -> tuple[float, float] | None:
    if not values.size or values.size < bootstrap / 2:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def macro_auc_interval(labels: np.ndarray, probs: np.ndarray, bootstrap: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the macro one-vs-rest ROC AUC, resampling test images.

    None if fewer than half of the resamples are usable (see `bootstrap_macro_aucs`).
    """
    return _percentiles(bootstrap_macro_aucs(labels, [probs], bootstrap, seed)[:, 0], bootstrap, level)


def paired_macro_auc_difference(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                                bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Macro AUC of b minus that of a on the same test images, with its paired percentile-bootstrap interval.

    Both models are scored on each resample, so the interval is of the difference itself (narrower than
    comparing two separate intervals when the models err on the same images).
    """
    labels = np.asarray(labels).astype(int).ravel()
    point = _macro_auc(labels, np.asarray(probs_b, dtype=np.float64)) - _macro_auc(
        labels, np.asarray(probs_a, dtype=np.float64))
    values = bootstrap_macro_aucs(labels, [probs_a, probs_b], bootstrap, seed) if bootstrap else np.zeros((0, 2))
    low, high = _percentiles(values[:, 1] - values[:, 0], bootstrap, level) or (None, None)
    return {"difference": float(point), "low": low, "high": high, "n_test": int(labels.size)}


def macro_auc_with_interval(labels: np.ndarray, probs: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Macro one-vs-rest ROC AUC and its 95% bootstrap interval (`macro_auc_interval`; bootstrap 0: none)."""
    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    point = _macro_auc(labels, probs) if len(np.unique(labels)) == k else None
    low, high = (macro_auc_interval(labels, probs, bootstrap, seed) if bootstrap else None) or (None, None)
    return {"macro_roc_auc": point, "low": low, "high": high, "n_test": int(labels.size)}
