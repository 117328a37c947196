"""Which self-supervised views keep the substructure signal? Pretrain once per view, score the embedding.

For every view (crop, symmetry, shift, blur, noise, flux; `none`, two identical copies, as the
floor; `default`, the pretrain task's default views) the study pretrains the same model with the
same method for the same budget with ONLY that view on (`--fit-set` items apply to every run),
then scores the frozen embedding with the labels of the dataset (used for scoring only):

- k-NN: DINO's weighted k-nearest-neighbour classifier (k=20), the training split voting for
  each test image: accuracy and macro ROC AUC;
- linear probe: a logistic regression on the standardised training-split embeddings: test
  accuracy and macro ROC AUC, with a 95% bootstrap interval over the test images.

Everything lands in runs/studies/<name>/: study.json (the arguments; a rerun must match them),
views/<view>/run (the pretraining run), views/<view>/result.json (written last: a view with
it is done, so a killed study continues where it stopped), results.csv / results.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json, write_text

STUDIES_DIR = Path("runs/studies")
OFF = {"symmetry": "none", "view_shift": 0, "view_blur": 0.0, "view_flux": 1.0, "view_noise": 0.0, "view_crop": 1.0}
# each view alone, at the strength a SimCLR/BYOL recipe would use on a 64-pixel lens image
VIEWS: dict[str, dict] = {
    "none": {},
    "crop": {"view_crop": 0.4},
    "symmetry": {"symmetry": "auto"},
    "shift": {"view_shift": 4},
    "blur": {"view_blur": 1.0},
    "noise": {"view_noise": 0.1},
    "flux": {"view_flux": 1.25},
    "default": None,  # the pretrain task's own defaults
}
KNN = 20


@dataclass
class ViewStudySpec:
    name: str
    data: str
    views: list[str]
    method: str = "simclr"
    model: str = "cnn_small"
    epochs: int = 3
    batch_size: int = 64
    seed: int = 0
    fit_set: list[str] = field(default_factory=list)
    bootstrap: int = 1000


def check_spec(spec: ViewStudySpec) -> None:
    from lensnet.tasks.pretrain import METHODS

    unknown = [v for v in spec.views if v not in VIEWS]
    if unknown or not spec.views:
        raise LensnetError(f"--views must be among {', '.join(VIEWS)}, got {','.join(spec.views) or 'nothing'}")
    if spec.method not in METHODS or spec.method == "mae":
        raise LensnetError(f"--method must be a view-based method (simclr, byol, dino), got {spec.method!r}")
    for what, value in (("--epochs", spec.epochs), ("--batch-size", spec.batch_size), ("--bootstrap", spec.bootstrap)):
        if value < 1:
            raise LensnetError(f"{what} must be >= 1, got {value}")
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise LensnetError(f"--name must be a plain directory name, got {spec.name!r}")


def view_overrides(view: str) -> dict:
    """The task.* settings of one view: every view off but this one (`default`: the task's defaults)."""
    return {} if VIEWS[view] is None else {**OFF, **VIEWS[view]}


def split_embeddings(run_dir: str | Path, data: str | Path, splits: Sequence[str]) -> dict[str, tuple[list, Any]]:
    """{split: (record ids, embeddings (N, D))} of a pretraining run's exported embedding on `data`."""
    from lensnet.training.evaluation import open_run_on, predict_split

    run, task, info, model = open_run_on(run_dir, data, splits[0])
    out = {}
    for split in splits:
        found = predict_split(model, task, info, split, run.normalisation, batch_size=128, progress=False)
        out[split] = (found["ids"], found["y_pred"])
    return out


def labels_by_id(info: Any, splits: Sequence[str]) -> dict[str, int]:
    from lensnet.data import load

    labels: dict[str, int] = {}
    for split in splits:
        for batch in load(info, split, batch_size=4096, fields=("id", "label"), shuffle=False, normalise="none"):
            labels.update(zip((v.decode() for v in batch["id"].numpy()), batch["label"].numpy().tolist()))
    return labels


def score_embedding(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                    num_classes: int, bootstrap: int, seed: int) -> dict:
    """k-NN and linear-probe accuracy / macro ROC AUC of an embedding (probe AUC with its interval)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lensnet.tasks.scores import macro_auc_with_interval
    from lensnet.tasks.ssl_plots import knn_probabilities

    knn = knn_probabilities(train, train_labels, test, num_classes, k=KNN)
    scaler = StandardScaler().fit(train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(train), train_labels)
    probs = probe.predict_proba(scaler.transform(test))
    interval = macro_auc_with_interval(test_labels, probs, bootstrap, seed)
    return {"knn_accuracy": float(np.mean(knn.argmax(1) == test_labels)),
            "knn_macro_auc": macro_auc_with_interval(test_labels, knn, 0, seed)["macro_roc_auc"],
            "probe_accuracy": float(np.mean(probs.argmax(1) == test_labels)),
            "probe_macro_auc": interval["macro_roc_auc"], "probe_low": interval["low"],
            "probe_high": interval["high"], "n_train": int(len(train)), "n_test": int(len(test))}


def _pretrain(spec: ViewStudySpec, view: str, run_dir: Path) -> None:
    from lensnet.core.config import deep_update, parse_set
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.trainer import fit_or_resume

    overrides = {"model": {"name": spec.model}, "data": {"path": spec.data, "batch_size": spec.batch_size},
                 "task": {"method": spec.method, **view_overrides(view)}, "train": {"epochs": spec.epochs},
                 "run": {"dir": str(run_dir.parent), "name": run_dir.name, "seed": spec.seed, "verbose": 0}}
    fit_or_resume(resolve_fit_config("pretrain", None, deep_update(overrides, parse_set(spec.fit_set))),
                  progress=False, log=lambda line: None)


def run_view(spec: ViewStudySpec, view: str, root: Path, info: Any, labels: dict, log: Callable[[str], None]) -> dict:
    import json

    done = root / "views" / view / "result.json"
    if done.is_file():
        log(f"view {view} already done")
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    log(f"view {view}: pretraining {spec.model} with {spec.method} for {spec.epochs} epoch(s)")
    run_dir = root / "views" / view / "run"
    _pretrain(spec, view, run_dir)
    emb = split_embeddings(run_dir, spec.data, ("train", "test"))
    (train_ids, train), (test_ids, test) = emb["train"], emb["test"]
    result = {"view": view, "settings": view_overrides(view) or "task defaults",
              **score_embedding(train, np.array([labels[i] for i in train_ids]), test,
                                np.array([labels[i] for i in test_ids]), len(info.class_names), spec.bootstrap,
                                spec.seed),
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(done, result)
    return result


def run_study(spec: ViewStudySpec, studies_dir: Path, log: Callable[[str], None]) -> Path:
    """Run (or continue) a views study; returns its directory."""
    import json

    from lensnet.data import open_dataset
    from lensnet.studies.detectability import table_csv

    check_spec(spec)
    info = open_dataset(spec.data)
    if len(info.class_names) < 2:
        raise LensnetError(f"dataset {info.path} has no classes: the views study scores the embedding with labels")
    root = studies_dir / spec.name
    path = root / "study.json"
    if path.is_file() and json.loads(path.read_text()) != asdict(spec):
        raise LensnetError(f"study {root} exists with other arguments; give another --name or the same arguments")
    write_json(path, asdict(spec))
    labels = labels_by_id(info, ("train", "test"))
    rows = [run_view(spec, view, root, info, labels, log) for view in spec.views]
    flat = [{k: v for k, v in r.items() if k != "settings"} for r in rows]
    write_text(root / "results.csv", table_csv(flat))
    write_json(root / "results.json", {"study": asdict(spec), "rows": rows})
    return root
