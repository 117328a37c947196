"""`python -m lensnet.survey synth --out DIR [--seed S]`: a synthetic survey field (g, r, i FITS cube with a TAN
WCS, galaxies, stars, injected lenses, masked edges) and its truth catalogue, to try lensnet.pipeline and
lensnet.dashboard end to end (see lensnet.survey.field and docs/survey.md).

`python -m lensnet.survey peak-finder --out export/peak`: the untrained stand-in finder (a tile's brightest
pixel through a sigmoid) as a verified export, so the pipeline can be run before any model is trained.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields

from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "write a synthetic survey field with its truth catalogue"  # its line in `lensnet --help`

SPEC_HELP = {
    "size": "pixels per side", "pixel_scale": "arcsec per pixel", "ra": "field centre RA (deg)",
    "dec": "field centre Dec (deg)", "density": "galaxies per arcmin^2", "mag_min": "brightest galaxy (i mag)",
    "mag_max": "faintest galaxy (i mag)", "star_density": "stars per arcmin^2",
    "lens_rate": "injected lenses per galaxy (mean)", "fwhm_arcsec": "seeing FWHM (arcsec)",
    "depth_i": "5-sigma point-source depth in i", "edge_px": "masked (NaN) edge width (px)",
    "gap_px": "masked chip gap width (px)", "tile": "lenses keep this many px from masks and borders",
}


def main(argv: Sequence[str] | None = None) -> int:
    from lensnet.survey.field import FieldSpec

    parser = argparse.ArgumentParser(prog="python -m lensnet.survey", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    synth = sub.add_parser("synth", help="write a synthetic survey field and its truth catalogue")
    synth.add_argument("--out", required=True, help="folder for field.fits, truth.csv, field.json")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--no-progress", action="store_true")
    defaults = FieldSpec()
    for f in fields(FieldSpec):
        value = getattr(defaults, f.name)
        synth.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value,
                           help=f"{SPEC_HELP[f.name]} (default {value})")
    finder = sub.add_parser("peak-finder", help="export the untrained stand-in finder")
    finder.add_argument("--out", required=True, help="export directory (export/NAME)")
    finder.add_argument("--size", type=int, default=32, help="tile side in px (default 32)")
    finder.add_argument("--channels", type=int, default=3, help="bands (default 3: g, r, i)")
    finder.add_argument("--level", type=float, default=6.0, help="peak value scored 0.5 (default 6)")
    finder.add_argument("--seed", type=int, default=0, help="accepted for uniformity; nothing is random")
    args = parser.parse_args(argv)
    if args.seed < 0:
        raise LensnetError(f"--seed must be >= 0, got {args.seed}")
    if args.command == "synth":
        from lensnet.survey.field import make_field, write_field

        spec = FieldSpec(**{f.name: getattr(args, f.name) for f in fields(FieldSpec)})
        summary = write_field(make_field(spec, args.seed, progress=False if args.no_progress else None), args.out)
        counts = summary["counts"]
        print(f"wrote {args.out}/field.fits ({spec.size}x{spec.size} px, bands g,r,i, "
              f"{summary['area_arcmin2']:.1f} arcmin^2): {counts['galaxy']} galaxies, {counts['star']} stars, "
              f"{counts['lens']} lenses; truth in {args.out}/truth.csv", file=sys.stderr)
        return 0
    if args.size < 8 or args.channels < 1:
        raise LensnetError("--size must be at least 8 and --channels at least 1")
    import tempfile
    from pathlib import Path

    from lensnet.serving.export import export_run
    from lensnet.survey.synthetic import peak_finder_run

    with tempfile.TemporaryDirectory(prefix="lensnet-peak-finder-") as tmp:
        run = peak_finder_run(Path(tmp) / "run", args.size, args.level, channels=args.channels)
        result = export_run(run, args.out)
    print(f"exported the stand-in peak finder to {result.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow="peak-finder" in sys.argv)
