"""Write a dataset as shards + manifest: resumable, shardable across jobs, deterministic.

A `RecordSource` produces records by global index; this module decides which
records go to which shard, runs the source in worker processes, writes each
shard atomically with a small sidecar (`.parts/<shard>.json`), and assembles
`manifest.json` once every shard of the dataset exists. A record's bytes depend
only on the source and its index, so the shards are byte-identical whatever the
number of workers or jobs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import sha256_file, write_json
from lensnet.data.manifest import MANIFEST_NAME, SPLITS
from lensnet.data.schema import SCHEMA_VERSION, Schema
from lensnet.data.tfrecord import ShardWriter

PARTS_DIR = ".parts"


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int  # position of the shard within its split
    of: int  # number of shards in the split
    start: int  # first global record index
    stop: int  # one past the last global record index
    split_start: int  # global index of the split's first record

    @property
    def file(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.of:05d}.tfrecord"


@dataclass
class RecordBatch:
    """Records `start..stop` of a source, serialized, with what the manifest summarises."""

    serialized: list[bytes]
    labels: np.ndarray  # int64, -1 when unlabelled
    params: np.ndarray  # float64 (n, len(schema.param_names)), NaN where not applicable
    image_stats: dict[str, np.ndarray]  # per image field: (4, C) rows sum, sum of squares, min, max
    image_summary: np.ndarray | None = None  # (n, k) lensnet.data.audit.image_statistics of the records


class RecordSource(Protocol):
    schema: Schema
    class_names: list[str]
    class_specific_params: set[str]

    def setup(self) -> None:
        """Build whatever is expensive; called once in each worker process."""

    def records(self, plan: ShardPlan, start: int, stop: int) -> RecordBatch: ...


def split_counts(num: int, fractions: dict[str, float]) -> dict[str, int]:
    """Records per split, summing exactly to `num` (largest remainder), in train/val/test order."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise LensnetError(f"unknown split '{sorted(unknown)[0]}'; splits are {', '.join(SPLITS)}")
    if any(f < 0 for f in fractions.values()) or not abs(sum(fractions.values()) - 1.0) < 1e-6:
        raise LensnetError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    raw = {s: num * fractions.get(s, 0.0) for s in SPLITS}
    counts = {s: int(np.floor(v)) for s, v in raw.items()}
    for s in sorted(SPLITS, key=lambda s: raw[s] - counts[s], reverse=True)[: num - sum(counts.values())]:
        counts[s] += 1
    return {s: c for s, c in counts.items() if c > 0}


