"""Label efficiency: a supervised task trained on 1%, 10% and 100% of the labelled training split,
from scratch, as a linear probe and fine-tuned from a self-supervised pretraining run.

The subsets are fixed and nested (`data.train_fraction` with one `data.subset_seed`: a seeded hash
of the record ids, so the 1% subset is inside the 10% one); their ids are written beside the
results (`*-ids.json`). The pretraining run is `--pretrain RUN`, or one trained here first on the
whole training split WITHOUT its labels (`--pretrain-method simclr|byol|mae`). Each row is one
(fraction, mode) run scored on the full test split: macro ROC AUC and accuracy (substructure,
lens_finding) or MAE (regression). A plot of the curves goes next to the results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import tempfile
from pathlib import Path

from lensnet.core.errors import LensnetError

SUMMARY = "Scratch vs linear probe vs fine-tune from a pretraining run at 1%, 10%, 100% of the labels"

MODES = ("scratch", "probe", "finetune")
# Issue 10's published anchors, printed beside the measured rows.
ANCHORS = (
    "DeepLense SSL project (ResNet-50, TF): contrastive pretraining fine-tuned on Model II/III reaches "
    "ROC AUC 0.99-1.0 per class",
    "DINO/iBOT on real lens/non-lens cutouts, 300 labels: AUC 0.969 vs supervised 0.955",
    "issue 10 target (Model II replica): at 10% labels pretrained >= scratch + 0.02 macro AUC; at 100% no worse",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset directory (default: simulate --dataset with --num records)")
    parser.add_argument("--dataset", default="deeplense_model_ii", help="preset simulated when --data is not given")
    parser.add_argument("--num", type=int, default=3000, help="records to simulate")
    parser.add_argument("--task", default="substructure", choices=("substructure", "lens_finding", "regression"))
    parser.add_argument("--target", help="regression target (with --task regression)")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--fractions", default="0.01,0.1,1.0", help="comma-separated fractions of the train split")
    parser.add_argument("--modes", default=",".join(MODES), help="scratch, probe, finetune (comma-separated)")
    parser.add_argument("--pretrain", metavar="RUN_DIR", help="a finished `--task pretrain` run to start from")
    parser.add_argument("--pretrain-method", default="simclr", choices=("simclr", "byol", "mae"))
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="supervised epochs per run")
    parser.add_argument("--probe-epochs", type=int, help="linear-probe epochs (default: --epochs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--runs-dir", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (model.args.*...)")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides of the pretraining run (task.*...)")


def _fractions(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise LensnetError(f"--fractions must be comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise LensnetError(f"--fractions must be in (0, 1], got {text!r}")
    return values


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise LensnetError(f"--modes must be among {', '.join(MODES)}, got {text!r}")
    return modes


def headline(task: str) -> tuple[str, ...]:
    """The test figures reported per row."""
    if task == "regression":
        return ("mae", "r2")
    if task == "lens_finding":
        return ("roc_auc", "accuracy")
    return ("macro_roc_auc", "accuracy")


def run(args: argparse.Namespace) -> list[dict]:
    from lensnet.core.config import deep_update, parse_set
    from lensnet.core.fileio import write_json
    from lensnet.data import open_dataset
    from lensnet.tasks import plots
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.data import train_ids
    from lensnet.training.trainer import run_fit

    fractions, modes = _fractions(args.fractions), _modes(args.modes)
    if args.task == "regression" and not args.target:
        raise LensnetError("--task regression needs --target NAME")
    data = args.data
    if not data:
        from lensnet.simulate.dataset import simulate_dataset

        data = f"tfrecords/bench-{args.dataset}-{args.num}-seed{args.seed}"
        if not (Path(data) / "manifest.json").is_file():
            simulate_dataset(args.dataset, data, num=args.num, seed=args.seed, workers=os.cpu_count() or 1,
                             progress=False)
    info = open_dataset(data)
    runs = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="lensnet-bench-label-eff-"))
    common = {"model": {"name": args.model}, "data": {"path": str(info.path), "batch_size": args.batch_size},
              "run": {"dir": str(runs), "seed": args.seed, "verbose": 2}}
    extra = parse_set(args.set)

    pretrain = args.pretrain
    if any(m != "scratch" for m in modes) and not pretrain:
        overrides = deep_update(deep_update(common, {
            "task": {"method": args.pretrain_method}, "train": {"epochs": args.pretrain_epochs},
            "run": {"name": f"pretrain-{args.pretrain_method}"}}), deep_update(extra, parse_set(args.pretrain_set)))
        print(f"pretraining {args.model} with {args.pretrain_method} on {info.path} (labels unused)", flush=True)
        pretrain = str(run_fit(resolve_fit_config("pretrain", overrides=overrides), progress=False).run_dir)

    keys = headline(args.task)
    rows, ids = [], {}
    for fraction in fractions:
        for mode in modes:
            model = {"init": pretrain if mode != "scratch" else None, "freeze": "backbone" if mode == "probe" else None}
            epochs = args.probe_epochs or args.epochs if mode == "probe" else args.epochs
            overrides = deep_update(deep_update(common, {
                "model": model, "data": {"train_fraction": fraction, "subset_seed": args.subset_seed},
                "train": {"epochs": epochs}, "run": {"name": f"{args.task}-{fraction:g}-{mode}"}}), extra)
            if args.target:
                overrides["task"] = {"target": args.target}
            config = resolve_fit_config(args.task, overrides=overrides)
            subset = train_ids(config, info)
            ids[f"{fraction:g}"] = subset if subset is not None else "all"
            n_train = len(subset) if subset is not None else info.counts[config["data"]["train_split"]]
            print(f"{args.task}: {fraction:g} of the labels ({n_train} records), {mode}", flush=True)
            result = run_fit(config, progress=False)
            row = {"fraction": fraction, "n_train": n_train, "mode": mode}
            row.update({k: result.metrics.get(k) for k in keys})
            row["run"] = str(result.run_dir)
            rows.append(row)

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(os.environ.get("LENSNET_BENCH_DIR", "bench/results"))
    write_json(out / f"label-efficiency-{stamp}-ids.json",
               {"dataset": str(info.path), "subset_seed": args.subset_seed, "pretrain": pretrain, "ids": ids,
                "published": list(ANCHORS)})
    plots.save(_figure(rows, keys[0], args), out / f"label-efficiency-{stamp}.png")
    print("\npublished anchors (issue 10):")
    for line in ANCHORS:
        print(f"  - {line}")
    _verdict(rows, keys[0])
    print(f"subset ids: {out / f'label-efficiency-{stamp}-ids.json'}; plot: {out / f'label-efficiency-{stamp}.png'}\n")
    return rows


def _figure(rows: list[dict], key: str, args: argparse.Namespace):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for mode in MODES:
        points = [(r["fraction"], r[key]) for r in rows if r["mode"] == mode and r[key] is not None]
        if points:
            ax.plot(*zip(*points), "o-", label=mode)
    ax.set_xscale("log")
    ax.set(xlabel="fraction of labelled training records", ylabel=f"test {key}",
           title=f"{args.task}, {args.model}")
    ax.legend(fontsize=8)
    return fig


def _verdict(rows: list[dict], key: str) -> None:
    """Print the issue's target check when the rows allow it (AUC-like keys only)."""
    if key == "mae":
        return
    table = {(r["fraction"], r["mode"]): r[key] for r in rows}
    for fraction, need in ((0.1, 0.02), (1.0, 0.0)):
        scratch = table.get((fraction, "scratch"))
        best = max((table.get((fraction, m)) for m in ("probe", "finetune") if table.get((fraction, m)) is not None),
                   default=None)
        if scratch is None or best is None:
            continue
        ok = best >= scratch + need if need else best >= scratch
        print(f"target at {fraction:g} of the labels: pretrained {best:.4f} vs scratch {scratch:.4f} "
              f"(needs >= +{need:g}): {'met' if ok else 'NOT met'}")
