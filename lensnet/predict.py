"""`python -m lensnet.predict --model export/NAME INPUT... --out predictions.csv`: score image files.

INPUT is a `.npy` file (one image (H, W, C), (C, H, W) or (H, W) for one channel, or a stack with
a leading N), a FITS file (`--hdu`; 2-D image, or a (C, H, W) cube), a folder of such files
(searched recursively, sorted), or a TFRecord dataset directory (one with manifest.json; every
split, or those given with `--split`). Images are raw pixels: the exported model normalises them
as in training. The CSV has one row per image: source (file path, `path[i]` for the i-th image of
a stack, or the record id), the predicted class or value, and the class probabilities. It is
written atomically: an interrupted run leaves no partial CSV.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.errors import LensnetError, cli_exit
from lensnet.fileio import atomic_open
from lensnet.inference import RUNTIMES, ExportedModel, Runner, as_image_batch, finite_mask, interpret

NPY_SUFFIXES = (".npy",)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")


@dataclass
class Chunk:
    """Images (N, H, W, C) float32 and the name of each."""

    sources: list[str]
    images: np.ndarray


@dataclass
class Options:
    hdu: int | str | None = None
    splits: list[str] | None = None
    batch_size: int = 64
    skip_bad: bool = False
    skipped: list[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        """A bad input: an error, or with --skip-bad a warning and the input is skipped."""
        if not self.skip_bad:
            raise LensnetError(message)
        self.skipped.append(message)
        print(f"skipped: {message}", file=sys.stderr)


# ---- inputs ----------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*FITS_SUFFIXES, *NPY_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return ""


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
                if p.is_file() and _suffix(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise LensnetError(f"{path}: folder holds no .npy or FITS files")
            items += [("fits" if _suffix(p) in FITS_SUFFIXES else "npy", p) for p in found]
        elif path.is_file():
            suffix = _suffix(path)
            if not suffix:
                raise LensnetError(
                    f"{path}: unsupported input type; give .npy, .fits (.fit, .fts, .gz) files, "
                    "folders of them, or a TFRecord dataset directory"
                )
            items.append(("fits" if suffix in FITS_SUFFIXES else "npy", path))
        else:
            raise LensnetError(f"input not found: {path}")
    return items


def _is_stack(shape: tuple, expected: tuple[int, int, int]) -> bool:
    h, w, c = expected
    return shape not in {(h, w, c), (c, h, w), (h, w)}


def read_npy(path: Path, expected: tuple[int, int, int], options: Options) -> Iterator[Chunk]:
    try:
        # allow_pickle=False: a .npy holding Python objects could run code when unpickled.
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        options.bad(f"{path}: cannot read as .npy ({' '.join(str(exc).split())[:200]})")
        return
    yield from _chunks(str(path), array, expected, options)


def _select_hdu(hdus: object, path: Path, hdu: int | str | None) -> object:
    if hdu is not None:
        try:
            return hdus[hdu]  # type: ignore[index]
        except (IndexError, KeyError):
            names = [f"{i}:{h.name}" for i, h in enumerate(hdus)]  # type: ignore[attr-defined]
            raise LensnetError(f"{path}: no HDU {hdu!r}; HDUs: {', '.join(names)}") from None
    for candidate in hdus:  # type: ignore[attr-defined]
        if candidate.is_image and candidate.data is not None and candidate.data.ndim >= 2:
            return candidate
    raise LensnetError(f"{path}: no image HDU with data (give --hdu)")


def read_fits(path: Path, expected: tuple[int, int, int], options: Options) -> Iterator[Chunk]:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            hdu = _select_hdu(hdus, path, options.hdu)
            data = hdu.data  # type: ignore[attr-defined]
            if data is None:
                raise LensnetError(f"{path}: HDU {options.hdu!r} holds no data")
            array = np.array(data)  # astropy applies BSCALE/BZERO; copy out before the file closes
    except LensnetError as exc:
        options.bad(str(exc))
        return
    except (OSError, ValueError, TypeError) as exc:
        options.bad(f"{path}: cannot read as FITS ({' '.join(str(exc).split())[:200]})")
        return
    yield from _chunks(str(path), array, expected, options)


def _chunks(name: str, array: np.ndarray, expected: tuple[int, int, int], options: Options) -> Iterator[Chunk]:
    try:
        stacked = _is_stack(tuple(array.shape), expected)
        batch = as_image_batch(array, expected, name)
    except LensnetError as exc:
        options.bad(str(exc))
        return
    sources = [f"{name}[{i}]" for i in range(len(batch))] if stacked else [name]
    for start in range(0, len(batch), options.batch_size):
        stop = start + options.batch_size
        yield Chunk(sources[start:stop], batch[start:stop])


def read_dataset(path: Path, expected: tuple[int, int, int], options: Options) -> Iterator[Chunk]:
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
        batches = load(
            info, split, batch_size=options.batch_size, fields=["id", field_name], normalise="none", shuffle=False
        )
        try:
            for batch in batches:
                ids = [v.decode("utf-8", "replace") for v in batch["id"].numpy()]
                yield Chunk(ids, batch[field_name].numpy())
        except tf.errors.OpError as exc:
            raise reader_error(exc, info) from None


READERS = {"npy": read_npy, "fits": read_fits, "dataset": read_dataset}


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
                shape = tuple(np.load(path, allow_pickle=False, mmap_mode="r").shape)
                total += shape[0] if _is_stack(shape, expected) and len(shape) > 2 else 1
            else:
                total += 1
        except (LensnetError, ValueError, OSError, EOFError):
            total += 1
    return total


# ---- scoring ---------------------------------------------------------------------------------------


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


def score(
    items: Sequence[tuple[str, Path]],
    exported: ExportedModel,
    runner: Runner,
    options: Options,
    writer: Any,  # a csv.writer
    threshold: float = 0.5,
    progress: bool | None = None,
) -> int:
    """Score every image of `items`, writing the header and one CSV row per image; returns rows written."""
    from lensnet.progress import Progress

    expected = exported.input_shape

    def chunks() -> Iterator[Chunk]:
        for kind, path in items:
            yield from READERS[kind](path, expected, options)

    written = 0
    header_done = False
    total = count_images(items, expected, options.splits)
    with Progress(total, "predict", "img", enabled=progress) as bar:
        for chunk in rebatch(chunks(), options.batch_size):
            ok = finite_mask(chunk.images)
            for index in np.flatnonzero(~ok):
                options.bad(f"{chunk.sources[index]}: image contains NaN or Inf pixels (--skip-bad skips such images)")
            sources = [s for s, good in zip(chunk.sources, ok) if good]
            bar.update(len(chunk.sources))
            if not sources:
                continue
            outputs = runner(np.ascontiguousarray(chunk.images[ok]))
            predicted, columns, probs = interpret(outputs, exported, threshold)
            if not header_done:
                first = "predicted" if exported.output_kind != "regression" else exported.columns[0]
                writer.writerow(["source", first, *columns])
                header_done = True
            for i, source in enumerate(sources):
                value = predicted[i] if isinstance(predicted[i], str) else format(predicted[i], ".7g")
                writer.writerow([source, value, *(format(float(p), ".6g") for p in probs[i])])
            written += len(sources)
    if not header_done:
        first = "predicted" if exported.output_kind != "regression" else exported.columns[0]
        writer.writerow(["source", first])
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy / FITS files, folders, or dataset dirs")
    parser.add_argument("--model", required=True, help="export directory export/NAME")
    parser.add_argument("--version", type=int, default=None, help="model version (default: newest)")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="onnx (default) or tf (SavedModel)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per inference call (default 64)")
    parser.add_argument("--hdu", default=None, help="FITS HDU index or name (default: first image HDU)")
    parser.add_argument("--split", action="append", default=None, help="dataset split(s) to score (default: all)")
    parser.add_argument("--threshold", type=float, default=0.5, help="binary models: p >= threshold is positive")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="report unreadable, wrongly shaped or NaN/Inf images on stderr and skip them",
    )
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: runtime's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, default=0, help="accepted for uniformity; prediction is deterministic")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise LensnetError("--batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise LensnetError("--threshold must be within [0, 1]")
    np.random.seed(args.seed % 2**32)
    from lensnet.inference import load_export, open_runner

    hdu = int(args.hdu) if args.hdu is not None and args.hdu.lstrip("-").isdigit() else args.hdu
    options = Options(hdu=hdu, splits=args.split, batch_size=args.batch_size, skip_bad=args.skip_bad)
    items = expand_inputs(args.inputs)
    exported = load_export(args.model, args.version)
    runner = open_runner(exported, args.runtime, args.threads)
    with atomic_open(args.out, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        progress = False if args.no_progress else None
        rows = score(items, exported, runner, options, writer, args.threshold, progress)
    skipped = f", skipped {len(options.skipped)}" if options.skipped else ""
    print(
        f"wrote {rows} predictions to {args.out} ({exported.name} version {exported.version}, "
        f"runtime {args.runtime}{skipped})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
