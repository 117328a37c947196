"""`python -m lensnet.bench NAME [options]`: run a benchmark, save JSON under bench/results/, print a table."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

from lensnet.bench.common import format_table, save_results
from lensnet.core.errors import cli_exit

# name -> module under lensnet.bench (the name with - as _) defining add_arguments(parser) and run(args) -> list[dict]
BENCHMARKS = {
    "simulate": "Simulation images/s per core vs a plain lenstronomy loop; 1 vs 2 workers",
    "pipeline": "tf.data reader images/s (parse, normalise, augment, batch)",
    "train": "Training throughput through lensnet.fit vs plain model.fit, per model",
    "accuracy": "Classifier accuracy / macro AUC on a fixed model_ii-style set, per model",
    "infer": "Inference images/s and latency: Keras vs SavedModel vs onnxruntime",
    "serve": "REST server under load: requests/s, p50/p99 latency, failures",
    "deeplense": "The published DeepLense tables on the replica presets (classification, axion mass, domain shift)",
    "sr-downstream": "Axion-mass regressor trained on HR, scored on HR / bicubic LR / super-resolved LR",
    "distill": "Teacher, student, student + teacher at one budget: AUC, params, FLOPs, CPU latency",
    "erasing": "Iterative erasing vs none vs random erasing: AUC clean and with 10% of each test image erased",
    "pipeline-e2e": "lensnet.pipeline tiles/s on synthetic survey images + recall/precision of injected lenses",
    "label-efficiency": "Scratch vs linear probe vs fine-tune from a pretraining run at 1%, 10%, 100% of the labels",
    "los-born": "Line-of-sight haloes: lensnet's Born approximation vs lenstronomy multi-plane ray tracing",
    "tune": "Tuners (random, bayesian, hyperband, pbt, evolution, + median pruning) at one budget of epochs",
    "population-draws": "Cost of the dark-matter population draws alone (CDM, WDM, line of sight), per image",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m lensnet.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    modules = {}
    for name, help_ in BENCHMARKS.items():
        module = f"lensnet.bench.{name.replace('-', '_')}"  # sr-downstream lives in sr_downstream.py
        try:
            modules[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        sp = sub.add_parser(name, help=help_, description=help_)
        modules[name].add_arguments(sp)
    args = parser.parse_args(argv)
    rows = modules[args.name].run(args)
    options = {k: v for k, v in vars(args).items() if k != "name"}
    command = "python -m lensnet.bench " + shlex.join(argv)
    path = save_results(args.name, rows, options, command)
    print(format_table(rows))
    print(f"\nresults: {path}\ncommand: {command}")
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
