"""`python -m lensnet.predict --model export/NAME INPUT... --out predictions.csv`: score image files.

INPUT is a `.npy` file (one image (H, W, C), (C, H, W) or (H, W) for one channel, or a stack with
a leading N), a FITS file (`--hdu`; 2-D image, or a (C, H, W) cube), a folder of such files
(searched recursively, sorted), or a TFRecord dataset directory (one with manifest.json; every
split, or those given with `--split`). Images are raw pixels: the exported model normalises them
as in training. The CSV has one row per image: source (file path, `path[i]` for the i-th image of
a stack, or the record id), then the columns of the model's output: the predicted class and the
class probabilities, the named values, the score, or, for a model that returns images, the path
of the .npy or FITS file holding each output image (in the units of the input pixels; written
under `--image-dir`). The CSV is written atomically: an interrupted run leaves no partial CSV.
(The library is lensnet.serving.inputs and lensnet.serving.scoring.)
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError, cli_exit
from lensnet.core.fileio import atomic_open
from lensnet.data.imagefiles import WRITE_FORMATS
from lensnet.serving.runtimes import CARD_RUNTIME, RUNTIMES

SUMMARY = "score image files or datasets with an export, to CSV"  # its line in `lensnet --help`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy / FITS files, folders, or dataset dirs")
    parser.add_argument("--model", required=True, help="export directory export/NAME")
    parser.add_argument("--version", type=int, default=None, help="model version (default: newest)")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    parser.add_argument("--runtime", choices=(CARD_RUNTIME, *RUNTIMES), default=CARD_RUNTIME,
                        help="onnx, onnx-int8 or tflite-int8 (model.int8.onnx / model.int8.tflite of an export made "
                             "with --quantize int8) or tf (SavedModel); default card: the version's card.json "
                             "runtime, else onnx")
    parser.add_argument("--batch-size", type=int, default=64, help="images per inference call (default 64)")
    parser.add_argument("--hdu", default=None, help="FITS HDU index or name (default: first image HDU)")
    parser.add_argument("--split", action="append", default=None, help="dataset split(s) to score (default: all)")
    parser.add_argument("--threshold", type=float, default=0.5, help="binary models: p >= threshold is positive")
    parser.add_argument(
        "--image-dir", default=None, help="image outputs: folder for the output files (default: OUT's name + _images)"
    )
    parser.add_argument("--image-format", choices=WRITE_FORMATS, default="npy",
                        help="image outputs: one .npy (default) or FITS file per image; a FITS input's header is "
                             "kept, with its pixel scale (CDELT/CD/PIXSCALE, CRPIX) updated for the output's size")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="report unreadable, wrongly shaped or NaN/Inf images on stderr and skip them",
    )
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read .npy files that hold pickled objects (DeepLense axion files); unpickling can "
                             "run code: only for files you trust")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: runtime's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, default=0, help="accepted for uniformity; prediction is deterministic")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise LensnetError("--batch-size must be at least 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise LensnetError("--threshold must be within [0, 1]")
    np.random.seed(args.seed % 2**32)
    from lensnet.artifacts.exports import load_export
    from lensnet.artifacts.outputs import PredictSettings
    from lensnet.serving.inputs import InputOptions, expand_inputs
    from lensnet.serving.runtimes import open_runner
    from lensnet.serving.scoring import score

    hdu = int(args.hdu) if args.hdu is not None and args.hdu.lstrip("-").isdigit() else args.hdu
    options = InputOptions(hdu=hdu, splits=args.split, batch_size=args.batch_size, skip_bad=args.skip_bad,
                           trust_pickle=args.trust_pickle)
    items = expand_inputs(args.inputs)
    exported = load_export(args.model, args.version)
    runner = open_runner(exported, args.runtime, args.threads)
    args.runtime = runner.runtime
    out = Path(args.out)
    image_dir = Path(args.image_dir) if args.image_dir else out.with_name(f"{out.stem}_images")
    settings = PredictSettings(threshold=args.threshold, image_dir=image_dir, image_format=args.image_format,
                               input_hdu=hdu)
    with atomic_open(out, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        progress = False if args.no_progress else None
        rows = score(items, exported, runner, options, writer, settings, progress)
    skipped = f", skipped {len(options.skipped)}" if options.skipped else ""
    images = f", {len(settings.written)} output images in {image_dir}" if settings.written else ""
    print(
        f"wrote {rows} predictions to {args.out} ({exported.name} version {exported.version}, "
        f"runtime {args.runtime}{skipped}{images})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
