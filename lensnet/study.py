"""`python -m lensnet.study`: scientific studies over lensnet's stages.

    python -m lensnet.study detectability --dataset model_ii --knob f_sub --grid 0.0025,0.005,0.01,0.02,0.05 \
        --num 3000 --model cnn_small --epochs 10 --name fsub_model_ii --seed 0

detectability: sweep one physics knob (f_sub, m_min, m_hm, vortex_mass, exposure_time), simulate a dataset and
train the same model for the same budget at every value, and write test ROC AUC (CDM vs no_sub, axion
vs no_sub, 95% bootstrap intervals) as a table and a plot under runs/studies/<name>/. A killed study
continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lensnet.core.errors import cli_exit

SUMMARY = "scientific studies: detection limits against a physics knob"  # its line in `lensnet --help`


def build_parser() -> argparse.ArgumentParser:
    from lensnet.studies.detectability import KNOBS, STUDIES_DIR

    parser = argparse.ArgumentParser(prog="python -m lensnet.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    det = sub.add_parser("detectability", help="test ROC AUC against one physics knob")
    det.add_argument("--knob", required=True, help="; ".join(f"{k}: {v.description}" for k, v in KNOBS.items()))
    det.add_argument("--grid", required=True, help="comma-separated knob values, e.g. 0.005,0.01,0.02")
    det.add_argument("--dataset", default="model_ii", help="dataset preset or YAML (default model_ii)")
    det.add_argument("--num", type=int, default=3000, help="images per grid point (default 3000)")
    det.add_argument("--model", default="cnn_small", help="registry model (default cnn_small)")
    det.add_argument("--epochs", type=int, default=10)
    det.add_argument("--name", help="study name (default <dataset>-<knob>)")
    det.add_argument("--studies-dir", default=str(STUDIES_DIR), help=f"parent directory (default {STUDIES_DIR})")
    det.add_argument("--data-set", action="append", default=[], metavar="KEY=VALUE",
                     help="dataset config override applied at every point (repeatable)")
    det.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE",
                     help="training config override, e.g. train.learning_rate=3e-4 (repeatable)")
    det.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    det.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lensnet.core.tfboot import quiet_import
    from lensnet.studies.detectability import StudySpec, parse_grid, run_study

    quiet_import()
    spec = StudySpec(name=args.name or f"{Path(args.dataset).stem}-{args.knob}", knob=args.knob,
                     grid=parse_grid(args.grid), dataset=args.dataset, num=args.num, model=args.model,
                     epochs=args.epochs, seed=args.seed, data_set=list(args.data_set), fit_set=list(args.fit_set),
                     bootstrap=args.bootstrap)

    def log(line: str) -> None:
        print(line, flush=True)

    root = run_study(spec, Path(args.studies_dir), log)
    print((root / "results.csv").read_text(), end="")
    for what, name in (("table", "results.csv"), ("plot", "detectability.png"), ("points", "points/")):
        print(f"  {what:6s} {root / name}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    cli_exit(main)
