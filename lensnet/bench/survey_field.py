"""`lensnet.pipeline` end to end on a synthetic survey field (lensnet.survey.field, as `python -m lensnet.survey
synth` writes it): tiles/s, and completeness / purity against the field's truth catalogue.

A lens is found when a candidate's box holds its centre; a candidate is right when it holds a lens
(lensnet.survey.field.match_lenses). The default finder is the untrained stand-in (lensnet.survey.synthetic's
peak finder on g, r, i: the brightest pixel through a sigmoid), so completeness says what the tiling and
merging keep and purity is that of "anything bright": pass `--finder export/NAME` (a 3-band finder of the
field's tile size) for a model's figures. Cases: the default merge (by the position of what each tile saw)
and the old default, box NMS at --iou 0 (`merge=iou0`). Time is the pipeline's run (models loaded), files
included; the field is made once per seed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

SUMMARY = "lensnet.pipeline on a synthetic survey field: tiles/s, completeness/purity vs its truth catalogue"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=2048, help="field side in px (default 2048: ~47 arcmin^2)")
    parser.add_argument("--lens-rate", type=float, default=0.005, help="lenses per galaxy (default 0.005)")
    parser.add_argument("--tile-size", type=int, default=32, help="finder input side in px (default 32)")
    parser.add_argument("--overlap", type=int, default=8, help="tile overlap in px (default 8)")
    parser.add_argument("--level", type=float, default=6.0, help="stand-in finder: peak scored 0.5 (default 6)")
    parser.add_argument("--threshold", type=float, default=0.5, help="finder threshold (default 0.5)")
    parser.add_argument("--finder", default=None, help="a finder export to use instead of the stand-in")
    parser.add_argument("--methods", default="none", help="interpretation methods (default none)")
    parser.add_argument("--runtime", choices=("onnx", "tf"), default="onnx")
    parser.add_argument("--seeds", type=int, default=1, help="fields (seeds seed..seed+N-1; default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first field's seed")


def run(args: argparse.Namespace) -> list[dict]:
    import csv

    from lensnet.serving.export import export_run
    from lensnet.serving.inputs import InputOptions
    from lensnet.survey.field import FieldSpec, make_field, match_lenses, write_field
    from lensnet.survey.run import Pipeline, Settings
    from lensnet.survey.stages import open_stage
    from lensnet.survey.synthetic import peak_finder_run

    methods = [] if args.methods in ("", "none") else args.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lensnet-bench-survey-field-") as tmp:
        base = Path(tmp)
        finder_dir = args.finder
        if finder_dir is None:
            export_run(peak_finder_run(base / "run", args.tile_size, args.level, channels=3), base / "export")
            finder_dir = str(base / "export")
        finder = open_stage("finder", finder_dir, args.runtime, None)
        for seed in range(args.seed, args.seed + args.seeds):
            field = make_field(FieldSpec(size=args.size, lens_rate=args.lens_rate), seed, progress=False)
            summary = write_field(field, base / f"field{seed}")
            image = base / f"field{seed}" / "field.fits"
            for merge, iou in (("peak", None), ("iou0", 0.0)):
                out = base / f"results-{seed}-{merge}"
                settings = Settings(inputs=[str(image)], threshold=args.threshold, overlap=args.overlap, iou=iou,
                                    merge_radius=args.tile_size / 4, methods=methods)
                pipeline = Pipeline([finder], settings, out, InputOptions(), progress=False)
                start = time.perf_counter()
                totals = pipeline.run([("fits", image)])
                seconds = time.perf_counter() - start
                with open(out / "candidates.csv", newline="") as handle:
                    candidates = list(csv.DictReader(handle))
                found, right = match_lenses(field.truth, candidates)
                rows.append({
                    "seed": seed, "merge": merge, "galaxies": summary["counts"]["galaxy"],
                    "stars": summary["counts"]["star"], "lenses": len(found), "tiles": totals["tiles"],
                    "seconds": round(seconds, 2), "tiles_per_s": round(totals["tiles"] / seconds, 1),
                    "candidates": len(candidates), "found": sum(found),
                    "completeness": round(sum(found) / len(found), 3) if found else None,
                    "purity": round(sum(right) / len(candidates), 3) if candidates else None,
                    "finder": "stand-in peak finder" if args.finder is None else args.finder,
                })
    return rows
