"""Label efficiency: a supervised task trained on 1%, 10% and 100% of the labelled training split,
from scratch and from self-supervised pretraining (k-NN on the frozen embedding, linear probe,
fine-tune), each scored on the full test split with a 95% bootstrap interval over its images.

The subsets are fixed and nested (`data.train_fraction` with one `data.subset_seed`: a seeded hash
of the record ids, so the 1% subset is inside the 10% one); their ids are written beside the
results (`*-ids.json`). The pretraining run is `--pretrain RUN`, or trained here first, WITHOUT
labels, with each `--pretrain-method`: on the labelled set's training split, or with
`--unlabelled DIR` on that separate dataset's training split (its labels are never read:
`task.labels=false`), at each of `--unlabelled-fractions` of it (nested subsets), to show how the
gain grows with the unlabelled set. With `--test DIR` every row is scored on that dataset's test
split (an independent simulation of the same preset; the labelled set's test split is then
unused), so the intervals are as narrow as the test set is large. An epoch is one pass over the
row's labelled subset only with `--steps-per-epoch pass`; by default every row gets the step budget
of one pass over the largest fraction (one pass per row under-trains scratch at small fractions).
Rows carry the CPU budget (images, epochs, wall seconds) of their pretraining and of their own
training. The target verdict (issue 25) is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError

SUMMARY = "Scratch vs k-NN / probe / fine-tune from SSL pretraining (opt. on unlabelled data) at 1%, 10%, 100% labels"

MODES = ("scratch", "knn", "probe", "finetune")
METHODS = ("simclr", "byol", "dino", "mae")
# Published anchors, printed beside the measured rows.
ANCHORS = (
    "DeepLense SSL project (ResNet-50, TF): contrastive pretraining fine-tuned on Model II/III reaches "
    "ROC AUC 0.99-1.0 per class",
    "DINO/iBOT on real lens/non-lens cutouts, 300 labels: AUC 0.969 vs supervised 0.955 (iBOT 0.9906 all labels)",
    "issue 25 target (Model II replica, 20x unlabelled): at 1% and 10% labels the best pretraining beats scratch "
    "by >= 0.02 macro AUC with non-overlapping intervals; at 100% no worse within its interval",
)
TARGETS = ((0.01, 0.02), (0.1, 0.02), (1.0, None))  # (fraction of labels, margin; None = no worse)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (default: simulate --dataset with --num records)")
    parser.add_argument("--dataset", default="deeplense_model_ii", help="preset simulated when --data is not given")
    parser.add_argument("--num", type=int, default=3000, help="records to simulate")
    parser.add_argument("--unlabelled", metavar="DIR",
                        help="pretrain on this dataset's training split instead (its labels are never read)")
    parser.add_argument("--unlabelled-fractions", default="1.0",
                        help="comma-separated fractions of the unlabelled training split to pretrain on (nested)")
    parser.add_argument("--task", default="substructure", choices=("substructure", "lens_finding", "regression"))
    parser.add_argument("--target", help="regression target (with --task regression)")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--fractions", default="0.01,0.1,1.0", help="comma-separated fractions of the train split")
    parser.add_argument("--modes", default=",".join(MODES), help="scratch, knn, probe, finetune (comma-separated)")
    parser.add_argument("--pretrain", metavar="RUN_DIR", help="a finished `--task pretrain` run to start from")
    parser.add_argument("--pretrain-method", default="simclr",
                        help=f"comma-separated, among {', '.join(METHODS)}: one pretraining each")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="supervised epochs per run")
    parser.add_argument("--probe-epochs", type=int, help="linear-probe epochs (default: --epochs)")
    parser.add_argument("--steps-per-epoch", default="auto",
                        help="optimizer steps per epoch of every trained row, its subset repeated: auto (default) "
                             "= one pass over the largest fraction's subset, the same step budget at every "
                             "fraction; pass = one pass over each row's own subset (then 1%% of the labels trains "
                             "a hundredth of the steps); or a number")
    parser.add_argument("--lrs", default="",
                        help="comma-separated peak learning rates: every trained row (scratch, probe, fine-tune) "
                             "trains once per rate and keeps the run with the best validation score "
                             "(default: the task's learning rate only)")
    parser.add_argument("--test", metavar="DIR",
                        help="score every row on this dataset's test split instead: an independent simulation of "
                             "the same preset and classes, large enough for narrow intervals")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--runs-dir", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (model.args.*...)")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides of the pretraining runs (task.*...)")


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise LensnetError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise LensnetError(f"{option} must be in (0, 1], got {text!r}")
    return values


def _rates(text: str) -> list[float | None]:
    """--lrs as a list of peak learning rates; [None] (the config's own) when empty."""
    try:
        values = list(dict.fromkeys(float(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise LensnetError(f"--lrs must be comma-separated numbers, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise LensnetError(f"--lrs must be positive, got {text!r}")
    return values or [None]


def _steps_per_epoch(text: str, n_labelled: dict[float, int], batch_size: int) -> dict[float, int | None]:
    """train.steps_per_epoch per fraction of the labels; None where that is one pass over the row's own subset
    (so a row whose pass already is the budget keeps its config, and its finished run is reused)."""
    one_pass = {f: math.ceil(n / batch_size) for f, n in n_labelled.items()}
    if text == "pass":
        return dict.fromkeys(n_labelled)
    if text == "auto":
        budget = max(one_pass.values())
    else:
        try:
            budget = int(text)
        except ValueError:
            budget = 0
        if budget < 1:
            raise LensnetError(f"--steps-per-epoch must be auto, pass or a positive integer, got {text!r}")
    return {f: None if steps == budget else budget for f, steps in one_pass.items()}


def _choices(text: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    chosen = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in chosen if m not in allowed]
    if bad or not chosen:
        raise LensnetError(f"{option} must be among {', '.join(allowed)}, got {text!r}")
    return chosen


def headline(task: str) -> tuple[str, ...]:
    """The test figures reported per row."""
    if task == "regression":
        return ("mae", "r2")
    if task == "lens_finding":
        return ("roc_auc", "accuracy")
    return ("macro_roc_auc", "accuracy")


def _subset_count(info, split: str, fraction: float, seed: int, option: str) -> int:
    """Records of the (fraction, seed) subset of `split`; a fraction that selects none is a one-line error."""
    from lensnet.data.pipeline import subset_ids

    n = len(subset_ids(info, split, fraction, seed)) if fraction < 1 else int(info.counts.get(split, 0))
    if not n:
        raise LensnetError(f"{option} {fraction:g} selects no record of split '{split}' of {info.path} "
                           f"({info.counts.get(split, 0)} records); raise it")
    return n


def _open_alike(path: str, labelled, option: str) -> object:
    """The dataset of --unlabelled or --test: its images must have the labelled set's shape."""
    from lensnet.data import open_dataset

    info = open_dataset(path)
    if tuple(info.image_shape) != tuple(labelled.image_shape):
        raise LensnetError(f"{option} {info.path} has images of shape {tuple(info.image_shape)}, but the "
                           f"labelled dataset {labelled.path} has {tuple(labelled.image_shape)}")
    return info


def _open_test(path: str, labelled) -> object:
    info = _open_alike(path, labelled, "--test")
    if list(info.class_names) != list(labelled.class_names):
        raise LensnetError(f"--test {info.path} has classes {list(info.class_names)}, but the labelled dataset "
                           f"{labelled.path} has {list(labelled.class_names)}")
    if not info.counts.get("test"):
        raise LensnetError(f"--test {info.path} has no record in its test split")
    return info


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.core.config import deep_update, parse_set
    from lensnet.core.fileio import write_json
    from lensnet.data import open_dataset
    from lensnet.tasks import plots
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.data import train_ids
    from lensnet.training.trainer import check_buildable, fit_or_resume

    fractions, modes = _numbers(args.fractions, "--fractions"), _choices(args.modes, "--modes", MODES)
    methods = _choices(args.pretrain_method, "--pretrain-method", METHODS)
    rates = _rates(args.lrs)
    unlabelled_fractions = _numbers(args.unlabelled_fractions, "--unlabelled-fractions")
    if args.task == "regression" and not args.target:
        raise LensnetError("--task regression needs --target NAME")
    if "knn" in modes and args.task == "regression":
        raise LensnetError("--modes knn needs a classification task")
    if args.test and args.task == "regression":
        raise LensnetError("--test needs a classification task")
    data = args.data
    if not data:
        from lensnet.simulate.dataset import simulate_dataset

        data = f"tfrecords/bench-{args.dataset}-{args.num}-seed{args.seed}"
        if not (Path(data) / "manifest.json").is_file():
            simulate_dataset(args.dataset, data, num=args.num, seed=args.seed, workers=os.cpu_count() or 1,
                             progress=False)
    info = open_dataset(data)
    source = _open_alike(args.unlabelled, info, "--unlabelled") if args.unlabelled else info
    scored = _open_test(args.test, info) if args.test else info
    train_split = resolve_fit_config(args.task, overrides={"data": {"path": str(info.path)}})["data"]["train_split"]
    n_labelled = {f: _subset_count(info, train_split, f, args.subset_seed, "--fractions") for f in fractions}
    steps = _steps_per_epoch(args.steps_per_epoch, n_labelled, args.batch_size)
    pretrained = any(m != "scratch" for m in modes) and not args.pretrain
    n_unlabelled = ({f: _subset_count(source, train_split, f, args.subset_seed, "--unlabelled-fractions")
                     for f in unlabelled_fractions} if pretrained else {})
    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="lensnet-bench-label-eff-"))
    common = {"model": {"name": args.model}, "data": {"path": str(info.path), "batch_size": args.batch_size},
              "run": {"dir": str(runs), "seed": args.seed, "verbose": 2}}
    extra = parse_set(args.set)

    # ---- pretraining runs: one per (method, unlabelled fraction) -----------------------------------
    sources: list[dict] = []
    if args.pretrain:
        sources.append({"pretrain": args.pretrain, "method": "given", "n_unlabelled": None})
    elif pretrained:
        jobs = []
        for method in methods:
            for fraction in unlabelled_fractions:
                name = f"pretrain-{method}" + (f"-u{fraction:g}" if args.unlabelled else "")
                overrides = deep_update(deep_update(common, {
                    "task": {"method": method, "labels": not args.unlabelled},
                    "data": {"path": str(source.path), "train_fraction": fraction, "subset_seed": args.subset_seed},
                    "train": {"epochs": args.pretrain_epochs}, "run": {"name": name}}),
                    deep_update(extra, parse_set(args.pretrain_set)))
                config = resolve_fit_config("pretrain", overrides=overrides)
                check_buildable(config)  # every method fits the model before the first one trains for an hour
                jobs.append((method, fraction, config))
        for method, fraction, config in jobs:
            n = n_unlabelled[fraction]
            print(f"pretraining {args.model} with {method} on {n} images of {source.path} (labels unused)",
                  flush=True)
            t0 = time.perf_counter()
            result = fit_or_resume(config, progress=False)
            sources.append({"pretrain": str(result.run_dir), "method": method, "n_unlabelled": n,
                            "unlabelled_fraction": fraction, "pretrain_epochs": args.pretrain_epochs,
                            "pretrain_seconds": None if result.reused else round(time.perf_counter() - t0, 1)})

    keys = headline(args.task)
    rows, ids = [], {}
    for fraction in fractions:
        n_train = n_labelled[fraction]
        for mode in modes:
            for src in ([{}] if mode == "scratch" else sources):
                t0 = time.perf_counter()
                label = f"{args.task}-{fraction:g}-{mode}" + (f"-{Path(src['pretrain']).name}" if src else "")
                print(f"{args.task}: {fraction:g} of the labels ({n_train} records), {mode}"
                      + (f" from {src['pretrain']}" if src else ""), flush=True)
                row = {"fraction": fraction, "n_train": n_train, "mode": mode, "method": src.get("method"),
                       "n_unlabelled": src.get("n_unlabelled"),
                       "x_labelled": (round(src["n_unlabelled"] / n_labelled[max(fractions)], 2)
                                      if src.get("n_unlabelled") else None)}
                if mode == "knn":
                    row.update(_knn_row(src["pretrain"], info, scored, train_split, fraction, args))
                    row["epochs"] = 0
                else:
                    model = {"init": src.get("pretrain"), "freeze": "backbone" if mode == "probe" else None}
                    epochs = args.probe_epochs or args.epochs if mode == "probe" else args.epochs
                    overrides = deep_update(deep_update(common, {
                        "model": model, "data": {"train_fraction": fraction, "subset_seed": args.subset_seed},
                        "train": {"epochs": epochs, "steps_per_epoch": steps[fraction]},
                        "run": {"name": label}}), extra)
                    if args.target:
                        overrides["task"] = {"target": args.target}
                    config = resolve_fit_config(args.task, overrides=overrides)
                    subset = train_ids(config, info)
                    ids[f"{fraction:g}"] = subset if subset is not None else "all"
                    result, rate, searched = _best_rate(config, rates, label)
                    row.update({k: result.metrics.get(k) for k in keys})
                    if args.task != "regression":
                        row.update(_interval(result.run_dir, scored, keys, args, headline=scored is not info))
                    if searched:
                        row["learning_rate"], row["val_by_lr"] = rate, searched
                    row["epochs"] = epochs
                    row["run"] = str(result.run_dir)
                    row["reused"] = result.reused  # a rerun reuses finished runs: its seconds are not their cost
                row["seconds"] = round(time.perf_counter() - t0, 1)
                for key in ("pretrain_epochs", "pretrain_seconds"):
                    row[key] = src.get(key)
                rows.append(row)
                chosen = (f" (lr {row['learning_rate']:g} of {row['val_by_lr']} on validation)"
                          if "val_by_lr" in row else "")
                print(f"  -> {keys[0]} {_fmt(row.get(keys[0]))} [{_fmt(row.get('low'))}, {_fmt(row.get('high'))}] "
                      f"in {row['seconds']:g} s{chosen}", flush=True)

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(os.environ.get("LENSNET_BENCH_DIR", "bench/results"))
    write_json(out / f"label-efficiency-{stamp}-ids.json",
               {"dataset": str(info.path), "unlabelled": str(source.path) if args.unlabelled else None,
                "test": str(scored.path),
                "subset_seed": args.subset_seed, "pretrain": sources, "ids": ids, "published": list(ANCHORS)})
    plots.save(_figure(rows, keys[0], args), out / f"label-efficiency-{stamp}.png")
    print("\npublished anchors:")
    for line in ANCHORS:
        print(f"  - {line}")
    for line in verdict(rows):
        print(line)
    print(f"subset ids: {out / f'label-efficiency-{stamp}-ids.json'}; plot: {out / f'label-efficiency-{stamp}.png'}\n")
    return rows


def _best_rate(config: dict, rates: list[float | None], label: str) -> tuple:
    """(run, its rate, {rate: validation score} or None when there was no choice): the finished run of
    `config` at each peak learning rate of `rates` (None: the config's own), keeping the one with the best
    validation score (the task's monitor at its best epoch); the test split plays no part in the choice.
    The config's own rate keeps the run name, so a bench rerun with --lrs reuses the runs it already has."""
    import copy

    from lensnet.tasks import get_task_class
    from lensnet.training.trainer import fit_or_resume
    from lensnet.tuning.report import objective_from_history

    task = get_task_class(config["task"]["name"])
    own = config["train"]["learning_rate"]
    if rates == [None]:  # no choice to make: the config's own rate, no validation scores to read
        return fit_or_resume(config, progress=False), own, None
    best, scores = None, {}
    for rate in rates:
        run_config = copy.deepcopy(config)
        if rate != own:
            run_config["train"]["learning_rate"] = rate
            run_config["run"]["name"] = f"{label}-lr{rate:g}"
        result = fit_or_resume(run_config, progress=False)
        score = objective_from_history(result.run_dir, f"val_{task.monitor}", task.monitor_mode)[0]
        scores[f"{rate:g}"] = round(score, 4)
        if best is None or (score > best[0] if task.monitor_mode == "max" else score < best[0]):
            best = (score, result, rate)
    return best[1], best[2], (scores if len(rates) > 1 else None)


def _interval(run_dir: Path, scored, keys: tuple[str, ...], args: argparse.Namespace, headline: bool) -> dict:
    """The run's test macro AUC (or binary AUC) interval on `scored`'s test split; with `headline` (an
    independent --test set, not the run's own) its figures there too, in place of the run's metrics.json."""
    from lensnet.studies.detectability import predictions_on_test
    from lensnet.tasks.scores import macro_auc_with_interval

    labels, probs, _ = predictions_on_test(run_dir, scored.path)
    predicted = probs.argmax(1) if probs.ndim == 2 and probs.shape[1] > 1 else (probs.reshape(-1) > 0.5)
    if probs.ndim == 1 or probs.shape[1] == 1:  # lens finding: p(lens) -> two columns
        p = probs.reshape(-1)
        probs = np.stack([1 - p, p], axis=1)
    found = macro_auc_with_interval(labels, probs, args.bootstrap, args.seed)
    out = {"low": found["low"], "high": found["high"], "n_test": found["n_test"]}
    if headline:
        out.update({keys[0]: found["macro_roc_auc"], keys[1]: float(np.mean(predicted == labels))})
    return out


_EMBEDDINGS: dict = {}


def _knn_row(pretrain: str, info, scored, train_split: str, fraction: float, args: argparse.Namespace) -> dict:
    """Weighted k-NN (DINO's) on the frozen embedding: the labelled subset votes for each test image of
    `scored` (the labelled set itself, or --test)."""
    from lensnet.data.pipeline import subset_ids
    from lensnet.studies.views import labels_by_id, split_embeddings
    from lensnet.tasks.scores import macro_auc_with_interval
    from lensnet.tasks.ssl_plots import knn_probabilities

    key = (pretrain, str(info.path), str(scored.path), train_split)
    if key not in _EMBEDDINGS:  # one embedding pass per pretraining run, whatever the fractions
        test = split_embeddings(pretrain, scored.path, ("test",))["test"]
        _EMBEDDINGS[key] = (split_embeddings(pretrain, info.path, (train_split,))[train_split],
                            labels_by_id(info, (train_split,)), test, labels_by_id(scored, ("test",)))
    (ids, train), labels, (test_ids, test), test_by_id = _EMBEDDINGS[key]
    keep = set(subset_ids(info, train_split, fraction, args.subset_seed)) if fraction < 1 else None
    rows = [k for k, i in enumerate(ids) if keep is None or i in keep]
    test_labels = np.array([test_by_id[i] for i in test_ids])
    probs = knn_probabilities(train[rows], np.array([labels[ids[k]] for k in rows]), test,
                              len(info.class_names), k=20)
    found = macro_auc_with_interval(test_labels, probs, args.bootstrap, args.seed)
    return {"macro_roc_auc": found["macro_roc_auc"], "accuracy": float(np.mean(probs.argmax(1) == test_labels)),
            "low": found["low"], "high": found["high"], "n_test": found["n_test"]}


def _figure(rows: list[dict], key: str, args: argparse.Namespace):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    curves = sorted({(r["mode"], r["method"] or "", r["n_unlabelled"] or 0) for r in rows})
    for mode, method, n in curves:
        points = sorted((r["fraction"], r[key], r.get("low"), r.get("high")) for r in rows
                        if (r["mode"], r["method"] or "", r["n_unlabelled"] or 0) == (mode, method, n)
                        and r[key] is not None)
        if not points:
            continue
        x, y, lo, hi = zip(*points)
        errors = None
        if all(v is not None for v in lo + hi):
            errors = [np.subtract(y, lo), np.subtract(hi, y)]
        name = mode if mode == "scratch" else f"{mode} ({method}" + (f", {n} unlab.)" if n else ")")
        ax.errorbar(x, y, yerr=errors, fmt="o-", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set(xlabel="fraction of labelled training records", ylabel=f"test {key} (95% bootstrap)",
           title=f"{args.task}, {args.model}")
    ax.legend(fontsize=7)
    return fig


def verdict(rows: list[dict]) -> list[str]:
    """The issue 25 target, per fraction of labels: the best pretrained row against scratch, with intervals.

    At 1% and 10%: best >= scratch + 0.02 and its interval's low end above scratch's high end. At 100%:
    no worse within the interval (scratch's value at most the best row's high end). Pretrained rows
    from the largest unlabelled set only, as the target says."""
    lines = []
    pretrained = [r for r in rows if r["mode"] != "scratch" and r.get("macro_roc_auc") is not None]
    largest = max((r["n_unlabelled"] or 0 for r in pretrained), default=0)
    for fraction, margin in TARGETS:
        scratch = next((r for r in rows if r["mode"] == "scratch" and r["fraction"] == fraction
                        and r.get("macro_roc_auc") is not None), None)
        candidates = [r for r in pretrained if r["fraction"] == fraction and (r["n_unlabelled"] or 0) == largest]
        if scratch is None or not candidates:
            continue
        best = max(candidates, key=lambda r: r["macro_roc_auc"])
        b, s = best["macro_roc_auc"], scratch["macro_roc_auc"]
        if margin is None:
            ok = best.get("high") is not None and best["high"] >= s
            need = "no worse within the interval"
        else:
            ok = b >= s + margin and None not in (best.get("low"), scratch.get("high")) \
                and best["low"] > scratch["high"]
            need = f">= +{margin:g}, intervals apart"
        lines.append(f"target at {fraction:g} of the labels: best pretrained {b:.4f} "
                     f"[{_fmt(best.get('low'))}, {_fmt(best.get('high'))}] ({best['mode']}, {best['method']}) vs "
                     f"scratch {s:.4f} [{_fmt(scratch.get('low'))}, {_fmt(scratch.get('high'))}] "
                     f"(needs {need}): {'met' if ok else 'NOT met'}")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
