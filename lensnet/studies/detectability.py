"""How much substructure can a network see? Sweep one physics knob, train at a fixed budget, score ROC AUC.

For every value of the knob the study simulates a dataset (the preset with that value), trains the
same model for the same budget, and scores the test split: ROC AUC of CDM vs no_sub and of axion
vs no_sub (each on the records of those two classes, score p(class) / (p(class) + p(no_sub))), with
percentile bootstrap intervals. Everything lands in runs/studies/<name>/:

    study.json                  the study's arguments (a rerun must match them)
    points/<i>/dataset.yaml     the resolved dataset config of point i
    points/<i>/data/            its TFRecords (lensnet.simulate)
    points/<i>/run/             its training run (lensnet.fit)
    points/<i>/result.json      its scores (written last: a point with this file is done)
    results.csv, results.json   the table; detectability.png the curves

Each stage resumes: the simulator keeps complete shards, the trainer resumes from its last epoch,
and finished points are skipped, so a killed study continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.config import dump_yaml, get_dotted, put_dotted
from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json, write_text

STUDIES_DIR = Path("runs/studies")
# a pair is scored only when the dataset has both classes (wdm vs cdm: can a network tell the dark matter?)
PAIRS = (("cdm", "no_sub"), ("axion", "no_sub"), ("wdm", "no_sub"), ("wdm", "cdm"))


@dataclass(frozen=True)
class Knob:
    key: str  # dotted dataset-config key the value is written to
    description: str
    log_scale: bool = True
    needs: tuple[str, ...] = ()  # dataset-config keys that must exist for the knob to apply
    needs_class: str | None = None  # a class the dataset must have for the knob to change anything


KNOBS: dict[str, Knob] = {
    "f_sub": Knob("substructure.f_sub", "projected substructure mass fraction (physical presets)",
                  needs=("substructure.f_sub",)),
    "m_min": Knob("substructure.m_min", "lowest subhalo mass, Msun", needs=("substructure.m_min",)),
    "m_hm": Knob("wdm.log10_m_hm", "log10 half-mode mass of the wdm class, Msun (--data-set classes=[no_sub,cdm,wdm])",
                 log_scale=False, needs=("wdm.log10_m_hm",), needs_class="wdm"),
    "vortex_mass": Knob("axion.vortex_mass", "total mass of the axion vortex, Msun", needs=("axion.vortex_mass",)),
    "exposure_time": Knob("instrument.exposure_time", "total exposure time, s (sets the noise level)",
                          needs=("instrument.exposure_time",)),
}


@dataclass
class StudySpec:
    name: str
    knob: str
    grid: list[float]
    dataset: str
    num: int
    model: str
    epochs: int
    seed: int = 0
    data_set: list[str] = field(default_factory=list)  # extra dataset --set items, applied to every point
    fit_set: list[str] = field(default_factory=list)  # extra fit --set items
    bootstrap: int = 1000


def check_spec(spec: StudySpec) -> None:
    """Every argument is checked before anything is written."""
    if spec.knob not in KNOBS:
        raise LensnetError(f"unknown knob {spec.knob!r}; knobs: {', '.join(sorted(KNOBS))}")
    if not spec.grid:
        raise LensnetError("--grid is empty: give at least one value, e.g. --grid 0.005,0.01,0.02")
    if any(not math.isfinite(v) for v in spec.grid) or (KNOBS[spec.knob].log_scale and min(spec.grid) <= 0):
        raise LensnetError(f"--grid for {spec.knob} needs finite positive values, got {spec.grid}")
    if len(set(spec.grid)) != len(spec.grid):
        raise LensnetError(f"--grid repeats a value: {spec.grid}")
    for what, value in (("--num", spec.num), ("--epochs", spec.epochs), ("--bootstrap", spec.bootstrap)):
        if value < 1:
            raise LensnetError(f"{what} must be >= 1, got {value}")
    if spec.seed < 0:
        raise LensnetError(f"--seed must be >= 0, got {spec.seed}")
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise LensnetError(f"--name must be a plain directory name, got {spec.name!r}")


def parse_grid(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LensnetError(f"--grid must be comma-separated numbers, got {text!r}") from None


def dataset_config(spec: StudySpec, value: float) -> dict:
    """The resolved dataset config of one grid point (the preset, the user's --data-set items, the knob)."""
    from lensnet.core.config import parse_set
    from lensnet.simulate.presets import resolve_dataset_config

    overrides = parse_set(spec.data_set)
    knob = KNOBS[spec.knob]
    base = resolve_dataset_config(spec.dataset, copy.deepcopy(overrides))
    for key in knob.needs:
        try:
            get_dotted(base, key)
        except (KeyError, LensnetError, TypeError):
            raise LensnetError(f"knob {spec.knob} needs {key} in the dataset config, which preset "
                               f"{spec.dataset!r} does not have") from None
    classes = list(base.get("classes") or [])
    if "no_sub" not in classes or len(classes) < 2:
        raise LensnetError(f"dataset {spec.dataset!r} has classes {classes}; a detectability study needs no_sub "
                           "and at least one substructure class")
    if knob.needs_class and knob.needs_class not in classes:
        raise LensnetError(f"knob {spec.knob} changes the {knob.needs_class} class, which dataset {spec.dataset!r} "
                           f"does not have (classes {classes}); add it, e.g. --data-set "
                           f"classes=[{','.join([*classes, knob.needs_class])}]")
    key = knob.key
    if key == "instrument.exposure_time" and base["instrument"]["name"] == "custom":
        key = "instrument.custom.exposure_time"
    put_dotted(overrides, key, float(value))
    return resolve_dataset_config(spec.dataset, overrides)


def _fit_config(spec: StudySpec, data_dir: Path, run_dir: Path) -> dict:
    from lensnet.core.config import deep_update, parse_set
    from lensnet.training.config import resolve_fit_config

    overrides: dict = {}
    for key, value in (("data.path", str(data_dir)), ("model.name", spec.model), ("train.epochs", spec.epochs),
                       ("run.seed", spec.seed), ("run.dir", str(run_dir.parent)), ("run.name", run_dir.name)):
        put_dotted(overrides, key, value)
    return resolve_fit_config("substructure", None, deep_update(overrides, parse_set(spec.fit_set)))


def pair_auc(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], positive: str, negative: str,
             bootstrap: int, seed: int) -> dict:
    """ROC AUC of `positive` vs `negative` on the records of those two classes, with a 95% bootstrap interval."""
    from sklearn.metrics import roc_auc_score

    if positive not in class_names or negative not in class_names:
        return {"auc": None, "low": None, "high": None, "n": 0}
    p, n = class_names.index(positive), class_names.index(negative)
    keep = (labels == p) | (labels == n)
    y = (labels[keep] == p).astype(int)
    pp, pn = probs[keep, p], probs[keep, n]
    score = pp / np.maximum(pp + pn, 1e-30)
    if y.min() == y.max():
        return {"auc": None, "low": None, "high": None, "n": int(y.size)}
    auc = float(roc_auc_score(y, score))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        index = rng.integers(0, y.size, y.size)
        if y[index].min() != y[index].max():
            draws.append(roc_auc_score(y[index], score[index]))
    low, high = (np.percentile(draws, [2.5, 97.5]).tolist() if draws else (None, None))
    return {"auc": auc, "low": low, "high": high, "n": int(y.size)}


