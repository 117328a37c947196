"""Class-balance audit: do the classes of a dataset differ in anything but what should tell them apart?

Every shared parameter (macro model, source, lens light, exposure...) must follow the same distribution in
every class, or a classifier can learn that shortcut instead of the substructure. For each parameter that
is finite in every class and not constant, a two-sample Kolmogorov-Smirnov test compares every pair of
classes; a parameter "separates" the classes when its smallest p-value falls below the overall alpha
divided by the number of tests (Bonferroni). Class-specific parameters (subhalo counts, axion mass,
confuser type...) are passed as `exclude`.

Drawn parameters are not the whole story: a class can differ in its IMAGES through something no
parameter names (substructure that adds mass makes the Einstein ring larger). `image_statistics`
summarises each image by its total flux, flux-weighted ring radius and flux-weighted second moments,
and `audit_images` runs the same KS audit on them per class. Substructure perturbs an image locally, so
these summaries should not separate classes of a physical preset; replicas of DeepLense, which add the
substructure mass to the lens, are expected to separate, and their result says so (`expected`) instead
of failing the dataset.

Power. A KS test that finds nothing on 30 images per class says little. Every audit states, for its N and its
per-test threshold, the smallest shift it detects with probability POWER (0.8): `minimum_detectable_shift`,
in standard deviations of a statistic (a normal location shift between two classes, estimated by Monte
Carlo with the same KS critical value; fixed seed, so the same N gives the same number), and per statistic in
its own units (x the pooled within-class sd). When that shift exceeds UNDERPOWERED_SD (0.5 sd, Cohen's
"medium" effect) the result carries a `warning` and a statistic that does not separate is reported as
"not seen" (could not see), never as "no" (absent).

Lens light. `ring_radius` weights every positive pixel, so a bright lens galaxy pulls it towards the centre
and dilutes a ring difference. `ring_radius_no_lens_light` subtracts the lens light estimated from the image
alone (the records store the lens light's Sersic parameters but not the instrument's zero point and PSF a
rendering would need, so nothing is read from them): the log of a Sersic galaxy's azimuthal profile is convex
and non-increasing in radius (n >= 1), so the lower convex hull of the image's log azimuthal profile (1-pixel
annuli) is taken as lens light; the annuli inside RING_MASK_PIXELS (3 px), where the PSF makes the core
concave, are masked; the statistic is the flux-weighted radius of the excess above the hull (the ring,
arcs), 0 when nothing rises above it. The hull lies between the galaxy and the image, so the excess
underestimates the ring's flux but keeps its radius (tests/test_audit.py: a ring of 10 px under a
de Vaucouleurs galaxy 7x brighter at the ring). Datasets without lens light (the replicas) give the ring's
own radius.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
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
    sizes = {class_names[c]: int(np.count_nonzero(labels == c)) for c in present}
    mde_sd = max((minimum_detectable_shift(sizes[class_names[i]], sizes[class_names[j]], threshold)
                  for i, j in pairs), default=math.inf)
    for name, groups in tested.items():
        sd = _pooled_sd(groups)
        report[name]["mde"] = float(mde_sd * sd)
        report[name]["observed_sd"] = float(max(
            (abs(a.mean() - b.mean()) / sd for a, b in combinations(groups, 2)), default=0.0)) if sd > 0 else 0.0
    return {
        "ok": not separating,
        "separating": separating,
        "alpha": float(alpha),
        "n_tests": int(n_tests),
        "threshold": float(threshold),
        "params": report,
        "skipped": skipped,
        "power": power_summary(sizes, threshold, mde_sd),
    }


POWER = 0.8
UNDERPOWERED_SD = 0.5  # Cohen's "medium" effect: an audit that cannot see it is underpowered
LARGE_N = 300


@lru_cache(maxsize=256)
def minimum_detectable_shift(n1: int, n2: int, alpha: float, power: float = POWER, reps: int = 400) -> float:
    """Smallest normal location shift (in sd) the two-sample KS test at `alpha` detects with probability `power`.

    Monte Carlo over `reps` pairs of samples of sizes n1, n2 (fixed seed, common random numbers across
    shifts, so power rises monotonically and bisection is exact on the sample), with the asymptotic KS
    critical value c(alpha) sqrt((n1 + n2) / (n1 n2)), c = sqrt(-ln(alpha / 2) / 2) (slightly conservative
    at small N). inf when no shift can be detected (the critical value exceeds 1 at very small N). Above
    LARGE_N records per class the value at LARGE_N is scaled by the asymptotic sqrt((n1 + n2) / (n1 n2)).
    """
    if n1 < 1 or n2 < 1:
        return math.inf
    if min(n1, n2) > LARGE_N:  # the detectable shift scales as sqrt((n1 + n2) / (n1 n2)) once N is large
        effective = n1 * n2 / (n1 + n2)
        return minimum_detectable_shift(LARGE_N, LARGE_N, alpha, power, reps) * math.sqrt(LARGE_N / 2.0 / effective)
    critical = math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt((n1 + n2) / (n1 * n2))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((reps, n1))
    b = rng.standard_normal((reps, n2))
    sign = np.concatenate([np.full(n1, 1.0 / n1), np.full(n2, -1.0 / n2)])

    def detected(shift: float) -> float:
        pooled = np.concatenate([a, b + shift], axis=1)
        order = np.argsort(pooled, axis=1, kind="stable")
        d = np.abs(np.cumsum(sign[order], axis=1)).max(axis=1)
        return float(np.mean(d > critical))

    lo, hi = 0.0, 20.0
    if detected(hi) < power:
        return math.inf
    if critical >= 1.0:  # the KS statistic never exceeds 1: no shift is ever detected at this N and alpha
        return math.inf
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if detected(mid) < power else (lo, mid)
    return hi


def power_summary(sizes: Mapping[str, int], threshold: float, mde_sd: float) -> dict:
    """What the audit could see: N per class, the detectable shift, and a warning when it is too large."""
    summary = {"n_per_class": dict(sizes), "power": POWER, "alpha_per_test": float(threshold),
               "mde_sd": float(mde_sd), "underpowered": bool(mde_sd > UNDERPOWERED_SD), "warning": None}
    if summary["underpowered"]:
        smallest = min(sizes.values()) if sizes else 0
        summary["warning"] = (
            f"underpowered: with {smallest} records in the smallest class, a statistic must differ by "
            f">= {mde_sd:.2g} sd between two classes to be detected (power {POWER:g}); a pass means 'could not "
            f"see', not 'no difference' (about {_records_for(UNDERPOWERED_SD, threshold, smallest, mde_sd)} per "
            f"class detect "
            f"{UNDERPOWERED_SD:g} sd)")
    return summary


def _records_for(shift_sd: float, threshold: float, n: int, mde_sd: float) -> int:
    """Equal class size whose audit would detect `shift_sd`: the detectable shift scales as 1/sqrt(N)."""
    if not math.isfinite(mde_sd):
        n, mde_sd = 64, minimum_detectable_shift(64, 64, threshold)
    return int(math.ceil(n * (mde_sd / shift_sd) ** 2))


def _pooled_sd(groups: Sequence[np.ndarray]) -> float:
    """Within-class standard deviation, pooled over the classes."""
    dof = sum(len(g) - 1 for g in groups)
    if dof <= 0:
        return 0.0
    return math.sqrt(sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / dof)


# per-image summaries, in pixels of the first image field with its channels summed (datasets written before
# ring_radius_no_lens_light carry the first five)
IMAGE_STATISTICS = ("total_flux", "ring_radius", "q_xx", "q_yy", "q_xy", "ring_radius_no_lens_light")


def image_statistics(images: np.ndarray) -> np.ndarray:
    """(N, len(IMAGE_STATISTICS)) summaries of (N, H, W, C) images, about the image centre.

    total_flux sums every pixel; the flux-weighted quantities use the positive part of the image (noise
    averages out of a sum, not of a ratio): ring_radius = sum(f r) / sum(f), q_ab = sum(f a b) / sum(f)
    with (x, y) the pixel offsets from the image centre.
    """
    images = np.asarray(images, dtype=np.float64)
    flux = images.sum(axis=-1)
    n, h, w = flux.shape
    y, x = np.mgrid[:h, :w]
    x = x - (w - 1) / 2.0
    y = y - (h - 1) / 2.0
    r = np.hypot(x, y)
    positive = np.maximum(flux, 0.0).reshape(n, -1)
    weight = positive.sum(axis=1)
    weight = np.where(weight > 0, weight, 1.0)
    moments = positive @ np.stack([r.ravel(), (x * x).ravel(), (y * y).ravel(), (x * y).ravel()], axis=1)
    return np.column_stack([flux.reshape(n, -1).sum(axis=1), moments / weight[:, None], ring_without_lens_light(flux)])


RING_MASK_PIXELS = 3.0  # annuli inside this radius (the PSF-blurred core of the lens light) are masked


def ring_without_lens_light(flux: np.ndarray) -> np.ndarray:
    """Flux-weighted radius (pixels) of the excess over the lens light, estimated per image from its own profile.

    See the module docstring: the lens light is the lower convex hull of the log azimuthal profile (a Sersic
    galaxy's log profile is convex and non-increasing in radius for n >= 1), the annuli inside
    RING_MASK_PIXELS are masked, and the excess above exp(hull) weights the radius.
    """
    n, h, w = flux.shape
    y, x = np.mgrid[:h, :w]
    r = np.hypot(x - (w - 1) / 2.0, y - (h - 1) / 2.0)
    bins = r.astype(np.int64).ravel()
    n_bins = int(bins.max()) + 1
    onehot = np.zeros((h * w, n_bins))
    onehot[np.arange(h * w), bins] = 1.0
    counts = onehot.sum(axis=0)
    centres = (onehot.T @ r.ravel()) / counts
    profile = flux.reshape(n, -1) @ onehot / counts
    keep = centres >= RING_MASK_PIXELS
    out = np.zeros(n)
    for k in range(n):
        p = profile[k, keep]
        floor = max(float(p.max()), 1e-30) * 1e-4  # noise and empty sky: a floor keeps the logarithm finite
        light = np.exp(_lower_hull(centres[keep], np.log(np.maximum(p, floor))))
        excess = np.maximum(p - light, 0.0) * counts[keep]
        total = excess.sum()
        # round-off above a smooth galaxy is ~1e-16 of its flux; a ring 7x fainter than it still holds ~1e-2
        out[k] = float(excess @ centres[keep] / total) if total > 1e-9 * np.abs(p * counts[keep]).sum() else 0.0
    return out


def _lower_hull(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The greatest convex function below the points (xs increasing), evaluated at xs (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for point in zip(xs.tolist(), ys.tolist()):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1) <= 0:  # hull[-1] lies above the chord
                hull.pop()
            else:
                break
        hull.append(point)
    hx, hy = zip(*hull)
    return np.interp(xs, hx, hy)


def audit_images(
    statistics: np.ndarray, labels: np.ndarray, class_names: list[str], *, expected: str | None = None,
    alpha: float = 1e-3,
) -> dict:
    """`audit` of image_statistics rows; `expected` (why separation is by design) turns a failure into a report."""
    statistics = np.asarray(statistics, dtype=np.float64)
    statistics = statistics.reshape(len(statistics), -1) if statistics.size else statistics.reshape(0, 1)
    names = IMAGE_STATISTICS[: statistics.shape[1]]  # older datasets: the statistics they stored
    columns = {name: statistics[:, i] for i, name in enumerate(names)}
    result = audit(columns, labels, class_names, alpha=alpha)
    result["statistics"] = list(names)
    result["medians"] = class_medians(columns, labels, class_names)
    if expected and not result["ok"]:
        result["expected"] = expected
    return result


def class_medians(columns: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per statistic and class, the median (what a reader compares when a statistic separates)."""
    labels = np.asarray(labels)
    return {
        name: {c: float(np.median(v[labels == i])) for i, c in enumerate(class_names) if np.any(labels == i)}
        for name, v in columns.items()
    }


def image_separation_note(manifest: Mapping) -> str | None:
    """Why a dataset's image statistics may separate its classes by design, or None when they must not.

    Only lensnet's own substructure simulations promise classes that differ in nothing but substructure;
    a replica of DeepLense adds the substructure mass to the lens, and other datasets (imported, lens
    finding, synthetic) differ in their images by nature: for those, separation is reported, not failed.
    """
    config = manifest.get("config") or {}
    if manifest.get("generator") != "lensnet.simulate" or config.get("kind") != "substructure":
        return ("this dataset's classes may differ in their images by design (only lensnet's substructure "
                "simulations promise otherwise): reported, not a failure")
    replica = config.get("replica")
    if replica:
        return (f"{replica} copies DeepLenseSim, whose substructure adds mass to a fixed lens: the ring grows "
                "with it and image statistics separate the classes by design (reported, not a failure)")
    return None


def combined_ok(result: dict) -> bool:
    """Parameter audit passes, and the image audit passes or its separation is expected (replicas)."""
    images = result.get("images")
    images_ok = images is None or images.get("ok", True) or bool(images.get("expected"))
    return bool(result.get("params_ok", result.get("ok", False))) and images_ok
