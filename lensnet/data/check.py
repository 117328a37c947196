"""Verify a dataset directory end to end, and summarise it.

Checks, per shard listed in the manifest: the file exists, every TFRecord's
length and data checksums are valid, the record count matches, every record
parses with the manifest's schema, images are finite, labels and class names
agree with the class list, and the file's sha256 matches. Per split: counts
per class match. For the statistics split: recomputed pixel statistics match.
All problems are gathered and reported in one line that names each shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import sha256_file
from lensnet.data.pipeline import DatasetInfo, open_dataset
from lensnet.data.tfrecord import iter_records

_BATCH = 256  # records parsed per vectorised call
_MAX_LISTED = 5  # problems spelled out in the final message


@dataclass
class CheckReport:
    info: DatasetInfo
    shards: int = 0
    records: int = 0
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class name -> count
    labels: list[np.ndarray] = field(default_factory=list)
    params: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image_summary: list[np.ndarray] = field(default_factory=list)  # audit.image_statistics per batch
    problems: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # .tfrecord files the manifest does not name

    def all_labels(self) -> np.ndarray:
        return np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)

    def all_params(self) -> dict[str, np.ndarray]:
        return {n: np.concatenate(v) if v else np.zeros(0) for n, v in self.params.items()}


def _batches(records: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(text.strip().splitlines()[0].split())[:200]


class _Stats:
    """Per-channel sum, sum of squares, min, max, accumulated in float64 like the writer's."""

    def __init__(self) -> None:
        self.n = 0
        self.value: np.ndarray | None = None

    def add(self, images: np.ndarray) -> None:
        flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
        row = np.stack([flat.sum(0), np.square(flat).sum(0), flat.min(0), flat.max(0)])
        self.n += flat.shape[0]
        v = self.value
        self.value = row if v is None else np.stack(
            [v[0] + row[0], v[1] + row[1], np.minimum(v[2], row[2]), np.maximum(v[3], row[3])])

    def summary(self) -> dict | None:
        if self.value is None:
            return None
        mean = self.value[0] / self.n
        std = np.sqrt(np.maximum(self.value[1] / self.n - mean**2, 0.0))
        return {"mean": mean, "std": std, "min": self.value[2], "max": self.value[3]}


def _check_batch(info: DatasetInfo, shard: str, first_index: int, batch: list[bytes], report: CheckReport,
                 stats: dict[str, _Stats] | None) -> str | None:
    """Parse one batch; returns a problem (naming the shard and record) or None."""
    import tensorflow as tf

    schema = info.schema
    try:
        parsed = schema.decode(tf.constant(batch))
        parsed = {k: v.numpy() for k, v in parsed.items()}
    except tf.errors.OpError:
        for offset, record in enumerate(batch):  # find the record that does not parse
            try:
                schema.decode(tf.constant([record]))
            except tf.errors.OpError as exc:
                return (f"shard {shard}: record {first_index + offset} does not match the manifest's schema "
                        f"({_first_line(exc)})")
        return f"shard {shard}: records {first_index}-{first_index + len(batch) - 1} do not parse together"
    for name in schema.image_names:
        finite = np.isfinite(parsed[name]).reshape(len(batch), -1).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            ident = parsed["id"][bad].decode(errors="replace") if "id" in parsed else "?"
            return f"shard {shard}: record {first_index + bad} ({ident}) has NaN or Inf in field '{name}'"
        if stats is not None:
            stats[name].add(parsed[name])
    if schema.image_names and "label" in parsed:
        from lensnet.data.audit import image_statistics

        report.image_summary.append(image_statistics(parsed[schema.image_names[0]]))
    for name in schema.param_names:
        if np.isinf(parsed[name]).any():
            bad = int(np.argmax(np.isinf(parsed[name])))
            return f"shard {shard}: record {first_index + bad} has an infinite parameter '{name}'"
        report.params.setdefault(name, []).append(parsed[name].astype(np.float64))
    if "label" in parsed:
        labels = parsed["label"]
        classes = info.class_names
        bad = np.flatnonzero((labels < -1) | (labels >= len(classes)))
        if bad.size:
            return f"shard {shard}: record {first_index + int(bad[0])} has label {int(labels[bad[0]])} " \
                   f"outside [-1, {len(classes)})"
        if "class_name" in parsed:
            expected = [classes[v] if v >= 0 else "" for v in labels]
            for offset, (got, want) in enumerate(zip(parsed["class_name"], expected)):
                if got.decode(errors="replace") != want:
                    return (f"shard {shard}: record {first_index + offset} has class_name '{got.decode()}' "
                            f"but label {int(labels[offset])} ('{want}')")
        report.labels.append(labels)
    return None


def _stats_problem(info: DatasetInfo, name: str, computed: dict) -> str | None:
    stored = info.pixel_stats.get(name)
    if not stored:
        return None
    # The writer sums in another order; std = sqrt(E[x^2] - mean^2) loses precision relative to the
    # pixel scale, not to std itself, so the absolute tolerance follows the largest pixel magnitude.
    scale = max(float(np.abs(np.asarray(stored[k], np.float64)).max()) for k in ("mean", "min", "max"))
    for key in ("mean", "std", "min", "max"):
        want = np.asarray(stored[key], np.float64)
        got = computed[key]
        if want.shape != got.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-6 * (1 + scale)):
            return (f"pixel statistics of field '{name}' ({stored.get('split', 'train')} split) do not match the "
                    f"manifest: {key} is {np.round(got, 6).tolist()}, manifest says {np.round(want, 6).tolist()}")
    return None


