"""Distillation at one budget: the teacher, the student alone, the student with the teacher.

Each row is trained through lensnet.fit (task substructure) on the same dataset, seed, epochs and
schedule, scored on the same test split, then timed: parameters, MFLOPs per image (TF profiler)
and CPU latency at batch 1 and 64 (Keras predict_on_batch, median of `--repeats`), i.e. what the
compression buys. Each row's macro AUC has a 95% bootstrap interval over the test images, and every
row but the student's the paired bootstrap interval of its difference from the student alone (the
same resamples for both models). The teacher is trained first (or given with --teacher-run). With
`--attention-block K` (a ViT/DeiT teacher and student with the same patch grid) a fourth row,
"student+teacher+attention", adds the attention-map matching of block K (`task.attention_block`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lensnet.bench.common import auc_difference

SUMMARY = "Teacher, student, student + teacher at one budget: AUC, params, FLOPs, CPU latency"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (e.g. a DeepLense replica)")
    parser.add_argument("--teacher", default="resnet18", help="teacher registry model (default resnet18)")
    parser.add_argument("--teacher-run", help="use this finished run as the teacher instead of training one")
    parser.add_argument("--student", default="deit_tiny", help="student registry model (default deit_tiny)")
    parser.add_argument("--student-run", help="use this finished run as the student-alone row instead of training "
                        "one (e.g. the student row of an earlier distill run at the same budget)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, help="teacher epochs (default --epochs)")
    parser.add_argument("--distill", default="hard", choices=("hard", "soft"))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--attention-block", type=int,
                        help="also train a student matching the teacher's attention maps of this block (ViT/DeiT)")
    parser.add_argument("--attention-weight", type=float, default=1.0, help="weight of the attention loss")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per batch size")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test images (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")


def latency_ms(model, shape: tuple, batch: int, repeats: int, seed: int) -> float:
    """Median ms per call of `model.predict_on_batch` on `batch` random images."""
    images = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    model.predict_on_batch(images)  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(images)
        times.append(time.perf_counter() - start)
    return round(1000.0 * float(np.median(times)), 2)


def train(name: str, model: str, args: argparse.Namespace, runs: Path, epochs: int, extra: dict):
    from lensnet.core.config import deep_update, parse_set
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import run_fit

    overrides = deep_update({
        "model": {"name": model},
        "data": {"path": args.data, "batch_size": args.batch_size},
        "train": {"epochs": epochs, "learning_rate": args.lr},
        "run": {"dir": str(runs), "name": name, "seed": args.seed, "verbose": 2},
    }, deep_update(parse_set(args.set), extra))
    return run_fit(resolve_fit_config("substructure", overrides=overrides), progress=False)


def run(args: argparse.Namespace) -> list[dict]:
    import keras

    from lensnet.artifacts.runs import read_run
    from lensnet.bench.common import model_flops
    from lensnet.studies.detectability import predictions_on_test
    from lensnet.tasks.checkpoints import load_model
    from lensnet.tasks.scores import macro_auc_interval

    if args.attention_block is not None:
        check_attention_teacher(args)  # before hours of training, not after
    runs = Path(tempfile.mkdtemp(prefix="lensnet-bench-distill-"))
    cases = []
    if args.teacher_run:
        teacher_dir = Path(args.teacher_run)
        cases.append(("teacher", teacher_dir, None))
    else:
        result = train("teacher", args.teacher, args, runs, args.teacher_epochs or args.epochs, {})
        teacher_dir = result.run_dir
        cases.append(("teacher", teacher_dir, result))
    if args.student_run:
        cases.append(("student", Path(args.student_run), None))
    else:
        cases.append(("student", *_student(args, runs, "student", {})))
    distill = {"teacher": str(teacher_dir), "distill": args.distill, "alpha": args.alpha}
    cases.append(("student+teacher", *_student(args, runs, "distilled", {"task": distill})))
    if args.attention_block is not None:
        cases.append(("student+teacher+attention", *_student(args, runs, "attention", {"task": {
            **distill, "attention_block": args.attention_block, "attention_weight": args.attention_weight}})))
    rows, scored = [], {}
    for role, run_dir, result in cases:
        info = read_run(run_dir)
        metrics = result.metrics if result is not None else json.loads((run_dir / "metrics.json").read_text())
        scored[role] = predictions_on_test(run_dir, args.data)
        interval = macro_auc_interval(*scored[role][:2], args.bootstrap, args.seed) if args.bootstrap else None
        model = load_model(run_dir)
        shape = tuple(info.input_shape)
        flops = model_flops(model, shape)
        rows.append({
            "role": role, "model": info.model, "params": int(model.count_params()),
            "mflops": None if flops is None else round(flops / 1e6, 1),
            "macro_auc": metrics.get("macro_roc_auc"),
            "auc_lo": interval[0] if interval else None, "auc_hi": interval[1] if interval else None,
            "accuracy": metrics.get("accuracy"),
            "ms_batch1": latency_ms(model, shape, 1, args.repeats, args.seed),
            "ms_batch64": latency_ms(model, shape, 64, args.repeats, args.seed),
            "epochs": info.epochs_done, "wall_s": None if result is None else round(result.seconds, 1),
            "run": str(run_dir),
        })
        keras.backend.clear_session()
    for row in rows:
        if row["role"] != "student":
            row.update(vs_student(scored["student"], scored[row["role"]], args.bootstrap, args.seed))
        print(row, flush=True)
    return rows


def vs_student(student: tuple, other: tuple, bootstrap: int, seed: int) -> dict:
    """The row's macro AUC minus the student's on the same test images, with the paired bootstrap interval."""
    found = auc_difference(student, other, bootstrap, seed)
    return {"auc_minus_student": found["difference"], "diff_lo": found["low"], "diff_hi": found["high"]}


def check_attention_teacher(args: argparse.Namespace) -> None:
    """Attention distillation needs transformer blocks on both sides: a one-line error otherwise."""
    from lensnet.artifacts.runs import read_run
    from lensnet.core.errors import LensnetError
    from lensnet.models import model_info
    from lensnet.models.tokens import TRANSFORMER_FAMILIES

    teacher = read_run(Path(args.teacher_run)).model if args.teacher_run else args.teacher
    for role, name in (("teacher", teacher), ("student", args.student)):
        family = model_info(name)["family"]
        if family not in TRANSFORMER_FAMILIES:
            raise LensnetError(f"--attention-block: the {role} {name} is a {family}, not a ViT or DeiT; attention "
                               "distillation needs a transformer teacher and student")


def _student(args: argparse.Namespace, runs: Path, name: str, extra: dict):
    result = train(name, args.student, args, runs, args.epochs, extra)
    return result.run_dir, result
