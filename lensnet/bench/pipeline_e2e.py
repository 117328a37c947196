"""End-to-end pipeline speed and detection: tiles/s of `lensnet.pipeline` over synthetic survey images with
injected lenses, and the recall/precision of those lenses at the threshold.

Detections of tiles that saw the same object merge (their brightest spots within a quarter tile) and are
cut again around it; lenses are injected at least two tiles apart by default (`--spacing`).

The survey images, the lenses and the stand-in "peak finder" come from lensnet.survey.synthetic (the finder
is not trained: the figures measure the pipeline, not a model). `--finder` times a real export instead.
The classifier is a scratch cnn_small export (random weights) unless `--classifier` is given. Cases:
finder alone; finder + classifier; finder + classifier + interpretation (integrated gradients and Grad-CAM
of each candidate). Time is the pipeline's run over all images (models already loaded), files included.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

SUMMARY = "lensnet.pipeline tiles/s on synthetic survey images + recall/precision of injected lenses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=4, help="synthetic survey images (default 4)")
    parser.add_argument("--image-size", type=int, default=256, help="survey image side in px (default 256)")
    parser.add_argument("--tile-size", type=int, default=32, help="finder input side in px (default 32)")
    parser.add_argument("--overlap", type=int, default=8, help="tile overlap in px (default 8)")
    parser.add_argument("--lenses", type=int, default=6, help="lenses injected per image (default 6)")
    parser.add_argument("--spacing", type=int, default=None,
                        help="minimum px between lenses (default two tiles: real lenses are rarer still)")
    parser.add_argument("--amplitude", type=float, default=12.0, help="lens peak / noise sigma (default 12)")
    parser.add_argument("--threshold", type=float, default=0.5, help="finder threshold (default 0.5)")
    parser.add_argument("--finder", default=None, help="a finder export to time instead of the peak finder")
    parser.add_argument("--classifier", default=None, help="a classifier export (default: scratch cnn_small)")
    parser.add_argument("--runtime", choices=("onnx", "tf"), default="onnx")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: runtime's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of images, lens positions and weights")


def run(args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from lensnet.bench.infer import scratch_run
    from lensnet.serving.export import export_run
    from lensnet.serving.inputs import InputOptions
    from lensnet.survey.run import Pipeline, Settings
    from lensnet.survey.stages import open_stage
    from lensnet.survey.synthetic import (
        lens_positions,
        peak_finder_run,
        recall_precision,
        survey_header,
        survey_image,
        write_survey_fits,
    )

    size = args.image_size
    rows = []
    with tempfile.TemporaryDirectory(prefix="lensnet-bench-pipeline-") as tmp:
        base = Path(tmp)
        finder_dir = args.finder
        if finder_dir is None:
            export_run(peak_finder_run(base / "run_finder", args.tile_size), base / "export" / "finder")
            finder_dir = str(base / "export" / "finder")
        classifier_dir = args.classifier
        if classifier_dir is None:
            run_dir = scratch_run(base / "run_classifier", "cnn_small", (args.tile_size, args.tile_size, 1), args.seed)
            export_run(run_dir, base / "export" / "classifier")
            classifier_dir = str(base / "export" / "classifier")
        truths: dict[str, list[tuple[int, int]]] = {}
        items = []
        for i in range(args.images):
            positions = lens_positions(size, size, args.lenses, seed=args.seed + i,
                                       spacing=args.spacing or 2 * args.tile_size)
            image = survey_image(size, size, positions, seed=args.seed + 100 + i, amplitude=args.amplitude)
            path = write_survey_fits(base / "tiles" / f"tile{i:03d}.fits", image, survey_header(size, size))
            truths[str(path)] = positions
            items.append(("fits", path))
        finder = open_stage("finder", finder_dir, args.runtime, args.threads)
        classifier = open_stage("classifier", classifier_dir, args.runtime, args.threads)
        cases = [("finder", [finder], []), ("finder+classifier", [finder, classifier], []),
                 ("finder+classifier+interpret", [finder, classifier], ["integrated_gradients", "gradcam"])]
        for name, stages, methods in cases:
            out = base / f"results-{name}"
            settings = Settings(inputs=[str(p) for _, p in items], threshold=args.threshold, overlap=args.overlap,
                                merge_radius=args.tile_size / 4, methods=methods)
            pipeline = Pipeline(stages, settings, out, InputOptions(), progress=False)
            start = time.perf_counter()
            totals = pipeline.run(items)
            seconds = time.perf_counter() - start
            with open(out / "candidates.csv", newline="") as handle:
                found = list(csv.DictReader(handle))
            right, hits, boxes_total = 0.0, 0, 0
            for source, positions in truths.items():
                boxes = np.array([[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in found
                                  if r["unit"] == source]).reshape(-1, 4)
                _, precision, hit = recall_precision(boxes, positions)
                hits += hit
                boxes_total += len(boxes)
                right += precision * len(boxes) if len(boxes) else 0.0
            injected = sum(len(p) for p in truths.values())
            rows.append({
                "case": name, "images": args.images, "tiles": totals["tiles"], "injected": injected,
                "candidates": totals["candidates"], "seconds": round(seconds, 2),
                "tiles_per_s": round(totals["tiles"] / seconds, 1),
                "recall": round(hits / injected, 3) if injected else None,
                "precision": round(right / boxes_total, 3) if boxes_total else None,
                "threshold": args.threshold, "runtime": args.runtime,
            })
    return rows
