"""One exported version and its card."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lensnet.artifacts.export_layout import CARD, CARD_FORMAT, ONNX_FILE
from lensnet.artifacts.outputs import OutputKind, OutputSpec
from lensnet.artifacts.versions import version_dir
from lensnet.core.errors import LensnetError


def spec_from_card(card: dict) -> OutputSpec:
    """The output spec a card describes (its "output" entry, less the exported "shape")."""
    return OutputSpec.from_json({k: v for k, v in card["output"].items() if k != "shape"})


@dataclass(frozen=True)
class ExportedModel:
    """One exported version and its card."""

    name: str
    version: int
    path: Path
    card: dict

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.card["input"]["shape"][1:])  # type: ignore[return-value]

    @property
    def spec(self) -> OutputSpec:
        return spec_from_card(self.card)

    @property
    def kind(self) -> OutputKind:
        """The output kind's behaviour (CSV rows, JSON, ...)."""
        return self.spec.handler

    @property
    def output_name(self) -> str:
        return str(self.card["output"]["name"])

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def int8_path(self) -> Path | None:
        """model.int8.onnx when the version was exported with --quantize int8."""
        name = self.card.get("files", {}).get("onnx_int8")
        return self.path / name if name else None

    @property
    def tflite_int8_path(self) -> Path | None:
        """model.int8.tflite when the version was exported with --quantize int8 and TFLite converted it."""
        name = self.card.get("files", {}).get("tflite_int8")
        return self.path / name if name else None


def load_export(model_dir: str | os.PathLike, version: int | None = None) -> ExportedModel:
    """Read the card of `version` (newest when None) of the export at `model_dir`."""
    path = version_dir(model_dir, version)
    card_path = path / CARD
    try:
        card = json.loads(card_path.read_text())
        if isinstance(card, dict) and card.get("format_version", 0) < CARD_FORMAT:
            raise LensnetError(f"format_version {card.get('format_version')} was written by an older lensnet "
                               f"(this one reads {CARD_FORMAT}); export the run again")
        card["input"]["shape"], card["output"]["shape"]  # noqa: B018
        spec_from_card(card)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, LensnetError) as exc:
        raise LensnetError(f"{card_path} is not a valid model card: {type(exc).__name__}: {exc}") from None
    return ExportedModel(name=Path(model_dir).resolve().name, version=int(path.name), path=path, card=card)
