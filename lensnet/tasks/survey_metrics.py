"""Lens finding scored as surveys score it, with bootstrap intervals; one implementation for every caller.

Surveys look for ~1 lens in 1,000-10,000 galaxies, so they report, at a threshold on the finder's score:
- TPR at a fixed FPR (HOLISMOKES XVI: FPR 1e-4 at TPR 75%): the highest recall whose false-positive rate is
  at most f. Measuring it needs negatives: with N < 1/f negatives not even one false positive is allowed
  (n/a); with N < 10/f the estimate rests on fewer than 10 false positives (given, flagged unreliable).
- purity at a completeness c at a stated prevalence pi (Euclid Q1: 52% purity at 50% completeness, 1:1000):
  at the highest threshold whose TPR reaches c, purity = pi TPR / (pi TPR + (1 - pi) FPR): the negatives
  are reweighted to the prevalence, so a balanced or enriched test set states a survey's purity.
- recall at zero false positives (Metcalf et al. 2019 TPR0): the highest recall above every negative.
- per-bin recall (arc S/N, theta_E, counter-image S/N, lens magnitude) and the false-positive rate per
  non-lens subtype at one operating threshold (the one reaching FPR `operating_fpr`, else 0.5 with a note).

Ties pass together: a threshold can only sit between distinct scores. Intervals are percentile bootstrap
intervals (stratified: lenses and non-lenses resampled separately, `n_boot` replicates, seeded); per-bin
and per-subtype intervals are for the threshold chosen on the full set. A figure that cannot be measured is
None with a `note` saying why, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SURVEY_FPRS = (1e-3, 1e-4)
COMPLETENESS = (0.5, 0.9)
DEFAULT_PREVALENCE = 1e-3
BINS = {
    "arc_snr": (0.0, 10.0, 20.0, 40.0, 80.0, math.inf),
    "theta_E": (0.0, 0.5, 0.8, 1.2, 2.0, math.inf),
    "counter_image_snr": (0.0, 3.0, 5.0, 10.0, 20.0, math.inf),
    # the deflector's r magnitude: a faint arc beside a bright lens galaxy is the hard case (large theta_E
    # comes with large sigma, hence a bright lens, in a velocity-dispersion-weighted population)
    "lens_light_mag": (0.0, 18.5, 19.5, 20.5, 21.5, math.inf),
}
# stored by lens_finding_survey (counter_image_snr only by datasets simulated with the counter-image cut)
SURVEY_FIELDS = ("arc_snr", "theta_E", "counter_image_snr", "lens_light_mag", "magnification", "non_lens_subtype")
RELIABLE_FP = 10  # an FPR estimate wants at least this many negatives above threshold: N >= 10 / FPR


@dataclass(frozen=True)
class Curve:
    """Cumulative true/false positives at each distinct score, highest score first."""

    thresholds: np.ndarray  # the score of each tie group (a record passes when score >= threshold)
    tp: np.ndarray
    fp: np.ndarray
    positives: float
    negatives: float


class _Sorted:
    """The scores sorted once; curves for any record weights (bootstrap replicates) from cumulative sums."""

    def __init__(self, y_true: np.ndarray, score: np.ndarray) -> None:
        y = np.asarray(y_true).astype(bool).ravel()
        s = np.asarray(score, dtype=np.float64).ravel()
        if y.shape != s.shape:
            raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
        self.order = np.argsort(-s, kind="stable")
        self.y = y[self.order]
        s = s[self.order]
        self.group_end = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
        self.thresholds = s[self.group_end]

    def curve(self, weights: np.ndarray | None = None) -> Curve:
        """`weights` in sorted order (None: every record once)."""
        w = np.ones(self.y.size) if weights is None else weights
        tp = np.cumsum(w * self.y)
        fp = np.cumsum(w * ~self.y)
        end = self.group_end
        return Curve(self.thresholds, tp[end], fp[end], float(tp[-1]) if tp.size else 0.0,
                     float(fp[-1]) if fp.size else 0.0)


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> Curve:
    return _Sorted(y_true, score).curve()


def tpr_at_fp_count(curve: Curve, max_fp: float) -> tuple[float | None, float]:
    """(highest TPR with at most `max_fp` false positives, its threshold); None without positives."""
    if curve.positives <= 0:
        return None, math.inf
    allowed = np.flatnonzero(curve.fp <= max_fp + 1e-9)
    if not allowed.size:
        return 0.0, math.inf
    k = allowed[np.argmax(curve.tp[allowed])]
    return float(curve.tp[k] / curve.positives), float(curve.thresholds[k])


def tpr_at_fpr(curve: Curve, fpr: float) -> tuple[float | None, float]:
    return tpr_at_fp_count(curve, fpr * curve.negatives)


def purity_at_completeness(curve: Curve, completeness: float, prevalence: float
                           ) -> tuple[float | None, float, float | None]:
    """(purity at prevalence, threshold, FPR there) at the highest threshold whose TPR reaches `completeness`."""
    if curve.positives <= 0 or curve.negatives <= 0:
        return None, math.nan, None
    reached = np.flatnonzero(curve.tp >= completeness * curve.positives - 1e-9)
    k = int(reached[0])
    tpr = curve.tp[k] / curve.positives
    fpr = curve.fp[k] / curve.negatives
    purity = prevalence * tpr / (prevalence * tpr + (1.0 - prevalence) * fpr)
    return float(purity), float(curve.thresholds[k]), float(fpr)


def _interval(values: Sequence[float | None], level: float = 0.95) -> list[float] | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def _fpr_key(fpr: float) -> str:
    return f"{fpr:.0e}".replace("e-0", "e-")


def _entry(value: float | None, ci: list[float] | None, note: str | None = None, **extra: object) -> dict:
    out: dict = {"value": value, "ci95": ci}
    out.update(extra)
    if note:
        out["note"] = note
    return out


def survey_scores(
    y_true: np.ndarray,
    score: np.ndarray,
    *,
    records: Mapping[str, np.ndarray] | None = None,
    subtype_names: Sequence[str] | None = None,
    prevalence: float = DEFAULT_PREVALENCE,
    fprs: Sequence[float] = SURVEY_FPRS,
    completeness: Sequence[float] = COMPLETENESS,
    operating_fpr: float = 1e-3,
    bins: Mapping[str, Sequence[float]] = BINS,
    n_boot: int = 200,
    seed: int = 0,
) -> dict:
    """Survey figures of a lens finder (see the module doc). `records` may hold per-record `arc_snr`,
    `theta_E` (lenses) and `non_lens_subtype` (integer code, names in `subtype_names`) for per-bin figures."""
    sorted_ = _Sorted(y_true, score)
    point = sorted_.curve()
    p_count, n_count = int(point.positives), int(point.negatives)
    out: dict = {"n_positive": p_count, "n_negative": n_count, "prevalence": prevalence,
                 "bootstrap": {"replicates": n_boot, "seed": seed, "level": 0.95}}
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(sorted_.y), np.flatnonzero(~sorted_.y)
    replicates = []
    if p_count and n_count:
        for _ in range(n_boot):
            w = np.zeros(sorted_.y.size)
            w[pos_idx] = np.bincount(rng.integers(0, p_count, p_count), minlength=p_count)
            w[neg_idx] = np.bincount(rng.integers(0, n_count, n_count), minlength=n_count)
            replicates.append(w)
    curves = [sorted_.curve(w) for w in replicates]

    if not p_count or not n_count:
        missing = "lenses" if not p_count else "non-lenses"
        note = f"undefined: the set holds no {missing}"
        out["tpr_at_fpr"] = {_fpr_key(f): _entry(None, None, note) for f in fprs}
        out["purity_at_completeness"] = {str(c): _entry(None, None, note) for c in completeness}
        out["recall_at_zero_fp"] = _entry(None, None, note)
        out["notes"] = [note]
        return out

    table = {}
    for f in fprs:
        key = _fpr_key(f)
        if n_count < 1.0 / f:
            table[key] = _entry(None, None, f"n/a: FPR {f:g} needs >= {math.ceil(1 / f):,} negatives to allow one "
                                            f"false positive (>= {math.ceil(RELIABLE_FP / f):,} to measure it); "
                                            f"this set has {n_count:,}", n_negatives=n_count)
            continue
        value, threshold = tpr_at_fpr(point, f)
        ci = _interval([tpr_at_fpr(c, f)[0] for c in curves])
        allowed_fp = int(math.floor(f * n_count + 1e-9))
        note = None
        if n_count < RELIABLE_FP / f:
            note = (f"warning: rests on <= {allowed_fp} false positive(s); {math.ceil(RELIABLE_FP / f):,} "
                    f"negatives are needed for a reliable estimate, this set has {n_count:,}")
        table[key] = _entry(value, ci, note, threshold=threshold, n_negatives=n_count, allowed_fp=allowed_fp,
                            reliable=n_count >= RELIABLE_FP / f)
    out["tpr_at_fpr"] = table

    purity = {}
    for c in completeness:
        value, threshold, fpr = purity_at_completeness(point, c, prevalence)
        ci = _interval([purity_at_completeness(cv, c, prevalence)[0] for cv in curves])
        note = None
        if fpr == 0.0:
            note = (f"no false positive among {n_count:,} negatives at this threshold: purity 1 is an upper "
                    f"bound set by the number of negatives (FPR < {3.0 / n_count:.2g} at 95%)")
        purity[str(c)] = _entry(value, ci, note, threshold=threshold, fpr=fpr, prevalence=prevalence)
    out["purity_at_completeness"] = purity

    value, threshold = tpr_at_fp_count(point, 0)
    out["recall_at_zero_fp"] = _entry(value, _interval([tpr_at_fp_count(c, 0)[0] for c in curves]),
                                      threshold=threshold)

    # one operating threshold for the per-bin figures
    if n_count >= 1.0 / operating_fpr:
        _, op = tpr_at_fpr(point, operating_fpr)
        op_note = f"threshold reaching FPR <= {operating_fpr:g} on this set"
    else:
        op = 0.5
        op_note = (f"threshold 0.5: FPR {operating_fpr:g} cannot be set with {n_count:,} negatives "
                   f"(needs >= {math.ceil(1 / operating_fpr):,})")
    out["operating_point"] = {"threshold": op, "note": op_note}
    passed = np.asarray(score, dtype=np.float64).ravel()[sorted_.order] >= op
    if records:
        out["per_bin_recall"] = {}
        for name, edges in bins.items():
            if name in records:
                values = np.asarray(records[name], dtype=np.float64).ravel()[sorted_.order]
                out["per_bin_recall"][name] = _binned(values, sorted_.y, passed, edges, replicates, pos=True)
        if "non_lens_subtype" in records:
            codes = np.asarray(records["non_lens_subtype"], dtype=np.float64).ravel()[sorted_.order]
            out["fpr_per_subtype"] = _per_subtype(codes, sorted_.y, passed, subtype_names, replicates)
    return out


def _rate(mask: np.ndarray, passed: np.ndarray, replicates: list[np.ndarray]) -> tuple[float | None, list | None]:
    n = int(mask.sum())
    if not n:
        return None, None
    value = float(passed[mask].mean())
    boots = []
    for w in replicates:
        total = w[mask].sum()
        boots.append(float((w[mask] * passed[mask]).sum() / total) if total > 0 else None)
    return value, _interval(boots)


def _binned(values: np.ndarray, y: np.ndarray, passed: np.ndarray, edges: Sequence[float],
            replicates: list[np.ndarray], pos: bool) -> list[dict]:
    rows = []
    members = y if pos else ~y
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = members & (values >= lo) & (values < hi)
        value, ci = _rate(mask, passed, replicates)
        rows.append(_entry(value, ci, None if value is not None else "no lenses in this bin",
                           low=float(lo), high=float(hi) if math.isfinite(hi) else None, count=int(mask.sum())))
    missing = int((members & ~np.isfinite(values)).sum())
    if missing:
        rows.append({"value": None, "note": f"{missing} lens(es) without a value", "count": missing})
    return rows


def _per_subtype(codes: np.ndarray, y: np.ndarray, passed: np.ndarray, names: Sequence[str] | None,
                 replicates: list[np.ndarray]) -> dict:
    out = {}
    negatives = ~y
    present = np.unique(codes[negatives & np.isfinite(codes)]).astype(int)
    known = range(len(names)) if names else present
    for code in sorted(set(known) | set(present.tolist())):
        name = names[code] if names and 0 <= code < len(names) else str(code)
        mask = negatives & (codes == code)
        value, ci = _rate(mask, passed, replicates)
        out[name] = _entry(value, ci, None if value is not None else "no non-lens of this subtype in the set",
                           count=int(mask.sum()), false_positives=int((mask & passed).sum()))
    return out


def headline(survey: Mapping) -> dict:
    """Flat figures (float or None) for tables and TensorBoard: the `survey` dict holds intervals and reasons."""
    out = {f"tpr_at_fpr_{k}": e["value"] for k, e in survey.get("tpr_at_fpr", {}).items()}
    out.update({f"purity_at_{float(k) * 100:.0f}pct_completeness": e["value"]
                for k, e in survey.get("purity_at_completeness", {}).items()})
    out["recall_at_zero_fp"] = survey.get("recall_at_zero_fp", {}).get("value")
    return out


def survey_cells(survey: Mapping) -> dict:
    """Short table cells ("value [CI]" in percent, "n/a") of the headline figures, for benchmark tables."""
    out: dict = {"n_pos": survey["n_positive"], "n_neg": survey["n_negative"]}
    for key, entry in survey.get("tpr_at_fpr", {}).items():
        out[f"tpr@fpr{key}"] = _fmt(entry) + ("*" if entry.get("value") is not None and entry.get("note") else "")
    for key, entry in survey.get("purity_at_completeness", {}).items():
        out[f"purity@{float(key) * 100:.0f}%"] = _fmt(entry)
    out["recall@0fp"] = _fmt(survey.get("recall_at_zero_fp", {}))
    return out


def _fmt(entry: Mapping, percent: bool = True) -> str:
    value = entry.get("value")
    if value is None:
        return "n/a"
    ci = entry.get("ci95")
    scale = 100.0 if percent else 1.0
    text = f"{value * scale:.3g}%" if percent else f"{value:.3g}"
    if ci:
        text += f" [{ci[0] * scale:.3g}, {ci[1] * scale:.3g}]"
    return text


def format_survey(survey: Mapping) -> list[str]:
    """Human-readable lines (value [95% CI], n/a with the reason) for evaluate, bench and the pipeline."""
    lines = [f"survey metrics: {survey['n_positive']:,} lenses, {survey['n_negative']:,} non-lenses; purity at "
             f"prevalence {survey['prevalence']:g}; 95% bootstrap intervals ({survey['bootstrap']['replicates']})"]
    for key, entry in survey.get("tpr_at_fpr", {}).items():
        line = f"  TPR at FPR {key}: {_fmt(entry)}"
        lines.append(line + (f"  ({entry['note']})" if entry.get("note") else ""))
    for key, entry in survey.get("purity_at_completeness", {}).items():
        line = f"  purity at {float(key) * 100:.0f}% completeness: {_fmt(entry)}"
        lines.append(line + (f"  ({entry['note']})" if entry.get("note") else ""))
    if "recall_at_zero_fp" in survey:
        lines.append(f"  recall at zero false positives: {_fmt(survey['recall_at_zero_fp'])}")
    op = survey.get("operating_point")
    if op and (survey.get("per_bin_recall") or survey.get("fpr_per_subtype")):
        lines.append(f"  at threshold {op['threshold']:.4g} ({op['note']}):")
    for name, rows in (survey.get("per_bin_recall") or {}).items():
        cells = []
        for row in rows:
            if "low" in row:
                high = "inf" if row["high"] is None else f"{row['high']:g}"
                cells.append(f"[{row['low']:g},{high}) {_fmt(row)} n={row['count']}")
        lines.append(f"    recall by {name}: " + "; ".join(cells))
    for name, entry in (survey.get("fpr_per_subtype") or {}).items():
        lines.append(f"    FPR {name}: {_fmt(entry)} ({entry['false_positives']}/{entry['count']})")
    for note in survey.get("notes", []):
        lines.append(f"  note: {note}")
    return lines
