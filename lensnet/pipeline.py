"""`python -m lensnet.pipeline INPUT... --finder export/A [--classifier export/B] --out RESULTS`: find, classify
and explain lens candidates.

INPUT is what predict reads (.npy / FITS cutouts or stacks, folders of them, a TFRecord dataset directory),
or a FITS/.npy image larger than the finder's input (a survey tile), cut into tiles of the finder's size
overlapping by --overlap pixels; a FITS header's WCS gives each candidate's RA/Dec. The finder scores every
tile; tiles at or above --threshold (at most --top-k per input and overall) are merged where they saw the same
object (their brightest spots within --merge-radius; or box NMS with --iou) and go on to the classifier,
regressor and anomaly scorer, then to interpretation (integrated
gradients from the SavedModel; Grad-CAM and attention rollout from a Keras model beside the export or the
run checkpoint its card names; see lensnet.survey.interpret). RESULTS gets candidates.csv,
thumbnails, overlays, maps and pipeline.json (see lensnet.survey.run). A rerun with the same arguments resumes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lensnet.core.errors import LensnetError, cli_exit
from lensnet.serving.runtimes import RUNTIMES
from lensnet.survey.interpret import METHODS
from lensnet.survey.tiles import FILL_RULES

SUMMARY = "find, classify and explain lens candidates in survey images"  # its line in `lensnet --help`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="cutouts, folders, datasets or survey images")
    parser.add_argument("--finder", required=True, help="export of a lens finder (binary probability or score)")
    parser.add_argument("--classifier", default=None, help="export of a classifier run on candidates")
    parser.add_argument("--regressor", default=None, help="export of a regressor run on candidates")
    parser.add_argument("--anomaly", default=None, help="export of an anomaly scorer run on candidates")
    parser.add_argument("--out", required=True, help="results folder")
    parser.add_argument("--threshold", type=float, default=0.5, help="finder score a candidate needs (default 0.5)")
    parser.add_argument("--top-k", type=int, default=None, help="keep at most K candidates (per input and overall)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: a quarter tile)")
    parser.add_argument("--merge-radius", type=float, default=None,
                        help="detections whose tiles' brightest spots lie within this many px are one candidate "
                             "(default: a quarter tile; two lenses a tile apart stay two)")
    parser.add_argument("--iou", type=float, default=None,
                        help="merge by box overlap instead: detections overlapping by more than this IoU merge")
    parser.add_argument("--fill-nonfinite", choices=FILL_RULES, default="median",
                        help="NaN/Inf pixels: the tile's finite median per channel (default), zero, or error")
    parser.add_argument("--max-blank", type=float, default=0.5,
                        help="tiles with more than this fraction of NaN/Inf pixels are not searched")
    parser.add_argument("--explain", choices=("finder", "classifier", "regressor", "anomaly"), default="classifier",
                        help="which stage's model the maps explain (default classifier, else the finder)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"interpretation methods, comma separated ({', '.join(METHODS)}), or none")
    parser.add_argument("--labels", default=None, help="CSV source,label of known truths (shown by the dashboard)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="onnx (default) or tf (SavedModel)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hdu", default=None, help="FITS HDU index or name (default: first image HDU)")
    parser.add_argument("--split", action="append", default=None, help="dataset split(s) (default: all)")
    parser.add_argument("--skip-bad", action="store_true", help="report bad inputs on stderr and skip them")
    parser.add_argument("--restart", action="store_true", help="discard finished units of an earlier run in --out")
    parser.add_argument("--threads", type=int, default=None, help="inference threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="accepted for uniformity; the pipeline is deterministic")
    args = parser.parse_args(argv)
    if args.threshold != args.threshold:
        raise LensnetError("--threshold must be a number")
    if args.top_k is not None and args.top_k < 1:
        raise LensnetError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise LensnetError("--batch-size must be at least 1")
    methods = [] if args.methods.strip() in ("", "none") else [m.strip() for m in args.methods.split(",")]

    from lensnet.serving.inputs import InputOptions, expand_inputs
    from lensnet.survey.run import Pipeline, Settings, report
    from lensnet.survey.stages import check_finder, check_inputs, open_stage

    stages = [open_stage(name, getattr(args, name), args.runtime, args.threads)
              for name in ("finder", "classifier", "regressor", "anomaly") if getattr(args, name)]
    check_finder(stages[0])
    size = check_inputs(stages)
    overlap = size[0] // 4 if args.overlap is None else args.overlap
    if not 0 <= overlap < min(size[:2]):
        raise LensnetError(f"--overlap must be within [0, {min(size[:2])}) for {size[0]}x{size[1]} tiles")
    merge_radius = size[0] / 4 if args.merge_radius is None else args.merge_radius
    if not merge_radius >= 0:
        raise LensnetError("--merge-radius must be a number >= 0")
    if args.iou is not None and not 0 <= args.iou <= 1:
        raise LensnetError("--iou must be within [0, 1]")
    hdu = int(args.hdu) if args.hdu is not None and args.hdu.lstrip("-").isdigit() else args.hdu
    items = expand_inputs(args.inputs)
    settings = Settings(
        inputs=[str(p) for _, p in items], threshold=args.threshold, top_k=args.top_k, overlap=overlap,
        iou=args.iou, merge_radius=merge_radius, fill_nonfinite=args.fill_nonfinite, max_blank=args.max_blank,
        methods=methods,
        explain=args.explain, hdu=hdu, batch_size=args.batch_size, labels=args.labels, seed=args.seed,
    )
    options = InputOptions(hdu=hdu, splits=args.split, batch_size=args.batch_size, skip_bad=args.skip_bad)
    pipeline = Pipeline(stages, settings, Path(args.out), options, False if args.no_progress else None)
    totals = pipeline.run(items, restart=args.restart)
    report(totals, Path(args.out))
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
