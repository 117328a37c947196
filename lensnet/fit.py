"""`python -m lensnet.fit`: train a model for a task and write a complete run directory.

    python -m lensnet.fit --task lens_finding
    python -m lensnet.fit --task substructure --model vit_tiny --data tfrecords/model_ii --epochs 30 --seed 0
    python -m lensnet.fit --task regression --target log10_m_axion --data tfrecords/model_ii
    python -m lensnet.fit --resume runs/NAME
    python -m lensnet.fit --task pretrain --set task.method=byol --data tfrecords/model_ii
    python -m lensnet.fit --task substructure --init runs/PRETRAIN --freeze backbone
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "train a task's model on a dataset"  # its line in `lensnet --help`


def build_parser() -> argparse.ArgumentParser:
    from lensnet.training.flags import add_run_flags

    parser = argparse.ArgumentParser(prog="python -m lensnet.fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser, strategies=("auto", "default", "mirrored", "multiworker"))
    parser.add_argument("--init", metavar="RUN_DIR",
                        help="start from the backbone weights of another run (e.g. --task pretrain); from all "
                             "its weights, head included, when it is a run of the same task (fine-tuning)")
    parser.add_argument("--freeze", choices=("backbone",), help="train only the task's head (linear probe)")
    parser.add_argument("--teacher", metavar="RUN_OR_EXPORT",
                        help="distil from this teacher run or export (task.teacher; see task.distill, task.alpha)")
    parser.add_argument("--run-name", help="run directory name under --runs (default: task-model-time)")
    parser.add_argument("--runs", help="parent directory of runs (default: runs)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last epoch")
    parser.add_argument("--list-models", action="store_true", help="list the registered models and exit")
    parser.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def list_models() -> None:
    from lensnet.models import list_models as models

    for entry in models():
        print(f"{entry['name']:14s} {entry['family']:13s} {entry['kind']:17s} {entry['description']}")


def list_tasks() -> None:
    from lensnet.tasks import list_tasks as tasks

    for name, description in tasks():
        print(f"{name:14s} {description}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_models:
        list_models()
        return 0
    if args.list_tasks:
        list_tasks()
        return 0
    from lensnet.core.tfboot import quiet_import

    quiet_import()
    from lensnet.training.config import cli_overrides

    overrides = cli_overrides(args)
    if args.resume:
        if args.config:
            raise LensnetError("--resume takes the run's own config.yaml; drop --config")
        from lensnet.training.config import resume_config

        config = resume_config(args.resume, overrides)
    else:
        from lensnet.training.config import resolve_fit_config

        config = resolve_fit_config(args.task, args.config, overrides)
    from lensnet.training.trainer import print_result, run_fit

    result = run_fit(config, resume=bool(args.resume), progress=not args.no_progress)
    print_result(result)
    return 0


if __name__ == "__main__":
    cli_exit(main)
