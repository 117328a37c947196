"""The pipeline's stages: exported models (finder, classifier, regressor, anomaly scorer) and their table columns.

Each stage is an export read by lensnet.serving (card + runtime). Its columns come from the export's output
spec through the output kind's own `csv_header`/`csv_rows` (what predict writes), prefixed with the stage
name; values columns carry their unit in brackets (`regressor_radius[arcsec]`). The finder must return one
detection score per image: a binary probability or a score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lensnet.artifacts.exports import ExportedModel, load_export
from lensnet.artifacts.outputs import PredictSettings
from lensnet.core.errors import LensnetError
from lensnet.serving.runtimes import Runner, open_runner

STAGES = ("finder", "classifier", "regressor", "anomaly")


@dataclass
class Stage:
    name: str  # one of STAGES
    source: str  # the export directory as given
    exported: ExportedModel
    runner: Runner

    @property
    def columns(self) -> list[str]:
        spec = self.exported.spec
        header = spec.handler.csv_header(spec)
        if spec.kind == "values" and spec.units:
            units = dict(zip(spec.columns, spec.units))
            header = [f"{h}[{units[h]}]" if units.get(h) else h for h in header]
        return [f"{self.name}_{h}" for h in header]

    def cells(self, outputs: np.ndarray, sources: list[str], threshold: float) -> list[list[str]]:
        spec = self.exported.spec
        return spec.handler.csv_rows(spec, outputs, sources, PredictSettings(threshold=threshold))

    def card_summary(self) -> dict[str, Any]:
        card = self.exported.card
        return {"path": self.source, "name": self.exported.name, "version": self.exported.version, "card": card}


def open_stage(name: str, model_dir: str, runtime: str, threads: int | None) -> Stage:
    exported = load_export(model_dir)
    return Stage(name, model_dir, exported, open_runner(exported, runtime, threads))


def detection_scores(stage: Stage, outputs: np.ndarray) -> np.ndarray:
    """One number per image from the finder: the positive class's probability, or the score."""
    check_finder(stage)
    return np.asarray(outputs, dtype=np.float64)[:, 0]


def check_finder(stage: Stage) -> None:
    """A finder returns one detection score per image; anything else is refused before any work."""
    spec = stage.exported.spec
    if spec.kind == "score" or (spec.kind == "probabilities" and spec.positive_class is not None):
        return
    raise LensnetError(
        f"--finder {stage.source}: a finder returns one detection score per image (a binary probability or a "
        f"score); this export returns {spec.kind} over {', '.join(spec.columns)}"
    )


def check_inputs(stages: list[Stage]) -> tuple[int, int, int]:
    """Every stage scores the finder's tiles: they must take the same image shape."""
    shape = stages[0].exported.input_shape
    for stage in stages[1:]:
        if stage.exported.input_shape != shape:
            raise LensnetError(f"--{stage.name} {stage.source} takes images {stage.exported.input_shape}; "
                               f"the finder takes {shape}")
    return shape