def check_dataset(directory: str | os.PathLike | DatasetInfo, *, progress: bool = False) -> CheckReport:
    """Verify every shard of a dataset; raises a one-line LensnetError listing the problems found."""
    from lensnet.core.progress import Progress

    info = open_dataset(directory)
    report = CheckReport(info=info)
    manifest = info.manifest
    stats_split = next(iter(info.pixel_stats.values()), {}).get("split", "train")
    total = sum(info.counts.values())
    listed = set()
    bar = Progress(total, f"checking {info.name}", "rec", enabled=progress)
    try:
        for split in info.counts:
            split_info = manifest["splits"][split]
            stats = {n: _Stats() for n in info.image_names} if split == stats_split else None
            labels_before = len(report.labels)
            split_records = 0
            for shard in split_info["shards"]:
                name = shard["file"]
                listed.add(name)
                report.shards += 1
                path = info.path / name
                if not path.is_file():
                    report.problems.append(f"shard {name} listed in the manifest is missing")
                    continue
                count, problem = 0, None
                try:
                    for batch in _batches(iter_records(path), _BATCH):
                        problem = _check_batch(info, name, count, batch, report, stats)
                        count += len(batch)
                        bar.update(len(batch))
                        if problem:
                            break
                except LensnetError as exc:  # truncated or corrupt framing; the message names the file
                    problem = str(exc).replace(str(path), name)  # the dataset directory leads the final line
                if problem:
                    report.problems.append(problem)
                    continue
                report.records += count
                split_records += count
                if count != shard["count"]:
                    report.problems.append(f"shard {name} holds {count} records, the manifest says {shard['count']}")
                    continue
                digest = sha256_file(path)
                if digest != shard["sha256"]:
                    report.problems.append(
                        f"shard {name}: sha256 {digest[:12]}... does not match the manifest's {shard['sha256'][:12]}..."
                    )
            if split_records != split_info["count"] and not report.problems:
                report.problems.append(
                    f"split '{split}' holds {split_records} records, the manifest says {split_info['count']}")
            labels = np.concatenate(report.labels[labels_before:]) if len(report.labels) > labels_before else None
            if labels is not None:
                values, counts = np.unique(labels, return_counts=True)
                found = {(info.class_names[v] if v >= 0 else "unlabelled"): int(c) for v, c in zip(values, counts)}
                report.per_class[split] = found
                want = {k: int(v) for k, v in split_info.get("per_class", {}).items()}
                if found != want and not report.problems:
                    report.problems.append(f"split '{split}' has per-class counts {found}, the manifest says {want}")
            if stats is not None and not report.problems:
                for field_name, acc in stats.items():
                    computed = acc.summary()
                    problem = _stats_problem(info, field_name, computed) if computed else None
                    if problem:
                        report.problems.append(problem)
    finally:
        bar.close()
    report.unlisted = sorted(p.name for p in info.path.glob("*.tfrecord") if p.name not in listed)
    if report.problems:
        n = len(report.problems)
        if n == 1:
            raise LensnetError(f"{info.path}: {report.problems[0]}")
        listed_problems = "; ".join(report.problems[:_MAX_LISTED])
        more = f"; and {n - _MAX_LISTED} more" if n > _MAX_LISTED else ""
        raise LensnetError(f"{info.path}: {n} problems: {listed_problems}{more}")
    return report


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def format_summary(info: DatasetInfo, report: CheckReport | None = None) -> str:
    """Human summary of a dataset (from the manifest, plus verification results when given)."""
    from lensnet.core.tables import format_table

    manifest = info.manifest
    lines = [f"dataset   {info.name} (kind {manifest.get('kind', '?')}) at {info.path}"]
    source = manifest.get("source")
    if source:
        lines.append(f"source    {source}")
    lines.append(f"classes   {len(info.class_names)}: {', '.join(info.class_names) or '(unlabelled)'}")
    columns = [*info.class_names, "unlabelled"]
    rows = []
    for split in info.counts:
        split_info = manifest["splits"][split]
        per_class = report.per_class.get(split) if report else None
        per_class = per_class or split_info.get("per_class", {})
        row = {"split": split, "records": split_info["count"], "shards": len(split_info["shards"])}
        row.update({c: per_class.get(c, 0) for c in columns if c != "unlabelled" or "unlabelled" in per_class})
        rows.append(row)
    lines += ["", format_table(rows), ""]
    for name in info.image_names:
        shape = info.schema[name].shape
        lines.append(f"image     {name} {tuple(shape)}, {shape[-1]} channel(s)")
    specific = set(info.class_specific_params)
    params = [f"{p}*" if p in specific else p for p in info.param_names]
    lines.append(f"params    {len(params)}: {', '.join(params) or '-'}" + ("  (* class-specific)" if specific else ""))
    for name, stats in info.pixel_stats.items():
        lines.append(f"pixels    {name} ({stats.get('split', 'train')} split): mean {_fmt(stats['mean'])} "
                     f"std {_fmt(stats['std'])} min {_fmt(stats['min'])} max {_fmt(stats['max'])}")
    if report is not None:
        lines.append(f"verified  {report.shards} shard(s), {report.records} records: files, sha256, record "
                     "checksums, counts per shard/split/class, schema parse, finite images, labels, pixel stats")
        if report.unlisted:
            lines.append(f"note      {len(report.unlisted)} .tfrecord file(s) not in the manifest (ignored): "
                         f"{', '.join(report.unlisted[:3])}")
    return "\n".join(lines)


