"""`python -m lensnet.tune`: hyper-parameter search with KerasTuner; every trial is a complete lensnet run.

    python -m lensnet.tune --task substructure --model vit_tiny --data tfrecords/model_ii \\
        --tuner bayesian --max-trials 20 --directory tuning/vit_m2
    python -m lensnet.tune ... --tuner hyperband --max-epochs 27      # successive halving, warm-started trials
    python -m lensnet.tune ... --tuner pbt --population 4 --rounds 3 --epochs 2   # population-based training
    python -m lensnet.tune ... --tuner evolution --population 8 --max-trials 30   # regularised evolution
    python -m lensnet.tune ... --prune median                        # any tuner: median-stopping rule
    python -m lensnet.tune ... --retrain-best                        # then train the best config as a normal run

The space is configs/tuning/<model family>.yaml unless --space FILE is given. Killing the
search and rerunning the same command resumes it. Several machines: one chief and any
number of workers, same command and a shared --directory:

    python -m lensnet.tune ... --role chief  --oracle-address 0.0.0.0:8000
    python -m lensnet.tune ... --role worker --oracle-address chief-host:8000 --tuner-id gpu-node-3

(or KerasTuner's own KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "search hyperparameters with KerasTuner"  # its line in `lensnet --help`


def build_parser() -> argparse.ArgumentParser:
    from lensnet.training.flags import add_run_flags

    parser = argparse.ArgumentParser(prog="python -m lensnet.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    base = parser.add_argument_group("the base run (as lensnet.fit; the search space overrides it per trial)")
    add_run_flags(base, strategies=("auto", "default", "mirrored"), help_overrides={
        "epochs": "epochs per trial (bayesian, random)",
        "lr": "peak learning rate when the space does not tune it",
        "seed": "the tuner's seed and every trial's run.seed (default 0)",
        "config": "base YAML config",
        "set": "override a base config field (repeatable)",
        "strategy": "per trial: auto mirrors over every visible GPU (or split CPU)",
    })
    search = parser.add_argument_group("the search")
    search.add_argument("--tuner", default="bayesian",
                        help="bayesian | hyperband | random | pbt (population-based training) | evolution "
                             "(regularised evolution); default bayesian")
    search.add_argument("--max-trials", type=int,
                        help="trials in all (default 10; hyperband: as many as its brackets need)")
    search.add_argument("--directory", help="tuning directory (default tuning/<task>-<model>-<tuner>)")
    search.add_argument("--space", help="search-space YAML (default configs/tuning/<model family>.yaml)")
    search.add_argument("--objective", metavar="METRIC[:max|min]",
                        help="default: the task's validation metric, e.g. val_macro_roc_auc:max")
    search.add_argument("--max-epochs", type=int, help="hyperband: epochs of the longest trials (default --epochs)")
    search.add_argument("--factor", type=int, default=3, help="hyperband: reduction factor (default 3)")
    search.add_argument("--hyperband-iterations", type=int, default=1)
    search.add_argument("--population", type=int,
                        help="pbt: members trained together (default 4); evolution: trials alive (default 8)")
    search.add_argument("--rounds", type=int, default=3,
                        help="pbt: rounds of --epochs epochs each; exploit and explore between rounds (default 3)")
    search.add_argument("--sample-size", type=int, default=3,
                        help="evolution: trials drawn for each tournament (default 3)")
    search.add_argument("--prune", default="none", metavar="none|median",
                        help="median: stop a trial whose objective so far is worse than the median of the other "
                             "trials at the same epoch (any tuner; default none)")
    search.add_argument("--prune-grace", type=int, default=1, help="epochs every trial trains unpruned (default 1)")
    search.add_argument("--prune-min-peers", type=int, default=3,
                        help="trials that must have reached an epoch before the median there counts (default 3)")
    search.add_argument("--epoch-budget", type=int, metavar="N",
                        help="any tuner: start no trial once the trials have trained N epochs in all (the trial "
                             "running then finishes); with it, no default trial cap")
    search.add_argument("--initial-points", type=int,
                        help="bayesian: random trials before the Gaussian process (default 3 x parameters)")
    search.add_argument("--max-consecutive-failures", type=int, default=3,
                        help="stop the search after this many failed trials in a row (default 3)")
    search.add_argument("--overwrite", action="store_true", help="start afresh, removing the directory's search")
    search.add_argument("--keras-verbose", dest="verbose", type=int, choices=(0, 1, 2), default=0,
                        help="Keras output inside trials (--verbose shows TensorFlow's logs)")
    search.add_argument("--no-progress", action="store_true")
    dist = parser.add_argument_group("distributed search (KerasTuner chief/worker)")
    dist.add_argument("--role", choices=("chief", "worker"), help="chief serves the oracle, workers run trials")
    dist.add_argument("--oracle-address", metavar="HOST:PORT", help="chief: where to listen; worker: the chief")
    dist.add_argument("--tuner-id", help="worker: a name unique among workers and the same after a restart")
    dist.add_argument("--wait", type=float, default=600.0, help="worker: seconds to wait for the chief (default 600)")
    end = parser.add_argument_group("after the search")
    end.add_argument("--retrain-best", action="store_true", help="train best.yaml as a normal run")
    end.add_argument("--retrain-epochs", type=int, help="epochs of that run (default: the best trial's)")
    end.add_argument("--runs", help="parent directory of that run (default runs)")
    end.add_argument("--run-name", help="its name (default task-model-time)")
    return parser


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low in (("--max-trials", args.max_trials, 1), ("--epochs", args.epochs, 1),
                             ("--max-epochs", args.max_epochs, 1), ("--factor", args.factor, 2),
                             ("--hyperband-iterations", args.hyperband_iterations, 1),
                             ("--initial-points", args.initial_points, 1),
                             ("--max-consecutive-failures", args.max_consecutive_failures, 1),
                             ("--retrain-epochs", args.retrain_epochs, 1), ("--population", args.population, 2),
                             ("--rounds", args.rounds, 1), ("--sample-size", args.sample_size, 1),
                             ("--prune-grace", args.prune_grace, 0), ("--prune-min-peers", args.prune_min_peers, 1),
                             ("--epoch-budget", args.epoch_budget, 1)):
        if value is not None and value < low:
            raise LensnetError(f"{flag} must be at least {low}, got {value}")
    from lensnet.tuning.pruning import PRUNERS
    from lensnet.tuning.tuner import TUNERS

    if args.tuner not in TUNERS:
        raise LensnetError(f"unknown tuner {args.tuner!r}; valid: {', '.join(TUNERS)}")
    if args.prune not in PRUNERS:
        raise LensnetError(f"unknown --prune rule {args.prune!r}; valid: {', '.join(PRUNERS)}")
    if args.tuner == "evolution" and args.sample_size > (args.population or 8):
        raise LensnetError(f"--sample-size {args.sample_size} is larger than the population {args.population or 8}")



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_numbers(args)
    from lensnet.tuning.search import TuneSettings, run_search

    return run_search(TuneSettings(**vars(args)))


if __name__ == "__main__":
    cli_exit(main)
