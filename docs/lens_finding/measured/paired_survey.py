"""Paired difference of survey figures between two finders (or ensembles) scored on the same records
(issue 23): B minus A, with a 95% interval from one stratified bootstrap of the records (lenses and
non-lenses resampled separately, as `survey_scores` does) applied to both.

    PYTHONPATH=. python docs/lens_finding/measured/paired_survey.py A_DIR[,A_DIR...] B_DIR[,B_DIR...]

Each DIR holds the predictions.npz that `lensnet.evaluate` writes; a comma-separated list is scored as
the mean of its members' scores (what `evaluate --run A --run B` scores). One JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lensnet.tasks.survey_metrics import DEFAULT_PREVALENCE, purity_at_completeness, roc_curve, tpr_at_fpr


def scores(dirs: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    saved = [np.load(Path(d) / "predictions.npz", allow_pickle=False) for d in dirs.split(",")]
    if any(not np.array_equal(s["ids"], saved[0]["ids"]) for s in saved[1:]):
        raise SystemExit(f"{dirs}: the predictions.npz files score different records")
    return saved[0]["ids"], saved[0]["y_true"].astype(int), np.mean([s["y_pred"][:, 0] for s in saved], axis=0)


def figures(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    curve = roc_curve(y, score)
    return {"tpr_at_fpr_1e-3": tpr_at_fpr(curve, 1e-3)[0], "tpr_at_fpr_1e-4": tpr_at_fpr(curve, 1e-4)[0],
            "purity_at_50pct": purity_at_completeness(curve, 0.5, DEFAULT_PREVALENCE)[0]}


ids_a, y, a = scores(sys.argv[1])
ids_b, y_b, b = scores(sys.argv[2])
if not (np.array_equal(ids_a, ids_b) and np.array_equal(y, y_b)):
    raise SystemExit("the two finders score different records")
rng = np.random.default_rng(0)
pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
point = {k: figures(y, b)[k] - v for k, v in figures(y, a).items()}
draws: dict[str, list[float]] = {k: [] for k in point}
for _ in range(200):
    idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
    fa, fb = figures(y[idx], a[idx]), figures(y[idx], b[idx])
    for k in draws:
        draws[k].append(fb[k] - fa[k])
print(json.dumps({"a": sys.argv[1], "b": sys.argv[2], "n_positive": int(pos.size), "n_negative": int(neg.size),
                  "b_minus_a": {k: {"value": round(v, 4), "ci95": [round(float(q), 4) for q in
                                                                    np.percentile(draws[k], [2.5, 97.5])]}
                                for k, v in point.items()}}))
