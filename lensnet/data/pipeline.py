"""The dataset reader every later stage shares: `open_dataset` and `load` (a tf.data pipeline).

Stream: shard files (order permuted per epoch) -> interleaved TFRecord reads ->
shuffle of serialized records -> batch -> one vectorised parse of the whole batch
-> normalise -> augment -> prefetch. No per-example Python runs anywhere.

Determinism: every random choice is a stateless op keyed by (seed, epoch) and a
position (window or batch index), never by TF's global seed or an op counter.
So epoch e of a run is the same whatever ran before it, and
`load(..., first_epoch=k, repeat=True)` replays exactly the batches an
uninterrupted run from epoch 0 sees from epoch k on; a resumed training run
continues as if it had never stopped.

Shuffling is by windows: consecutive `shuffle_buffer` serialized records (drawn
from up to `_CYCLE` interleaved shards, whose order changes every epoch) are
permuted with `stateless_shuffle`. Like `Dataset.shuffle` it costs one buffer of
memory, unlike it its result depends only on (seed, epoch) (`Dataset.shuffle`
also mixes in `tf.random.set_seed`). With `cache=True` the whole split is in
memory, and each epoch is one full permutation.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from lensnet.core.errors import LensnetError
from lensnet.data.augment import augment_batch, check_augment
from lensnet.data.manifest import MANIFEST_NAME, SPLITS, read_manifest, schema_of, shard_files
from lensnet.data.normalise import apply_normalisation, check_spec, normalisation_spec
from lensnet.data.schema import Schema

_CYCLE = 8  # shards read at once when shuffling
_READ_BUFFER = 4 << 20  # bytes of read-ahead per shard
_SHUFFLE_BYTES = 64 << 20  # default shuffle window, in bytes of serialized records
_NO_END = 2**62  # "forever" for repeat=True
# Domain tags so the three uses of the (seed, epoch) key draw independent streams.
_KEY_FILES, _KEY_SHUFFLE, _KEY_AUGMENT = 1, 2, 3


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """What a dataset directory holds, read from its manifest (nothing else is opened)."""

    path: Path
    manifest: dict
    schema: Schema
    name: str
    class_names: list[str]
    image_shape: tuple[int, ...]  # of field "image"
    image_names: list[str]
    param_names: list[str]
    class_specific_params: list[str]
    counts: dict[str, int]  # records per split
    pixel_stats: dict
    checksum: str  # sha256 of manifest.json: identifies the exact dataset a model was trained on

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shards(self, split: str) -> list[Path]:
        """Shard files of `split`; an empty split or a missing shard is a LensnetError."""
        return shard_files(self.path, self.manifest, split)


def open_dataset(directory: str | os.PathLike | DatasetInfo) -> DatasetInfo:
    """Read a dataset directory's manifest; a missing or malformed dataset is a one-line LensnetError."""
    if isinstance(directory, DatasetInfo):
        return directory
    path = Path(directory)
    manifest = read_manifest(path)
    where = path / MANIFEST_NAME
    try:
        schema = schema_of(manifest)
        splits = manifest["splits"]
        # JSON keeps splits key-sorted; train/val/test order reads better and matches the writer.
        order = sorted(splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
        counts = {split: int(splits[split]["count"]) for split in order}
        for info in splits.values():
            for shard in info["shards"]:
                shard["file"], shard["sha256"], int(shard["count"])  # noqa: B018  (presence check)
    except LensnetError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LensnetError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
    image_names = schema.image_names
    if not image_names:
        raise LensnetError(f"{where}: the dataset has no image field")
    main = "image" if "image" in image_names else image_names[0]
    class_names = manifest["class_names"]
    if not isinstance(class_names, list):
        raise LensnetError(f"{where}: 'class_names' must be a list")
    return DatasetInfo(
        path=path,
        manifest=manifest,
        schema=schema,
        name=str(manifest.get("name", path.name)),
        class_names=[str(c) for c in class_names],
        image_shape=tuple(schema[main].shape),
        image_names=image_names,
        param_names=schema.param_names,
        class_specific_params=list(manifest.get("class_specific_params", [])),
        counts=counts,
        pixel_stats=dict(manifest.get("pixel_stats", {})),
        checksum=hashlib.sha256(where.read_bytes()).hexdigest(),
    )


def _record_bytes(schema: Schema) -> int:
    size = 256  # ids, class names, numbers and protobuf framing
    for name in schema.image_names:
        shape = schema[name].shape
        size += 4 * math.prod(shape)
    return size


def normalisation_specs(normalise: str | Mapping, info: DatasetInfo, image_fields: Sequence[str]) -> dict:
    if isinstance(normalise, Mapping):
        spec = check_spec(normalise)
        return dict.fromkeys(image_fields, spec)
    # "dataset" uses each field's own statistics (an HR image is not on an LR image's scale).
    return {name: normalisation_spec(normalise, info, name) for name in image_fields}


def load(
    directory_or_info: str | os.PathLike | DatasetInfo,
    split: str,
    *,
    batch_size: int = 64,
    fields: Sequence[str] | None = None,
    shuffle: bool | None = None,
    augment: str | None = None,
    normalise: str | Mapping = "standard",
    seed: int = 0,
    first_epoch: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
    cache: bool = False,
    classes: Sequence[str] | None = None,
    subset: tuple[float, int] | None = None,
) -> tf.data.Dataset:
    """A tf.data.Dataset of dicts of batched tensors for one split.

    fields: record fields to yield (None = all); images are float32 (N, H, W, C), labels
    and seeds int64, parameters float32 (NaN passes through), ids and class names strings.
    shuffle: default True for "train". augment: None, "d4" (square images) or "flip".
    normalise: "standard", "minmax", "dataset", "none" or a spec dict (see lensnet.data.normalise).
    repeat: False yields epoch `first_epoch` once; True yields epochs first_epoch, first_epoch+1, ...
    shuffle_buffer: records per shuffle window (default: about 64 MB of records).
    cache: keep the split's serialized records in memory after the first pass.
    classes: keep only the records whose class name is in it (None = every record); the filter runs on
    the serialized records before shuffling, so nothing is copied and a batch is full of kept records.
    subset: (fraction, subset_seed): only the records whose id hashes below `fraction` (see
        `in_subset`): fixed, nested subsets (for one seed, 1% of a split is inside its 10%).
    """
    info = open_dataset(directory_or_info)
    paths = info.shards(split)  # empty split / missing shard: error now, not mid-iteration
    for value, what, low in ((batch_size, "batch_size", 1), (seed, "seed", 0), (first_epoch, "first_epoch", 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise LensnetError(f"{what} must be an integer >= {low}, got {value!r}")
    if seed >= 2**63:
        raise LensnetError(f"seed must be < 2**63, got {seed}")
    schema = info.schema
    if isinstance(fields, str):  # fields="image" means the one field, not its letters
        fields = [fields]
    names = list(schema.names if fields is None else fields)
    for name in names:
        if name not in schema:
            raise LensnetError(f"dataset {info.path} has no field '{name}'; fields: {', '.join(schema.names)}")
    if not names:
        raise LensnetError("fields must name at least one record field")
    image_fields = [n for n in names if schema[n].kind == "image"]
    specs = normalisation_specs(normalise, info, image_fields)
    augment = check_augment(augment, {n: schema[n].shape for n in image_fields})
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    count = split_count(info, split, classes)
    keep = None if classes is None else tf.constant([info.class_names.index(c) for c in classes], tf.int64)
    if shuffle_buffer is None:
        window = count if cache else max(batch_size, min(8192, _SHUFFLE_BYTES // _record_bytes(schema)))
    else:
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
            raise LensnetError(f"shuffle_buffer must be an integer >= 1, got {shuffle_buffer!r}")
        window = shuffle_buffer
    window = min(window, count)

    path_tensor = tf.constant([str(p) for p in paths])
    seed_tensor = tf.constant(seed, tf.int64)
    cached = tf.data.TFRecordDataset(path_tensor, buffer_size=_READ_BUFFER).cache() if cache else None

    def key(epoch: tf.Tensor, tag: int) -> tf.Tensor:
        return tf.random.experimental.stateless_fold_in(tf.stack([seed_tensor, epoch]), tag)

    def read(epoch: tf.Tensor) -> tf.data.Dataset:
        if cached is not None:
            return cached
        if not shuffle:
            return tf.data.TFRecordDataset(path_tensor, buffer_size=_READ_BUFFER)
        order = tf.argsort(tf.random.stateless_uniform([len(paths)], seed=key(epoch, _KEY_FILES)))
        files = tf.data.Dataset.from_tensor_slices(tf.gather(path_tensor, order))
        return files.interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=_READ_BUFFER),
            cycle_length=min(len(paths), _CYCLE), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )

    def kept(records: tf.data.Dataset) -> tf.data.Dataset:
        # vectorised: parse only the labels of a block of records, drop the others
        def select(block: tf.Tensor) -> tf.Tensor:
            labels = tf.io.parse_example(block, schema.parse_spec(["label"]))["label"]
            return tf.boolean_mask(block, tf.reduce_any(tf.equal(labels[:, None], keep[None, :]), axis=1))

        return records.batch(1024).map(select).unbatch()

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        records = read(epoch)
        if keep is not None:
            records = kept(records)
        if subset is not None:
            records = records.filter(lambda s: in_subset(schema.decode(s[None], ["id"])["id"][0], *subset))
        if shuffle:
            shuffle_key = key(epoch, _KEY_SHUFFLE)
            records = (
                records.batch(window).enumerate()
                .map(lambda w, block: tf.random.experimental.stateless_shuffle(
                    block, seed=tf.random.experimental.stateless_fold_in(shuffle_key, w)))
                .unbatch()
            )
        batches = records.batch(batch_size, drop_remainder=drop_remainder).enumerate()
        return batches.map(lambda i, serialized: (epoch, i, serialized))

    def process(epoch: tf.Tensor, index: tf.Tensor, serialized: tf.Tensor) -> dict:
        batch = schema.decode(serialized, names)
        for name in image_fields:
            batch[name] = apply_normalisation(batch[name], specs[name])
        if augment and image_fields:
            seed_ = tf.random.experimental.stateless_fold_in(key(epoch, _KEY_AUGMENT), index)
            batch.update(augment_batch({n: batch[n] for n in image_fields}, augment, seed_))
        return batch

    last = _NO_END if repeat else first_epoch + 1
    dataset = tf.data.Dataset.range(first_epoch, last).flat_map(one_epoch)
    dataset = dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def split_count(info: DatasetInfo, split: str, classes: Sequence[str] | None = None) -> int:
    """Records of `split`, or of its records whose class is in `classes` (the manifest's per-class counts).

    A class the dataset lacks, or a selection with no record in the split, is a one-line LensnetError.
    """
    if classes is None:
        return info.counts[split]
    if isinstance(classes, str):
        raise LensnetError(f"classes must be a list of class names, got the string {classes!r}")
    missing = [c for c in classes if c not in info.class_names]
    if missing or not classes:
        raise LensnetError(f"dataset {info.path} has no class '{missing[0] if missing else ''}'; classes: "
                           f"{', '.join(info.class_names) or 'none (unlabelled)'}")
    per_class = info.manifest["splits"].get(split, {}).get("per_class")
    if not isinstance(per_class, dict):
        raise LensnetError(f"{info.path / MANIFEST_NAME}: split '{split}' has no per_class counts to select classes by")
    count = sum(int(per_class.get(c, 0)) for c in classes)
    if count == 0:
        raise LensnetError(f"dataset {info.path}: split '{split}' holds no record of class {', '.join(classes)}")
    return count
SUBSET_BUCKETS = 1 << 30


def in_subset(record_id: tf.Tensor, fraction: float, subset_seed: int) -> tf.Tensor:
    """Whether a record belongs to the `fraction` subset of seed `subset_seed`: a fingerprint of
    "seed:id" below fraction x buckets. It depends on the id alone (not on shards or order), and the
    subsets of one seed are nested: every record of a smaller fraction is in each larger one."""
    bucket = tf.strings.to_hash_bucket_fast(tf.strings.join([str(int(subset_seed)), ":", record_id]),
                                            SUBSET_BUCKETS)
    return bucket < int(round(float(fraction) * SUBSET_BUCKETS))


def subset_ids(info: DatasetInfo, split: str, fraction: float, subset_seed: int,
               classes: Sequence[str] | None = None) -> list[str]:
    """The ids of the records of `split` in the (fraction, subset_seed) subset (of `classes` only, when
    given), in file order."""
    ids = []
    for batch in load(info, split, batch_size=4096, fields=("id",), shuffle=False, normalise="none",
                      subset=(fraction, subset_seed), classes=classes):
        ids.extend(v.decode() for v in batch["id"].numpy())
    return ids


def reader_error(exc: BaseException, info: DatasetInfo | str | os.PathLike) -> LensnetError:
    """Turn a TF error raised while iterating `load(...)` (damaged shard) into a one-line LensnetError.

    Callers that iterate (training, evaluation) wrap their loop: `except tf.errors.OpError as e:
    raise reader_error(e, info) from None`.
    """
    path = info.path if isinstance(info, DatasetInfo) else Path(info)
    damaged = _find_damaged_shard(info) if isinstance(info, DatasetInfo) else None
    if damaged is not None:
        return damaged
    message = getattr(exc, "message", None) or str(exc)
    first = " ".join(message.strip().splitlines()[0].split()) if message.strip() else type(exc).__name__
    # TF wraps the useful part ("truncated record at 17790") in function-node and op decorations.
    first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first)
    first = re.sub(r"\s*\[Op:[^\]]*\].*$", "", first).strip() or type(exc).__name__
    return LensnetError(
        f"reading dataset {path} failed: {first[:300]} (run `python -m lensnet.data check {path}` to find the shard)"
    )



def _find_damaged_shard(info: DatasetInfo) -> LensnetError | None:
    """TF's reader errors do not name the file: scan the record checksums of every shard for it."""
    from lensnet.data.tfrecord import CorruptShard, iter_records

    for split in info.counts:
        for shard in info.manifest["splits"][split]["shards"]:
            try:
                for _ in iter_records(info.path / shard["file"]):
                    pass
            except CorruptShard as exc:
                return LensnetError(f"reading dataset {info.path} failed: {exc}")
            except LensnetError:
                continue
    return None
