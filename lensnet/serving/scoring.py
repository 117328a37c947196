"""predict's scoring loop: batches of raw images -> a runtime -> CSV rows (and image files) through
the export's output spec, so a new output kind needs no change here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lensnet.artifacts.exports import ExportedModel
from lensnet.artifacts.outputs import PredictSettings
from lensnet.serving.inputs import Chunk, InputOptions, count_images, finite_images, read_input, rebatch
from lensnet.serving.runtimes import Runner


def score(
    items: Sequence[tuple[str, Path]],
    exported: ExportedModel,
    runner: Runner,
    options: InputOptions,
    writer: Any,  # a csv.writer
    settings: PredictSettings | None = None,
    progress: bool | None = None,
) -> int:
    """Score every image of `items`, writing the header and one CSV row per image; returns rows written."""
    from lensnet.core.progress import Progress

    settings = settings or PredictSettings()
    spec = exported.spec
    kind = spec.handler
    expected = exported.input_shape

    def chunks() -> Iterator[Chunk]:
        for item_kind, path in items:
            yield from read_input(item_kind, path, expected, options)

    writer.writerow(["source", *kind.csv_header(spec)])
    written = 0
    total = count_images(items, expected, options.splits)
    with Progress(total, "predict", "img", enabled=progress) as bar:
        for chunk in rebatch(chunks(), options.batch_size):
            bar.update(len(chunk.sources))
            good = finite_images(chunk, options)
            if not good.sources:
                continue
            outputs = runner(good.images)
            for source, cells in zip(good.sources, kind.csv_rows(spec, outputs, good.sources, settings)):
                writer.writerow([source, *cells])
            written += len(good.sources)
    return written
