"""What a task's model returns: the output spec that export, predict, serve, evaluate and runs read.

A task declares one `OutputSpec` (`Task.output_spec()`); it is stored in run.json and card.json,
and every stage downstream dispatches on `spec.kind` through the registry below, never through
`if kind == ...` chains of its own. An output kind is one `OutputKind` subclass registered with
`@register_output_kind`; adding one never edits export, predict or serve.

Kinds:
    probabilities  (N, K) class probabilities in `class_names` order; a binary task returns (N, 1),
                   the probability of `positive_class`
    values         (N, K) physical values named by `columns`, in `units`
    image          (N, H, W, C) an image in the units of the input pixels (`image` holds its shape
                   and how the model's normalised output is mapped back)
    score          (N, 1) one number per image; `meaning` says what a high score means
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from lensnet.errors import LensnetError


@dataclass(frozen=True)
class OutputSpec:
    kind: str  # a registered output kind: probabilities | values | image | score
    name: str  # the output's name in the exported signature and in serve's responses
    columns: tuple[str, ...] = ()  # one per output column (table kinds); empty for images
    class_names: tuple[str, ...] = ()  # probabilities: the classes, in column order
    positive_class: str | None = None  # probabilities of a binary task: the class whose probability is returned
    units: tuple[str, ...] = ()  # values: one unit per column ("" when dimensionless)
    meaning: str = ""  # score: what a high value means
    image: dict | None = None  # image: {"shape": [H, W, C], "inverse": normalisation inverse spec}

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputSpec:
        if not isinstance(data, dict) or "kind" not in data or "name" not in data:
            raise LensnetError(f"output spec must be a mapping with 'kind' and 'name', got {data!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise LensnetError(f"output spec: unknown field(s) {', '.join(unknown)}")
        values = {k: (tuple(v) if isinstance(v, list) and k != "image" else v) for k, v in data.items()}
        spec = cls(**values)
        output_kind(spec.kind)  # an unknown kind fails here, where the spec is read
        return spec


class OutputKind:
    """How one kind of output is checked, verified, tabulated and written. Subclasses override."""

    name: ClassVar[str]

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        """Raise LensnetError if a batch of outputs of `shape` (N first) does not fit `spec`."""
        raise NotImplementedError


_KINDS: dict[str, OutputKind] = {}


def register_output_kind(cls: type[OutputKind]) -> type[OutputKind]:
    _KINDS[cls.name] = cls()
    return cls


def output_kind(name: str) -> OutputKind:
    if name not in _KINDS:
        raise LensnetError(f"unknown output kind {name!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def list_output_kinds() -> list[str]:
    return sorted(_KINDS)


class _Table(OutputKind):
    """Kinds whose output is a (N, K) table with one named column each."""

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        if len(shape) != 2 or shape[1] != len(spec.columns):
            raise LensnetError(
                f"a {spec.kind} output ({', '.join(spec.columns)}) has shape (N, {len(spec.columns)}); "
                f"the model returns {tuple(shape)}"
            )


@register_output_kind
class Probabilities(_Table):
    name = "probabilities"


@register_output_kind
class Values(_Table):
    name = "values"


@register_output_kind
class Score(_Table):
    name = "score"


@register_output_kind
class Image(OutputKind):
    name = "image"

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        expected = tuple((spec.image or {}).get("shape") or ())
        if len(shape) != 4 or (expected and tuple(shape[1:]) != expected):
            raise LensnetError(f"an image output has shape (N, {', '.join(map(str, expected))}); "
                               f"the model returns {tuple(shape)}")