def predictions_on_test(run_dir: Path, data_dir: Path, wrap: Callable | None = None,
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels (in the run's class order) and class probabilities of the run's best model on the test split, in
    the split's record order; `wrap(model)` scores a wrapped model instead (e.g. one that erases part of each image)."""
    from lensnet.training.evaluation import open_run_on, predict_split

    run, task, info, model = open_run_on(run_dir, data_dir, "test")
    result = predict_split(wrap(model) if wrap else model, task, info, "test", run.normalisation, batch_size=128,
                           progress=False)
    return np.asarray(result["y_true"]).astype(int), result["y_pred"], list(run.output["class_names"])


def run_point(spec: StudySpec, index: int, value: float, root: Path, log: Callable[[str], None]) -> dict:
    from lensnet.artifacts.runs import read_run
    from lensnet.simulate.dataset import simulate_dataset
    from lensnet.training.trainer import fit_or_resume

    point = root / "points" / f"{index:02d}"
    done = point / "result.json"
    if done.is_file():
        import json

        log(f"point {index} ({spec.knob}={value:g}) already done")
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    config = dataset_config(spec, value)
    write_text(point / "dataset.yaml", dump_yaml(config))
    log(f"point {index} ({spec.knob}={value:g}): simulating {spec.num} images")
    simulate_dataset(str(point / "dataset.yaml"), point / "data", num=spec.num, seed=spec.seed,
                     workers=1, progress=False)
    log(f"point {index}: training {spec.model} for {spec.epochs} epoch(s)")
    run_dir = point / "run"
    fit_or_resume(_fit_config(spec, point / "data", run_dir), progress=False, log=log)
    labels, probs, class_names = predictions_on_test(run_dir, point / "data")
    result: dict[str, Any] = {"index": index, "knob": spec.knob, "value": float(value),
                              "best_epoch": read_run(run_dir).best_epoch, "n_test": int(labels.size)}
    for positive, negative in PAIRS:
        scores = pair_auc(labels, probs, class_names, positive, negative, spec.bootstrap, spec.seed + index)
        result.update({f"auc_{positive}_vs_{negative}{suffix}": scores[key]
                       for key, suffix in (("auc", ""), ("low", "_low"), ("high", "_high"), ("n", "_n"))})
    result["seconds"] = time.perf_counter() - t0
    write_json(done, result)
    return result


def _claim(root: Path, spec: StudySpec) -> None:
    """Create the study directory, or check that an existing one was made with the same arguments."""
    import json

    path = root / "study.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != asdict(spec):
            differ = sorted(k for k in saved if saved.get(k) != asdict(spec).get(k))
            raise LensnetError(f"study {root} exists with other arguments ({', '.join(differ)}); "
                               "give another --name or the same arguments to resume it")
        return
    write_json(path, asdict(spec))


def table_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot(rows: list[dict], spec: StudySpec, path: Path) -> Path:
    from lensnet.tasks import plots

    fig, ax = plots.plt.subplots(figsize=(5.5, 4))
    x = np.array([r["value"] for r in rows])
    for positive, negative in PAIRS:
        key = f"auc_{positive}_vs_{negative}"
        y = np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)
        if np.isnan(y).all():
            continue
        low = np.array([np.nan if r.get(f"{key}_low") is None else r[f"{key}_low"] for r in rows], dtype=float)
        high = np.array([np.nan if r.get(f"{key}_high") is None else r[f"{key}_high"] for r in rows], dtype=float)
        ax.errorbar(x, y, yerr=[np.nan_to_num(y - low), np.nan_to_num(high - y)], marker="o", capsize=3,
                    label=f"{positive} vs {negative}")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    if KNOBS[spec.knob].log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(f"{spec.knob}: {KNOBS[spec.knob].description}")
    ax.set_ylabel("test ROC AUC (95% bootstrap)")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(f"{spec.dataset}, {spec.model}, {spec.num} images, {spec.epochs} epochs", fontsize=9)
    ax.legend(fontsize=8)
    return plots.save(fig, path)


def run_study(spec: StudySpec, studies_dir: Path = STUDIES_DIR, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the study; returns its directory."""
    check_spec(spec)
    for value in spec.grid:  # every point's config must resolve before anything is written
        dataset_config(spec, value)
    root = Path(studies_dir) / spec.name
    _claim(root, spec)
    rows = [run_point(spec, i, value, root, log) for i, value in enumerate(spec.grid)]
    write_json(root / "results.json", {"study": asdict(spec), "rows": rows})
    write_text(root / "results.csv", table_csv(rows))
    plot(rows, spec, root / "detectability.png")
    return root