def plan_shards(counts: dict[str, int], records_per_shard: int) -> list[ShardPlan]:
    if records_per_shard < 1:
        raise LensnetError(f"records_per_shard must be >= 1, got {records_per_shard}")
    plans = []
    start = 0
    for split in SPLITS:
        count = counts.get(split, 0)
        if not count:
            continue
        of = -(-count // records_per_shard)
        for index in range(of):
            lo = start + index * records_per_shard
            plans.append(ShardPlan(split, index, of, lo, min(lo + records_per_shard, start + count), start))
        start += count
    return plans


def fingerprint(*parts: object) -> str:
    """Stable hash of everything that determines the bytes of a dataset."""
    text = json.dumps(parts, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def image_stats(images: np.ndarray) -> np.ndarray:
    """(4, C): per-channel sum, sum of squares, min, max of a stack (n, H, W, C)."""
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return np.stack([flat.sum(0), np.square(flat).sum(0), flat.min(0), flat.max(0)])


# ---- worker processes -------------------------------------------------------------------------
_WORKER_SOURCE: RecordSource | None = None


def _worker_init(source: RecordSource, ready: mp.Value, failures: mp.Queue) -> None:
    global _WORKER_SOURCE
    try:
        source.setup()
    except BaseException as exc:  # reported by the parent as one line, instead of a respawn loop
        failures.put(f"{type(exc).__name__}: {exc}")
        raise
    _WORKER_SOURCE = source
    with ready.get_lock():
        ready.value += 1


def _worker_run(task: tuple[ShardPlan, int, int]) -> RecordBatch:
    return _WORKER_SOURCE.records(*task)


def _chunks(plans: Sequence[ShardPlan], chunk: int) -> Iterable[tuple[ShardPlan, int, int]]:
    for plan in plans:
        for lo in range(plan.start, plan.stop, chunk):
            yield plan, lo, min(lo + chunk, plan.stop)


@dataclass
class WriteSummary:
    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records_written: int = 0
    seconds: float = 0.0  # producing and writing, after the workers were ready
    setup_seconds: float = 0.0
    manifest: Path | None = None
    pending_shards: int = 0

    @property
    def images_per_second(self) -> float:
        return self.records_written / self.seconds if self.seconds > 0 else 0.0


def print_summary(summary: WriteSummary) -> None:
    """What a write did and where (the end-of-command summary of simulate, convert and degrade)."""
    out = summary.out
    if summary.written:
        rate = summary.images_per_second
        print(f"wrote {len(summary.written)} shard(s), {summary.records_written} records, to {out} "
              f"in {summary.seconds:.1f} s ({rate:.0f} records/s, {summary.setup_seconds:.1f} s start-up)")
    if summary.skipped:
        print(f"kept {len(summary.skipped)} complete shard(s) from an earlier run")
    if summary.manifest is not None:
        print(f"dataset complete: {summary.manifest}")
    else:
        print(f"this part is done; {summary.pending_shards} shard(s) of other parts are still missing "
              f"(the manifest is written by whichever part finishes last)")


def _sidecar_path(out: Path, plan: ShardPlan) -> Path:
    return out / PARTS_DIR / f"{plan.file}.json"


def _shard_is_complete(out: Path, plan: ShardPlan, print_: str) -> bool:
    shard, sidecar = out / plan.file, _sidecar_path(out, plan)
    if not (shard.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (
        meta.get("fingerprint") == print_
        and meta.get("count") == plan.stop - plan.start
        and meta.get("sha256") == sha256_file(shard)
    )


def _check_existing(out: Path, print_: str, overwrite: bool) -> None:
    """Refuse to mix two datasets in one directory; with `overwrite`, clear the other one away."""
    metas = [out / MANIFEST_NAME, *sorted((out / PARTS_DIR).glob("*.json"))]
    foreign = [path for path in metas if path.is_file() and _fingerprint_of(path) != print_]
    if foreign and not overwrite:
        raise LensnetError(
            f"{out} already holds a different dataset ({foreign[0].name} has another config or seed); "
            "choose another --out or pass --overwrite"
        )
    if foreign and overwrite:
        for path in [*foreign, *out.glob("*.tfrecord")]:
            path.unlink(missing_ok=True)


def _fingerprint_of(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def write_dataset(
    out: str | Path,
    source: RecordSource,
    plans: Sequence[ShardPlan],
    manifest_base: dict,
    *,
    workers: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
    chunk: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    describe: str = "writing",
) -> WriteSummary:
    """Write this job's shards of `plans` (those with `n % num_shards == shard_index`), then the manifest.

    `manifest_base` holds what the source knows (name, kind, config, seed...);
    its fingerprint together with the schema decides whether existing shards can be kept.
    """
    from lensnet.core.progress import Progress

    if not 0 <= shard_index < num_shards:
        raise LensnetError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    if workers < 1:
        raise LensnetError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    print_ = fingerprint(SCHEMA_VERSION, manifest_base, source.schema.to_json(), [p.file for p in plans])
    if out.exists() and not out.is_dir():
        raise LensnetError(f"--out {out} exists and is not a directory")
    _check_existing(out, print_, overwrite)
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)

    summary = WriteSummary(out=out)
    mine = [p for n, p in enumerate(plans) if n % num_shards == shard_index]
    todo = []
    for plan in mine:
        for leftover in out.glob(f".{plan.file}.*.tmp"):  # from a killed run of this job
            leftover.unlink(missing_ok=True)
        if _shard_is_complete(out, plan, print_):
            summary.skipped.append(plan.file)
        else:
            todo.append(plan)

    total = sum(p.stop - p.start for p in todo)
    if todo:
        t0 = time.perf_counter()
        pool = None
        if workers > 1:
            ctx = mp.get_context("spawn")  # the caller may hold TensorFlow threads: never fork
            ready, failures = ctx.Value("i", 0), ctx.Queue()
            pool = ctx.Pool(workers, initializer=_worker_init, initargs=(source, ready, failures))
            while ready.value < workers:
                if not failures.empty():
                    pool.terminate()
                    raise LensnetError(f"a worker process failed to start: {failures.get()}")
                time.sleep(0.01)
            results = pool.imap(_worker_run, _chunks(todo, chunk))
        else:
            source.setup()
            results = (source.records(*task) for task in _chunks(todo, chunk))
        summary.setup_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        bar = Progress(total, describe, "img", enabled=progress, smoothing=0.05)
        try:
            for plan in todo:
                summary.written.append(_write_shard(out, plan, results, print_, source, bar))
                summary.records_written += plan.stop - plan.start
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
        summary.seconds = time.perf_counter() - t1

    manifest = finalize(out, plans, manifest_base, source, print_)
    summary.manifest = manifest
    if manifest is None:
        summary.pending_shards = sum(not _sidecar_path(out, p).is_file() for p in plans)
    return summary


def _write_shard(
    out: Path, plan: ShardPlan, results: Iterable[RecordBatch], print_: str, source: RecordSource, bar
) -> str:
    labels, params, stats, summaries = [], [], {}, []
    needed = plan.stop - plan.start
    with ShardWriter(out / plan.file) as writer:
        while writer.count < needed:
            batch = next(results)
            for record in batch.serialized:
                writer.write(record)
            labels.append(batch.labels)
            params.append(batch.params)
            summaries.append(batch.image_summary)
            for name, value in batch.image_stats.items():
                if name in stats:
                    s = stats[name]
                    stats[name] = np.stack([s[0] + value[0], s[1] + value[1],
                                            np.minimum(s[2], value[2]), np.maximum(s[3], value[3])])
                else:
                    stats[name] = value
            bar.update(len(batch.serialized))
    labels_all = np.concatenate(labels)
    params_all = np.concatenate(params)
    extra = {}
    if summaries and all(v is not None for v in summaries):
        extra["image_summary"] = np.concatenate(summaries).tolist()
    write_json(
        _sidecar_path(out, plan),
        {
            **extra,
            "fingerprint": print_,
            "file": plan.file,
            "split": plan.split,
            "count": writer.count,
            "sha256": writer.sha256,
            "labels": labels_all.tolist(),
            "params": {n: params_all[:, i].tolist() for i, n in enumerate(source.schema.param_names)},
            "image_stats": {n: v.tolist() for n, v in stats.items()},
        },
    )
    return plan.file


def finalize(
    out: Path, plans: Sequence[ShardPlan], manifest_base: dict, source: RecordSource, print_: str,
    audit: Callable | None = None,
) -> Path | None:
    """Assemble manifest.json when every shard's sidecar is present; otherwise return None."""
    metas = []
    for plan in plans:
        path = _sidecar_path(out, plan)
        if not path.is_file() or not (out / plan.file).is_file():
            return None
        meta = json.loads(path.read_text())
        if meta.get("fingerprint") != print_:
            return None
        metas.append(meta)

    class_names = list(source.class_names)
    splits: dict[str, dict] = {}
    labels_by_split: dict[str, list] = {}
    for meta in metas:
        info = splits.setdefault(meta["split"], {"count": 0, "per_class": {}, "shards": []})
        info["count"] += meta["count"]
        info["shards"].append({"file": meta["file"], "count": meta["count"], "sha256": meta["sha256"]})
        labels_by_split.setdefault(meta["split"], []).extend(meta["labels"])
    for split, labels in labels_by_split.items():
        values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
        splits[split]["per_class"] = {
            (class_names[v] if 0 <= v < len(class_names) else "unlabelled"): int(c) for v, c in zip(values, counts)
        }

    stats_split = "train" if "train" in splits else next(iter(splits))
    pixel_stats = {}
    for name in source.schema.image_names:
        total = None
        for meta in metas:
            if meta["split"] != stats_split or name not in meta["image_stats"]:
                continue
            value = np.asarray(meta["image_stats"][name])
            total = value if total is None else np.stack(
                [total[0] + value[0], total[1] + value[1], np.minimum(total[2], value[2]),
                 np.maximum(total[3], value[3])])
        if total is None:
            continue
        shape = source.schema[name].shape
        n = splits[stats_split]["count"] * shape[0] * shape[1]
        mean = total[0] / n
        std = np.sqrt(np.maximum(total[1] / n - mean**2, 0.0))
        pixel_stats[name] = {"split": stats_split, "mean": mean.tolist(), "std": std.tolist(),
                             "min": total[2].tolist(), "max": total[3].tolist()}

    manifest = dict(manifest_base)
    manifest.update(
        schema_version=SCHEMA_VERSION,
        fingerprint=print_,
        features=source.schema.to_json(),
        class_names=class_names,
        class_specific_params=sorted(source.class_specific_params),
        splits=splits,
        pixel_stats=pixel_stats,
    )
    param_names = source.schema.param_names
    manifest["param_stats"] = _param_stats(metas, param_names)
    if param_names and len(class_names) > 1:
        from lensnet.data.audit import audit as default_audit

        labels = np.concatenate([np.asarray(m["labels"], dtype=np.int64) for m in metas])
        params = {
            n: np.concatenate([np.asarray(m["params"][n], dtype=np.float64) for m in metas]) for n in param_names
        }
        summarise = getattr(source, "population_summary", None)
        population = summarise(params, labels) if summarise else None
        if population is not None:
            manifest["population"] = population
        result = (audit or default_audit)(params, labels, class_names, exclude=source.class_specific_params)
        if all("image_summary" in m for m in metas):
            from lensnet.data.audit import audit_images, combined_ok, image_separation_note

            summary = np.concatenate([np.asarray(m["image_summary"], dtype=np.float64) for m in metas])
            result["params_ok"] = result["ok"]
            result["images"] = audit_images(summary, labels, class_names,
                                            expected=image_separation_note(manifest_base))
            result["ok"] = combined_ok(result)
        manifest["audit"] = result
    path = out / MANIFEST_NAME
    write_json(path, manifest)
    return path


def _param_stats(metas: Sequence[dict], param_names: Sequence[str]) -> dict:
    """Per split and parameter: how many records hold a finite value, and its mean, std, min, max."""
    stats: dict[str, dict] = {}
    for split in dict.fromkeys(m["split"] for m in metas):
        stats[split] = {}
        for name in param_names:
            values = np.concatenate(
                [np.asarray(m["params"][name], dtype=np.float64) for m in metas if m["split"] == split]
            )
            finite = values[np.isfinite(values)]
            entry = {"finite": int(finite.size), "count": int(values.size)}
            if finite.size:
                entry.update(mean=float(finite.mean()), std=float(finite.std()),
                             min=float(finite.min()), max=float(finite.max()))
            stats[split][name] = entry
    return stats
