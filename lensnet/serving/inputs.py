"""What predict scores: image files, folders of them and TFRecord datasets, as batches of raw images.

Files are read by lensnet.data.imagefiles, the reader lensnet.convert uses, so a file gets the
same answer (shape rules, HDU choice, pickle refusal, NaN handling) in both. A bad input is an
error, or with `skip_bad` a warning on stderr and the input (or the one bad image) is skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.data.imagefiles import as_image_batch, file_format, is_stack, nonfinite_pixels, npy_shape, read_image_file


@dataclass
class Chunk:
    """Images (N, H, W, C) float32 and the name of each (and, from a dataset, each record's class name)."""

    sources: list[str]
    images: np.ndarray
    class_names: list[str] | None = None


@dataclass
class InputOptions:
    hdu: int | str | None = None
    splits: list[str] | None = None
    batch_size: int = 64
    skip_bad: bool = False
    trust_pickle: bool = False
    skipped: list[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        """A bad input: an error, or with --skip-bad a warning and the input is skipped."""
        if not self.skip_bad:
            raise LensnetError(message)
        self.skipped.append(message)
        print(f"skipped: {message}", file=sys.stderr)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def expand_inputs(inputs: Sequence[str]) -> list[tuple[str, Path]]:
    """[(kind, path)] with kind "npy", "fits" or "dataset"; folders expanded recursively, sorted."""
    items: list[tuple[str, Path]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            if (path / "manifest.json").is_file():
                items.append(("dataset", path))
                continue
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and file_format(p) and not _hidden(p, path)
            )
            if not found:
                raise LensnetError(f"{path}: folder holds no .npy or FITS files")
            items += [(file_format(p), p) for p in found]
        elif path.is_file():
            kind = file_format(path)
            if not kind:
                raise LensnetError(
                    f"{path}: unsupported input type; give .npy, .fits (.fit, .fts, .gz) files, "
                    "folders of them, or a TFRecord dataset directory"
                )
            items.append((kind, path))
        else:
            raise LensnetError(f"input not found: {path}")
    return items


def read_file(path: Path, expected: tuple[int, int, int], options: InputOptions) -> Iterator[Chunk]:
    """The images of one .npy or FITS file (one image or a stack), in chunks of the batch size."""
    try:
        array, _ = read_image_file(path, hdu=options.hdu, trust_pickle=options.trust_pickle)
        stacked = is_stack(tuple(array.shape), expected)
        batch = as_image_batch(array, expected, path)
    except LensnetError as exc:
        options.bad(str(exc))
        return
    name = str(path)
    sources = [f"{name}[{i}]" for i in range(len(batch))] if stacked else [name]
    for start in range(0, len(batch), options.batch_size):
        stop = start + options.batch_size
        yield Chunk(sources[start:stop], batch[start:stop])


def read_dataset(path: Path, expected: tuple[int, int, int], options: InputOptions) -> Iterator[Chunk]:
    import tensorflow as tf

    from lensnet.data.pipeline import load, open_dataset, reader_error

    info = open_dataset(path)
    field_name = "image" if "image" in info.image_names else info.image_names[0]
    if tuple(info.schema[field_name].shape) != tuple(expected):
        raise LensnetError(
            f"{path}: dataset images have shape {tuple(info.schema[field_name].shape)}, "
            f"the model takes {tuple(expected)}"
        )
    splits = options.splits or [s for s in info.counts if info.counts[s]]
    for split in splits:
        if split not in info.counts:
            raise LensnetError(f"{path}: no split '{split}'; splits: {', '.join(info.counts)}")
        if not info.counts[split]:
            continue
        fields = ["id", field_name, *(["class_name"] if "class_name" in info.schema else [])]
        batches = load(info, split, batch_size=options.batch_size, fields=fields, normalise="none", shuffle=False)
        try:
            for batch in batches:
                ids = [v.decode("utf-8", "replace") for v in batch["id"].numpy()]
                names = [v.decode("utf-8", "replace") for v in batch["class_name"].numpy()] if (
                    "class_name" in batch) else None
                yield Chunk(ids, batch[field_name].numpy(), names)
        except tf.errors.OpError as exc:
            raise reader_error(exc, info) from None


def read_input(kind: str, path: Path, expected: tuple[int, int, int], options: InputOptions) -> Iterator[Chunk]:
    return read_dataset(path, expected, options) if kind == "dataset" else read_file(path, expected, options)


def count_images(items: Sequence[tuple[str, Path]], expected: tuple[int, int, int], splits: list[str] | None) -> int:
    """Images the inputs hold, from headers only (for the progress bar; bad files count as 1)."""
    total = 0
    for kind, path in items:
        try:
            if kind == "dataset":
                from lensnet.data.pipeline import open_dataset

                counts = open_dataset(path).counts
                total += sum(n for s, n in counts.items() if splits is None or s in splits)
            elif kind == "npy":
                shape = npy_shape(path)
                total += shape[0] if shape and len(shape) > 2 and is_stack(shape, expected) else 1
            else:
                total += 1
        except (LensnetError, ValueError, OSError, EOFError):
            total += 1
    return total


def rebatch(chunks: Iterator[Chunk], batch_size: int) -> Iterator[Chunk]:
    """Regroup chunks of any size (one per small file) into batches of `batch_size`."""
    sources: list[str] = []
    images: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        sources += chunk.sources
        images.append(chunk.images)
        held += len(chunk.sources)
        while held >= batch_size:
            stacked = np.concatenate(images)
            yield Chunk(sources[:batch_size], stacked[:batch_size])
            sources, images, held = sources[batch_size:], [stacked[batch_size:]], held - batch_size
    if held:
        yield Chunk(sources, np.concatenate(images))


def finite_images(chunk: Chunk, options: InputOptions) -> Chunk:
    """The chunk less its images with NaN or Inf pixels (each one an error, or skipped with --skip-bad)."""
    bad = [nonfinite_pixels(image) for image in chunk.images]
    for source, count in zip(chunk.sources, bad):
        if count:
            options.bad(f"{source}: image has {count} NaN or Inf pixel(s) (--skip-bad skips such images)")
    keep = np.array([count == 0 for count in bad], dtype=bool)
    return Chunk([s for s, k in zip(chunk.sources, keep) if k], np.ascontiguousarray(chunk.images[keep]))
