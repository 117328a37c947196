"""Simulations that never repeat: training records simulated on the fly, streamed into tf.data.

`data.source: simulate` trains on records the dataset's own simulator (its manifest's resolved config and
seed) makes while training runs, in a pool of worker processes; validation and test still read the
written dataset. The simulator is rebuilt from the manifest's `generator` (`STREAM_SOURCES`:
lensnet.simulate presets and the toy `BlobSource`). Batch k of the stream (k = epoch * steps_per_epoch +
step, counted from the run's start) holds the records of global indices start + k * B ... start + (k + 1) *
B - 1, each simulated from its per-record seed exactly as the writer makes record `index` of a training
split that begins at `start`: so the stream is deterministic per seed, epoch and step, resumes at any epoch, and
with start 0 it is byte for byte the written training split. The default start is the dataset's record
count, so no streamed record is one of the dataset's own (its validation and test lenses included).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lensnet.core.errors import LensnetError
from lensnet.data.synthetic import BLOBS_GENERATOR, BlobSource
from lensnet.data.writer import ShardPlan

_END = 2**62
_SOURCE: Any = None  # the worker process's simulator


def _simulation_source(config: dict, seed: int) -> Any:
    from lensnet.simulate.source import SimulationSource

    return SimulationSource(config, seed)


# manifest `generator` -> the RecordSource it wrote with, rebuilt from the manifest's config and seed
STREAM_SOURCES: dict[str, Callable[[dict, int], Any]] = {
    "lensnet.simulate": _simulation_source,
    BLOBS_GENERATOR: BlobSource.from_config,
}
# toy datasets written before write_blobs recorded its generator: (kind, name) -> generator
_UNNAMED_GENERATORS = {("synthetic", "blobs"): BLOBS_GENERATOR}


def stream_source(info: Any) -> Any:
    """The RecordSource that wrote dataset `info` (its manifest's generator, config and seed)."""
    manifest = info.manifest
    generator = manifest.get("generator") or _UNNAMED_GENERATORS.get((manifest.get("kind"), manifest.get("name")))
    if generator not in STREAM_SOURCES or not isinstance(manifest.get("config"), dict):
        raise LensnetError(f"data.source simulate: {info.path} was written by {generator or 'an unnamed generator'}, "
                           f"not by a simulator lensnet can stream from ({', '.join(STREAM_SOURCES)}); "
                           "use data.source records")
    try:
        return STREAM_SOURCES[generator](manifest["config"], int(manifest["seed"]))
    except (KeyError, TypeError, ValueError) as exc:  # a manifest edited by hand or by an older writer
        raise LensnetError(f"data.source simulate: {info.path}: the manifest's config or seed cannot rebuild "
                           f"{generator} ({type(exc).__name__}: {exc})") from None


def _init(source: Any) -> None:
    global _SOURCE
    source.setup()
    _SOURCE = source


def _run(plan: ShardPlan, start: int, stop: int) -> list[bytes]:
    return _SOURCE.records(plan, start, stop).serialized


def record_batches(source: Any, start: int, batch_size: int, first_batch: int = 0, workers: int = 1,
                   ahead: int | None = None) -> Iterator[list[bytes]]:
    """Serialized batches first_batch, first_batch + 1, ... of the stream beginning at record `start`, in order.

    `workers` > 1 simulates in that many spawned processes, `ahead` batches in flight (default 2 per
    worker): a bounded window, never the whole endless stream queued at once.
    """
    if start < 0 or batch_size < 1 or first_batch < 0 or workers < 1:
        raise LensnetError(f"simulation stream: need start >= 0, batch_size >= 1, workers >= 1; got start {start}, "
                           f"batch_size {batch_size}, workers {workers}")
    plan = ShardPlan("train", 0, 1, start, _END, start)  # classes cycle from the stream's first record
    ranges = ((start + k * batch_size, start + (k + 1) * batch_size) for k in itertools.count(first_batch))
    if workers == 1:
        _init(source)
        for lo, hi in ranges:
            yield _run(plan, lo, hi)
        return
    pool = mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(source,))
    try:
        pending: collections.deque = collections.deque()
        for lo, hi in ranges:
            pending.append(pool.apply_async(_run, (plan, lo, hi)))
            if len(pending) >= (ahead or 2 * workers):
                yield pending.popleft().get()
    finally:
        pool.terminate()


def simulated_dataset(info: Any, *, start: int | None, batch_size: int, first_batch: int, workers: int,
                      fields: Sequence[str], normalise: Any) -> Any:
    """tf.data batches of decoded, normalised records from the stream (endless), like `lensnet.data.load`'s."""
    import numpy as np
    import tensorflow as tf

    from lensnet.data.normalise import apply_normalisation
    from lensnet.data.pipeline import normalisation_specs

    source = stream_source(info)
    if source.schema.to_json() != info.schema.to_json():
        raise LensnetError(f"data.source simulate: the simulator of {info.path} now writes other fields than the "
                           "dataset holds (a lensnet upgrade?); re-simulate the dataset")
    first = int(sum(info.counts.values()) if start is None else start)
    schema, names = info.schema, list(fields)
    image_fields = [n for n in names if schema[n].kind == "image"]
    specs = normalisation_specs(normalise, info, image_fields)

    def generate() -> Iterator[np.ndarray]:
        for serialized in record_batches(source, first, batch_size, first_batch, workers):
            yield np.asarray(serialized, dtype=object)

    def process(serialized: tf.Tensor) -> dict:
        batch = schema.decode(serialized, names)
        for name in image_fields:
            batch[name] = apply_normalisation(batch[name], specs[name])
        return batch

    dataset = tf.data.Dataset.from_generator(generate, output_signature=tf.TensorSpec([None], tf.string))
    return dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
