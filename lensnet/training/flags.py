"""The run flags `lensnet fit` and `lensnet tune` share, declared once; `--task` help comes from the registry."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence


def task_help() -> str:
    """`--task` help listing every registered task (lensnet.tasks: one file per task)."""
    from lensnet.tasks import list_tasks

    return "one of " + ", ".join(name for name, _ in list_tasks()) + " (see --list-tasks in lensnet fit)"


def add_run_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, strategies: Sequence[str],
                  help_overrides: Mapping[str, str] | None = None) -> None:
    """--task --model --data --target --epochs --batch-size --lr --seed --config --set --strategy --cpu-devices:
    the flags that become a run's config (lensnet.training.config.cli_overrides reads them back)."""
    helps = {
        "task": task_help(),
        "model": "model name from the registry (see lensnet fit --list-models)",
        "data": "dataset directory (default: the task's default dataset, simulated if absent)",
        "target": "regression target: any stored parameter",
        "epochs": "training epochs",
        "batch-size": "batch size",
        "lr": "peak learning rate",
        "seed": "run.seed (default 0): the same seed gives the same run",
        "config": "YAML config (e.g. a tuner's best.yaml or a run's config.yaml)",
        "set": "override any config field, e.g. --set train.optimizer=lamb (repeatable)",
        "strategy": "auto mirrors over every visible GPU (or a split CPU); multiworker reads TF_CONFIG",
        "cpu-devices": "split the CPU into N logical devices (mirroring tests)",
        **(help_overrides or {}),
    }
    parser.add_argument("--task", help=helps["task"])
    parser.add_argument("--model", help=helps["model"])
    parser.add_argument("--data", help=helps["data"])
    parser.add_argument("--target", help=helps["target"])
    parser.add_argument("--epochs", type=int, help=helps["epochs"])
    parser.add_argument("--batch-size", type=int, help=helps["batch-size"])
    parser.add_argument("--lr", type=float, help=helps["lr"])
    parser.add_argument("--seed", type=int, help=helps["seed"])
    parser.add_argument("--config", help=helps["config"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=helps["set"])
    parser.add_argument("--strategy", choices=tuple(strategies), help=helps["strategy"])
    parser.add_argument("--cpu-devices", type=int, help=helps["cpu-devices"])
