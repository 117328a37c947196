"""Paired macro-AUC differences between bench-accuracy runs on the same test split (issue 22, tokenizers).

    PYTHONPATH=. python docs/transformers/measured/paired_tokenizers.py DATA BASE_RUN OTHER_RUN [OTHER_RUN ...]

Each OTHER run's macro AUC minus BASE's, with the paired 95% interval from 1,000 bootstrap resamples of the
test images (seed 0), through the helpers `bench distill` / `bench erasing` use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lensnet.bench.common import auc_difference
from lensnet.studies.detectability import predictions_on_test
from lensnet.tasks.scores import multiclass_scores

data, base, *others = (Path(a) for a in sys.argv[1:])
reference = predictions_on_test(base, data)
print(json.dumps({"run": str(base), "macro_auc": multiclass_scores(*reference)["macro_roc_auc"]}))
for other in others:
    scored = predictions_on_test(other, data)
    found = auc_difference(reference, scored, bootstrap=1000, seed=0)
    print(json.dumps({"run": str(other), "macro_auc": multiclass_scores(*scored)["macro_roc_auc"],
                      "minus": str(base), **found}))
