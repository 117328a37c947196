"""`python -m lensnet.study`: scientific studies over lensnet's stages.

    python -m lensnet.study detectability --dataset model_ii --knob f_sub --grid 0.0025,0.005,0.01,0.02,0.05 \
        --num 3000 --model cnn_small --epochs 10 --name fsub_model_ii --seed 0

detectability: sweep one physics knob (f_sub, m_min, m_hm, vortex_mass, exposure_time), simulate a dataset and
train the same model for the same budget at every value, and write test ROC AUC (CDM vs no_sub, axion
vs no_sub, 95% bootstrap intervals) as a table and a plot under runs/studies/<name>/. A killed study
continues where it stopped when the same command is run again.

    python -m lensnet.study views --data tfrecords/ssl-m2-labelled --method simclr --epochs 3 --name views_m2

views: pretrain once per self-supervised view (crop, symmetry, shift, blur, noise, flux; none; the
task's defaults) with only that view on, and score the embedding by k-NN and linear-probe accuracy
and macro ROC AUC on the test split (labels for scoring only): runs/studies/<name>/results.csv.

    python -m lensnet.study population --run runs/POSTERIOR --target f_sub --mean 0.02 --width 0.005 --seed 0

population: draw populations of N held-out lenses with a known mean of a target (rejection sampling on
their true values), combine the run's per-lens posteriors hierarchically (importance-reweighting its
NPE prior to the population), and forecast the population posterior's width and coverage per N under
runs/studies/<name>/ (forecast.csv, forecast.png, population.json).
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

    from lensnet.studies.views import VIEWS

    views = sub.add_parser("views", help="k-NN / linear-probe score of the embedding each SSL view yields")
    views.add_argument("--data", required=True, help="a labelled dataset (labels score the embedding only)")
    views.add_argument("--views", default=",".join(VIEWS), help=f"comma-separated among {', '.join(VIEWS)}")
    views.add_argument("--method", default="simclr", help="simclr, byol or dino")
    views.add_argument("--model", default="cnn_small")
    views.add_argument("--epochs", type=int, default=3)
    views.add_argument("--batch-size", type=int, default=64)
    views.add_argument("--name", help="study name (default views-<data>-<method>)")
    views.add_argument("--studies-dir", default=str(STUDIES_DIR), help=f"parent directory (default {STUDIES_DIR})")
    views.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE",
                       help="pretraining config override, e.g. model.args.filters=[8,16] (repeatable)")
    views.add_argument("--bootstrap", type=int, default=1000)
    views.add_argument("--seed", type=int, default=0)

    pop = sub.add_parser("population", help="hierarchical inference of a population mean from per-lens posteriors")
    pop.add_argument("--run", required=True, help="a finished --task posterior run")
    pop.add_argument("--target", required=True, help="one of the run's targets")
    pop.add_argument("--mean", type=float, required=True, help="the population's true mean")
    pop.add_argument("--width", type=float, required=True, help="the population's (known) width")
    pop.add_argument("--data", help="dataset of the held-out lenses (default: the run's own)")
    pop.add_argument("--split", default="test")
    pop.add_argument("--n", help="comma-separated lens counts (default 10,30,100,300,1000 capped at the pool)")
    pop.add_argument("--repeats", type=int, default=50,
                     help="populations drawn per N, sharing no lens (default 50; fewer when the pool holds fewer "
                          "disjoint draws of N)")
    pop.add_argument("--grid", type=int, default=1000, help="grid points of the population mean (default 1000)")
    pop.add_argument("--debias", action="store_true",
                     help="divide each lens's likelihood of the population mean by its mean over the held-out "
                          "lenses (exact for uninformative per-lens posteriors; lensnet.studies.population)")
    pop.add_argument("--name", help="study name (default population-<target>)")
    pop.add_argument("--studies-dir", default=str(STUDIES_DIR), help=f"parent directory (default {STUDIES_DIR})")
    pop.add_argument("--seed", type=int, default=0)
    pop.add_argument("--no-progress", action="store_true")
    return parser


def population(args: argparse.Namespace) -> int:
    from lensnet.studies.population import PopulationSpec, parse_sizes, run_population

    sizes = parse_sizes(args.n) if args.n else None
    spec = PopulationSpec(run=args.run, target=args.target, mean=args.mean, width=args.width, data=args.data,
                          split=args.split, sizes=sizes, repeats=args.repeats, grid=args.grid, seed=args.seed,
                          debias=args.debias)
    root = Path(args.studies_dir) / (args.name or f"population-{args.target}")
    result = run_population(spec, root, lambda line: print(line, flush=True), progress=not args.no_progress)
    print((root / "forecast.csv").read_text(), end="")
    for note in result["notes"]:
        print(f"note: {note}")
    for failure in result["per_lens"]["failures"]:
        print(f"warning: per-lens calibration of {args.target}: {failure}")
    for what, name in (("table", "forecast.csv"), ("plot", "forecast.png"), ("result", "population.json")):
        print(f"  {what:6s} {root / name}")
    sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lensnet.core.tfboot import quiet_import

    if args.study == "population":
        quiet_import()
        return population(args)

    quiet_import()
    if args.study == "views":
        return _views(args)
    from lensnet.studies.detectability import StudySpec, parse_grid, run_study

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


def _views(args: argparse.Namespace) -> int:
    from lensnet.studies.views import ViewStudySpec, run_study

    spec = ViewStudySpec(name=args.name or f"views-{Path(args.data).name}-{args.method}", data=args.data,
                         views=[v.strip() for v in args.views.split(",") if v.strip()], method=args.method,
                         model=args.model, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                         fit_set=list(args.fit_set), bootstrap=args.bootstrap)
    root = run_study(spec, Path(args.studies_dir), lambda line: print(line, flush=True))
    print((root / "results.csv").read_text(), end="")
    print(f"  table  {root / 'results.csv'}\n  json   {root / 'results.json'}")
    return 0


if __name__ == "__main__":
    cli_exit(main)
