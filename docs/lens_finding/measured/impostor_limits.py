"""Survey figures of saved per-record scores, with all negatives, with one impostor type left out, and on the
lenses whose counter-image is clearly visible (counter-image S/N >= 10) against all negatives (issue 23).

    PYTHONPATH=. python docs/lens_finding/measured/impostor_limits.py ring EVAL_DIR [EVAL_DIR ...]

EVAL_DIR holds the predictions.npz that `lensnet.evaluate` writes; with several, their mean score is used
(what `evaluate --run A --run B` scores). One JSON line per negative set, through `survey_scores` (200
bootstrap replicates, seed 0) as every lensnet command computes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lensnet.simulate.survey_population import SUBTYPES
from lensnet.tasks.survey_metrics import survey_scores

left_out, *dirs = sys.argv[1:]
saved = [np.load(Path(d) / "predictions.npz", allow_pickle=False) for d in dirs]
if any(not np.array_equal(s["ids"], saved[0]["ids"]) for s in saved[1:]):
    raise SystemExit("the predictions.npz files score different records")
y = saved[0]["y_true"].astype(int)
score = np.mean([s["y_pred"][:, 0] for s in saved], axis=0)
subtype = saved[0]["record_non_lens_subtype"]
counter = saved[0]["record_counter_image_snr"]
for name, keep in (("all negatives", np.ones(len(y), bool)),
                   (f"{left_out} left out", (y == 1) | (subtype != SUBTYPES.index(left_out))),
                   ("lenses with counter-image S/N >= 10, all negatives", (y == 0) | (counter >= 10))):
    s = survey_scores(y[keep], score[keep], n_boot=200, seed=0)
    figure = {"tpr_at_fpr_1e-3": s["tpr_at_fpr"]["1e-3"], "tpr_at_fpr_1e-4": s["tpr_at_fpr"]["1e-4"],
              "purity_at_50pct": s["purity_at_completeness"]["0.5"], "recall_at_zero_fp": s["recall_at_zero_fp"]}
    print(json.dumps({"negatives": name, "n_negative": s["n_negative"], "n_positive": s["n_positive"], "runs": dirs,
                      **{k: {"value": round(v["value"], 4), "ci95": [round(c, 4) for c in v["ci95"]]}
                         for k, v in figure.items()}}))
