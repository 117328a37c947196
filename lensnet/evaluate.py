"""`python -m lensnet.evaluate`: score a trained run on any compatible dataset and split.

    python -m lensnet.evaluate --run runs/NAME --data tfrecords/model_iii --split test
    python -m lensnet.evaluate --run runs/A --run runs/B --data tfrecords/survey   # an ensemble of A and B

Writes runs/NAME/eval/<dataset>-<split>/metrics.json and plots, and TensorBoard images. With several
--run, scores the mean of their class probabilities (each member normalises the images as in its own
training) and writes runs/A/eval/<dataset>-<split>-ensemble<N>/.
Classes are matched by name, so a dataset imported with another class order still scores right;
only the named split is read (a dataset holding just a test split is fine).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lensnet.core.errors import cli_exit
from lensnet.data.augment import GROUPS

SUMMARY = "score a trained run on a dataset split"  # its line in `lensnet --help`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, action="append",
                        help="run directory written by lensnet.fit; repeat it to score an ensemble")
    parser.add_argument("--data", help="dataset directory (default: the run's own dataset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", help="output directory (default: RUN/eval/<dataset>-<split>)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="accepted for symmetry; evaluation is deterministic")
    parser.add_argument("--tta", choices=tuple(GROUPS),
                        help="test-time augmentation: average class probabilities over this symmetry group of "
                             "each image (use the dataset's own: config.symmetry in its manifest)")
    args = parser.parse_args(argv)
    from lensnet.core.tfboot import quiet_import

    quiet_import()
    from lensnet.training.evaluation import evaluate_ensemble, evaluate_run

    if len(args.run) == 1:
        metrics, out_dir = evaluate_run(args.run[0], args.data, args.split, args.out, args.batch_size, tta=args.tta)
    else:
        metrics, out_dir = evaluate_ensemble(args.run, args.data, args.split, args.out, args.batch_size,
                                             tta=args.tta)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"{args.split} of {metrics['dataset']}: " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()),
          flush=True)
    if "survey" in metrics:
        from lensnet.tasks.survey_metrics import format_survey

        print("\n".join(format_survey(metrics["survey"])), flush=True)
    for warning in metrics.get("warnings") or ():
        print(f"warning: {warning}", flush=True)
    print(f"  metrics  {out_dir / 'metrics.json'}\n  plots    {out_dir / 'plots'}", flush=True)
    return 0


if __name__ == "__main__":
    cli_exit(main)
