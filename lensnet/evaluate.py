"""`python -m lensnet.evaluate`: score a trained run on any compatible dataset and split.

    python -m lensnet.evaluate --run runs/NAME --data tfrecords/model_iii --split test

Writes runs/NAME/eval/<dataset>-<split>/metrics.json and plots, and TensorBoard images.
Classes are matched by name, so a dataset imported with another class order still scores right.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lensnet.errors import LensnetError, cli_exit
from lensnet.tasks.outputs import OutputSpec


def check_compatible(run, info) -> None:
    """The dataset must fit the model: image shape and channels, classes or target."""
    if list(info.image_shape) != list(run.input_shape):
        raise LensnetError(
            f"dataset {info.path} has images of shape {tuple(info.image_shape)}, but the model of this run takes "
            f"{tuple(run.input_shape)}"
        )
    spec = OutputSpec.from_json(run.output)
    spec.handler.check_dataset(spec, info)


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
                 out: str | Path | None = None, batch_size: int = 64, n_images: int = 16) -> tuple[dict, Path]:
    from lensnet.config import load_yaml
    from lensnet.data import open_dataset
    from lensnet.runs import load_model, read_run
    from lensnet.tasks import get_task_class
    from lensnet.training.evaluation import report

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    config = load_yaml(run_dir / "config.yaml", "run config")
    info = open_dataset(data or run.dataset["path"])
    check_compatible(run, info)
    task_config = dict(config["task"])
    spec = OutputSpec.from_json(run.output)
    if spec.positive_class:
        task_config["positive_class"] = spec.positive_class
    task = get_task_class(run.task)(task_config, info, {})
    run_classes = list(spec.class_names)
    if run_classes and not spec.positive_class and list(info.class_names) != run_classes:
        remap = np.array([run_classes.index(c) for c in info.class_names])
        dataset_targets = task.targets
        task.targets = lambda batch: remap[dataset_targets(batch)]
        task.class_names = run_classes
    if split not in info.counts or not info.counts[split]:
        raise LensnetError(f"dataset {info.path}: split '{split}' is empty or missing")
    out_dir = Path(out) if out else run_dir / "eval" / f"{info.name}-{split}"
    model = load_model(run_dir)
    metrics = report(model, task, info, split, run.normalisation, out_dir, batch_size=batch_size,
                     extra={"run": str(run_dir), "model": run.model},
                     tensorboard_dir=run_dir / "logs" / f"eval_{info.name}_{split}", n_images=n_images)
    return metrics, out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by lensnet.fit")
    parser.add_argument("--data", help="dataset directory (default: the run's own dataset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="output directory (default: RUN/eval/<dataset>-<split>)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="accepted for symmetry; evaluation is deterministic")
    args = parser.parse_args(argv)
    from lensnet.tfboot import quiet_import

    quiet_import()
    metrics, out_dir = evaluate_run(args.run, args.data, args.split, args.out, args.batch_size)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"{args.split} of {metrics['dataset']}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    print(f"  metrics  {out_dir / 'metrics.json'}\n  plots    {out_dir / 'plots'}")
    return 0


if __name__ == "__main__":
    cli_exit(main)