def run_audit(report: CheckReport) -> dict:
    """Recompute the class audit from the records' parameters (all splits, as the writer does)."""
    from lensnet.data.audit import audit, audit_images, combined_ok, image_separation_note

    info = report.info
    labels = report.all_labels()
    result = audit(report.all_params(), labels, info.class_names,
                   exclude=info.manifest.get("class_specific_params", []))
    if report.image_summary:
        result["params_ok"] = result["ok"]
        result["images"] = audit_images(np.concatenate(report.image_summary), labels, info.class_names,
                                        expected=image_separation_note(info.manifest))
        result["ok"] = combined_ok(result)
    return result


def _verdict(separates: bool, power: dict) -> str:
    """YES, or what a non-separation means at this power: 'no' only when the audit could have seen one."""
    if separates:
        return "YES"
    return "not seen" if power.get("underpowered", True) else "no"


def _power_lines(power: dict | None) -> list[str]:
    if not power:
        return []
    sizes = "/".join(str(v) for v in power.get("n_per_class", {}).values())
    mde = power.get("mde_sd", float("inf"))
    lines = [f"power: N per class {sizes}; the smallest class difference detected with probability "
             f"{power.get('power', 0.8):g} at the per-test threshold {power.get('alpha_per_test', 0):.3g} is "
             f"{mde:.3g} sd" + (" (none can be detected)" if mde == float("inf") else "")]
    if power.get("warning"):
        lines.append(f"warning: {power['warning']}")
    return lines


def format_audit(result: dict) -> str:
    from lensnet.core.tables import format_table

    power = result.get("power") or {}
    rows = [
        {"param": name, "min_p": r["min_p"], "pair": " vs ".join(r["pair"] or []),
         "mde": r.get("mde", float("nan")), "separates": _verdict(r["separates"], power)}
        for name, r in sorted(result.get("params", {}).items())
    ]
    lines = [f"audit (two-sample KS, Bonferroni threshold {result.get('threshold', 0):.3g}, "
             f"{result.get('n_tests', 0)} tests; mde = smallest detectable difference in the parameter's units)"]
    lines.append(format_table(rows) if rows else "(no shared parameter to test)")
    lines += _power_lines(power)
    skipped = result.get("skipped", {})
    if skipped:
        lines.append("skipped: " + ", ".join(f"{n} ({why})" for n, why in sorted(skipped.items())))
    images = result.get("images")
    if images:
        medians = images.get("medians", {})
        image_power = images.get("power") or {}
        rows = [
            {"statistic": name, **{c: v for c, v in medians.get(name, {}).items()}, "min_p": r["min_p"],
             "mde": r.get("mde", float("nan")), "observed_sd": r.get("observed_sd", float("nan")),
             "separates": _verdict(r["separates"], image_power)}
            for name, r in images.get("params", {}).items()
        ]
        lines += ["", f"image statistics per class (median; KS threshold {images.get('threshold', 0):.3g}; "
                      "mde and the largest class difference observed_sd in sd, see lensnet.data.audit)"]
        lines.append(format_table(rows) if rows else "(nothing to test)")
        lines += _power_lines(image_power)
        if images.get("expected"):
            lines.append(f"reported: {images['expected']}")
    return "\n".join(lines)


def audit_dataset(report: CheckReport) -> tuple[dict | None, str]:
    """(audit result or None when it does not apply, printable text)."""
    info = report.info
    labelled = [c for c in np.unique(report.all_labels()) if c >= 0]
    if len(labelled) < 2 or not info.param_names:
        why = "fewer than two classes" if len(labelled) < 2 else "no stored parameters"
        return None, f"audit: skipped ({why})"
    result = run_audit(report)
    return result, format_audit(result)


def main_check(directory: Path, *, audit: bool, progress: bool) -> int:
    report = check_dataset(directory, progress=progress)
    print(format_summary(report.info, report))
    if audit:
        result, text = audit_dataset(report)
        print()
        print(text)
        if result is not None and not result.get("ok", False):
            names = ", ".join(result.get("separating", []))
            if names:
                raise LensnetError(f"{report.info.path}: audit failed: parameter(s) {names} separate the classes")
            names = ", ".join(result.get("images", {}).get("separating", []))
            raise LensnetError(f"{report.info.path}: audit failed: image statistic(s) {names} separate the classes")
    return 0
