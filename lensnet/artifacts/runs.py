"""A training run directory: what lives where, and `run.json`, the contract between stages.

    runs/<name>/
      config.yaml          fully resolved config (what `lensnet.fit --config` takes back)
      versions.json        package versions
      run.json             RunInfo below: task, outputs, input shape, normalisation, dataset, status
      checkpoints/best.keras, last.keras, state.json
      logs/                TensorBoard (train/, validation/, eval/)
      history.csv          per-epoch metrics
      metrics.json         test-split metrics
      plots/*.png

A saved model takes normalised images (N, H, W, C) float32 and returns what `output` (the task's
OutputSpec, lensnet.artifacts.outputs) describes: class probabilities, named values, a score or an
image. Read it with `OutputSpec.from_json(run.output)`; every stage dispatches on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json

RUN_INFO = "run.json"
BEST = "checkpoints/best.keras"
LAST = "checkpoints/last.keras"


@dataclass
class RunInfo:
    task: str
    model: str
    input_shape: list[int]
    normalisation: dict
    dataset: dict = field(default_factory=dict)  # path, name, checksum (sha256 of manifest.json)
    seed: int = 0
    status: str = "running"  # running | finished
    epochs_done: int = 0
    best_epoch: int | None = None
    output: dict = field(default_factory=dict)  # the task's OutputSpec.to_json()
    task_state: dict = field(default_factory=dict)  # Task.state(): what the task learned from the training data


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    run_dir = Path(run_dir)
    path = run_dir / RUN_INFO
    if not run_dir.is_dir():
        raise LensnetError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise LensnetError(f"{run_dir} is not a lensnet run: no {RUN_INFO}")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        if isinstance(data, dict) and "output_kind" in data and not data.get("output"):
            raise LensnetError(f"{path} was written by an older lensnet (output_kind, no output spec); "
                               "retrain the run with this version")
        return RunInfo(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise LensnetError(f"{path} is not a valid run description: {exc}") from None


def write_run(run_dir: str | os.PathLike, info: RunInfo) -> None:
    write_json(Path(run_dir) / RUN_INFO, asdict(info))


def best_model_path(run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    for candidate in (run_dir / BEST, run_dir / LAST):
        if candidate.is_file():
            return candidate
    raise LensnetError(f"{run_dir} holds no trained model ({BEST} is missing)")
