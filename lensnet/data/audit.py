"""Class-balance audit: do the classes of a dataset differ in anything but what should tell them apart?

Every shared parameter (macro model, source, lens light, exposure...) must follow the same distribution in
every class, or a classifier can learn that shortcut instead of the substructure. For each parameter that
is finite in every class and not constant, a two-sample Kolmogorov-Smirnov test compares every pair of
classes; a parameter "separates" the classes when its smallest p-value falls below the overall alpha
divided by the number of tests (Bonferroni). Class-specific parameters (subhalo counts, axion mass,
confuser type...) are passed as `exclude`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations

import numpy as np
from scipy.stats import ks_2samp


def audit(
    params: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: list[str],
    exclude: Iterable[str] = (),
    alpha: float = 1e-3,
) -> dict:
    """JSON-able report: per-parameter min p-value and pair, the separating parameters, and `ok`."""
    labels = np.asarray(labels)
    exclude = set(exclude)
    present = [c for c in range(len(class_names)) if np.any(labels == c)]
    pairs = list(combinations(present, 2))
    skipped: dict[str, str] = {}
    tested: dict[str, list[np.ndarray]] = {}
    for name, values in params.items():
        values = np.asarray(values, dtype=np.float64)
        if name in exclude:
            skipped[name] = "class-specific"
            continue
        groups = [values[labels == c] for c in present]
        if not all(np.all(np.isfinite(g)) for g in groups):
            skipped[name] = "not finite in every class"
        elif values.size == 0 or np.ptp(values) == 0:
            skipped[name] = "constant"
        else:
            tested[name] = groups
    n_tests = len(tested) * len(pairs)
    threshold = alpha / n_tests if n_tests else alpha
    report: dict[str, dict] = {}
    for name, groups in tested.items():
        best_p, best_pair = 1.0, None
        for i, j in pairs:
            a, b = groups[present.index(i)], groups[present.index(j)]
            p = float(ks_2samp(a, b).pvalue)
            if best_pair is None or p < best_p:
                best_p, best_pair = p, [class_names[i], class_names[j]]
        report[name] = {"min_p": best_p, "pair": best_pair, "separates": bool(best_p < threshold)}
    separating = sorted(n for n, r in report.items() if r["separates"])
    return {
        "ok": not separating,
        "separating": separating,
        "alpha": float(alpha),
        "n_tests": int(n_tests),
        "threshold": float(threshold),
        "params": report,
        "skipped": skipped,
    }
