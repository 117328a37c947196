"""What a task's model returns: the output spec that export, predict, serve, evaluate and runs read.

A task declares one `OutputSpec` (`Task.output_spec()`); it is stored in run.json and card.json,
and every stage downstream dispatches on `spec.kind` through the registry below, never through
`if kind == ...` chains of its own. An output kind is one `OutputKind` subclass registered with
`@register_output_kind`; adding one never edits export, predict or serve. A kind registers when its
module is imported: the five below always; one defined in a task module once lensnet.tasks is imported
(this module sits below the tasks and never imports them).

Kinds:
    probabilities  (N, K) class probabilities in `class_names` order; a binary task returns (N, 1),
                   the probability of `positive_class`
    values         (N, K) physical values named by `columns`, in `units`
    image          (N, H, W, C) an image in the units of the input pixels (`image` holds its shape
                   and how the model's normalised output is mapped back: see `Image`)
    score          (N, 1) one number per image; `meaning` says what a high score means
    samples        (N, S, D) S posterior samples of the D parameters named by `columns`, in `units`

Each kind's methods: check_spec, check_shape (export refuses a model that does not fit),
postprocess (TF ops inside the exported function), tolerance (export verification),
csv_header / csv_rows (predict; an image kind writes one file per image), json_outputs (serve),
truth_label (sample-image titles). Whether a dataset can be scored by a run is the task's
question (`Task.setup` with the run's state), not the output's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lensnet.core.errors import LensnetError


@dataclass(frozen=True)
class OutputSpec:
    kind: str  # a registered output kind: probabilities | values | image | score
    name: str  # the output's name in the exported signature and in serve's responses
    columns: tuple[str, ...] = ()  # one per output column (table kinds); empty for images
    class_names: tuple[str, ...] = ()  # probabilities: the classes, in column order
    positive_class: str | None = None  # probabilities of a binary task: the class whose probability is returned
    units: tuple[str, ...] = ()  # values: one unit per column ("" when dimensionless)
    meaning: str = ""  # score: what a high value means
    image: dict | None = None  # image: {"shape": [H, W, C], "inverse": "input" | a normalisation spec | None}

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
        try:
            spec = cls(**values)
        except TypeError as exc:
            raise LensnetError(f"output spec: {exc}") from None
        output_kind(spec.kind).check_spec(spec)  # an unknown kind or a bad spec fails here, where it is read
        return spec

    @property
    def handler(self) -> OutputKind:
        """The registered behaviour of this spec's kind."""
        return output_kind(self.kind)


@dataclass
class PredictSettings:
    """What `lensnet.predict` asks of an output kind when it turns outputs into CSV rows."""

    threshold: float = 0.5  # binary probabilities: p >= threshold is the positive class
    image_dir: Path | None = None  # image outputs: the folder their files go to
    image_format: str = "npy"  # image outputs: npy | fits
    input_hdu: int | str | None = None  # FITS inputs: the HDU read (its header is kept in FITS image outputs)
    written: list[Path] = field(default_factory=list)  # image outputs: files written so far


class OutputKind:
    """How one kind of output is checked, exported, verified, tabulated and served.

    The defaults fit a (N, K) table of numbers; subclasses override what differs. Every method
    takes the spec, so one registered instance serves every run of its kind.
    """

    name: ClassVar[str]

    def check_spec(self, spec: OutputSpec) -> None:
        """Raise LensnetError if the spec's own fields do not fit together."""

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        """Raise LensnetError if a batch of outputs of `shape` (N first) does not fit `spec`."""
        raise NotImplementedError

    def postprocess(self, spec: OutputSpec, outputs: Any, images: Any, normalisation: dict) -> Any:
        """TF ops applied inside the exported function to the model's outputs (given the raw `images`)."""
        return outputs

    def tolerance(self, spec: OutputSpec, reference: np.ndarray, atol: float) -> float:
        """Max |difference| allowed between Keras and an exported runtime on `reference` outputs."""
        return float(atol)

    def csv_header(self, spec: OutputSpec) -> list[str]:
        """predict's CSV columns after `source`."""
        return list(spec.columns)

    def csv_rows(
        self, spec: OutputSpec, outputs: np.ndarray, sources: list[str], settings: PredictSettings
    ) -> list[list[str]]:
        """predict's CSV cells after `source`, one row per image."""
        return [[format(float(v), ".7g") for v in row] for row in outputs]

    def json_outputs(self, spec: OutputSpec, outputs: np.ndarray) -> list:
        """serve's JSON for a batch: nested lists, one entry per image (TF Serving's REST API)."""
        return np.asarray(outputs, dtype=np.float32).tolist()

    def truth_label(self, spec: OutputSpec, value: Any) -> str:
        """Short text for one ground-truth value (sample-image titles)."""
        value = float(value)
        return f"true {value:.3g}" if np.isfinite(value) else "true n/a"


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


def _check_table_shape(spec: OutputSpec, shape: tuple[int | None, ...], width: int) -> None:
    if len(shape) != 2 or shape[1] != width:
        named = f" ({', '.join(spec.columns)})" if spec.columns else ""
        raise LensnetError(
            f"a {spec.kind} output{named} has shape (N, {width}); the model returns {tuple(shape)}"
        )


@register_output_kind
class Probabilities(OutputKind):
    """Class probabilities; a binary task returns one column, the probability of `positive_class`."""

    name = "probabilities"

    def check_spec(self, spec: OutputSpec) -> None:
        if len(spec.class_names) < 2:
            raise LensnetError(f"output spec {spec.name!r}: probabilities need at least 2 class_names")
        if spec.positive_class is not None:
            if spec.positive_class not in spec.class_names or len(spec.class_names) != 2:
                raise LensnetError(f"output spec {spec.name!r}: positive_class {spec.positive_class!r} must be "
                                   f"one of exactly 2 class_names ({', '.join(spec.class_names)})")
            if len(spec.columns) != 1:
                raise LensnetError(f"output spec {spec.name!r}: a binary output has one column")
        elif len(spec.columns) != len(spec.class_names):
            raise LensnetError(f"output spec {spec.name!r}: {len(spec.columns)} columns for "
                               f"{len(spec.class_names)} classes")

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        _check_table_shape(spec, shape, len(spec.columns))

    def _negative(self, spec: OutputSpec) -> str:
        return next(c for c in spec.class_names if c != spec.positive_class)

    def csv_header(self, spec: OutputSpec) -> list[str]:
        if spec.positive_class is not None:  # both classes' probabilities, negative first, as classes read
            return ["predicted", f"p_{self._negative(spec)}", f"p_{spec.positive_class}"]
        return ["predicted", *spec.columns]

    def csv_rows(
        self, spec: OutputSpec, outputs: np.ndarray, sources: list[str], settings: PredictSettings
    ) -> list[list[str]]:
        if spec.positive_class is not None:
            negative = self._negative(spec)
            p = outputs[:, 0]
            predicted = [spec.positive_class if v >= settings.threshold else negative for v in p]
            table = np.stack([1.0 - p, p], axis=1)
        else:
            predicted = [spec.class_names[k] for k in np.argmax(outputs, axis=1)]
            table = outputs
        return [[name, *(format(float(v), ".6g") for v in row)] for name, row in zip(predicted, table)]

    def truth_label(self, spec: OutputSpec, value: Any) -> str:
        if spec.positive_class is not None:  # binary targets are 1 for the positive class
            return f"true {spec.positive_class if int(value) == 1 else self._negative(spec)}"
        return f"true {spec.class_names[int(value)]}"


@register_output_kind
class Values(OutputKind):
    """Physical values, one named column each, in `units`."""

    name = "values"

    def check_spec(self, spec: OutputSpec) -> None:
        if not spec.columns:
            raise LensnetError(f"output spec {spec.name!r}: values need at least one column name")
        if spec.units and len(spec.units) != len(spec.columns):
            raise LensnetError(f"output spec {spec.name!r}: {len(spec.units)} units for {len(spec.columns)} columns")

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        _check_table_shape(spec, shape, len(spec.columns))


@register_output_kind
class Score(OutputKind):
    """One number per image; `meaning` says what a high score means."""

    name = "score"

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        _check_table_shape(spec, shape, 1)

    def tolerance(self, spec: OutputSpec, reference: np.ndarray, atol: float) -> float:
        # A score is unbounded (a negative ELBO is in the thousands): float32 rounding grows with it,
        # so the tolerance is `atol` relative to the largest |score|, and never below `atol`.
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return float(atol) * max(1.0, scale)

    def csv_header(self, spec: OutputSpec) -> list[str]:
        return ["score"]


SUMMARY_QUANTILES = (0.05, 0.16, 0.5, 0.84, 0.95)  # predict's CSV: posterior quantiles per parameter


@register_output_kind
class Samples(OutputKind):
    """Posterior samples: (N, S, D), S samples of the D parameters named by `columns`, in `units`.

    predict writes, per parameter, the posterior mean, std and quantiles (SUMMARY_QUANTILES); serve
    returns the samples themselves.
    """

    name = "samples"

    def check_spec(self, spec: OutputSpec) -> None:
        if not spec.columns:
            raise LensnetError(f"output spec {spec.name!r}: samples need at least one column (parameter) name")
        if spec.units and len(spec.units) != len(spec.columns):
            raise LensnetError(f"output spec {spec.name!r}: {len(spec.units)} units for {len(spec.columns)} columns")

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        if len(shape) != 3 or shape[2] != len(spec.columns):
            raise LensnetError(f"a samples output ({', '.join(spec.columns)}) has shape (N, S, {len(spec.columns)}); "
                               f"the model returns {tuple(shape)}")

    def tolerance(self, spec: OutputSpec, reference: np.ndarray, atol: float) -> float:
        # float32 rounding grows with the samples' magnitude (a log10 mass near -23): relative to it
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return float(atol) * max(1.0, scale)

    def csv_header(self, spec: OutputSpec) -> list[str]:
        stats = ["mean", "std", *(f"q{round(q * 100):02d}" for q in SUMMARY_QUANTILES)]
        return [f"{c}_{s}" for c in spec.columns for s in stats]

    def csv_rows(self, spec: OutputSpec, outputs: np.ndarray, sources: list[str],
                 settings: PredictSettings) -> list[list[str]]:
        samples = np.asarray(outputs, dtype=np.float64)
        mean, std = samples.mean(axis=1), samples.std(axis=1)
        quantiles = np.quantile(samples, SUMMARY_QUANTILES, axis=1)  # (Q, N, D)
        rows = []
        for n in range(len(samples)):
            row = []
            for d in range(samples.shape[2]):
                row += [mean[n, d], std[n, d], *quantiles[:, n, d]]
            rows.append([format(float(v), ".7g") for v in row])
        return rows

    def truth_label(self, spec: OutputSpec, value: Any) -> str:
        values = np.atleast_1d(np.asarray(value, dtype=np.float64))
        return "true " + ", ".join(f"{v:.3g}" if np.isfinite(v) else "n/a" for v in values)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@register_output_kind
class Image(OutputKind):
    """An image per input image, in the units of the input pixels.

    `spec.image` = {"shape": [H, W, C], "inverse": ...}: how the model's normalised output is mapped
    back to pixels, inside the exported function: "input" (the run's own input normalisation, inverted
    with the raw input's statistics), a normalisation spec (lensnet.data.normalise), or absent/None
    when the model already returns pixels.
    """

    name = "image"

    def check_spec(self, spec: OutputSpec) -> None:
        image = spec.image
        if not isinstance(image, dict) or not isinstance(image.get("shape"), (list, tuple)) or len(
            image["shape"]
        ) != 3 or not all(isinstance(d, int) and d > 0 for d in image["shape"]):
            raise LensnetError(f"output spec {spec.name!r}: an image output needs image.shape [H, W, C]")
        unknown = sorted(set(image) - {"shape", "inverse"})
        if unknown:
            raise LensnetError(f"output spec {spec.name!r}: unknown image field(s) {', '.join(unknown)}")
        inverse = image.get("inverse")
        if inverse not in (None, "input"):
            from lensnet.data.normalise import check_spec

            if not isinstance(inverse, dict):
                raise LensnetError(f"output spec {spec.name!r}: image.inverse must be 'input', a normalisation "
                                   f"spec or null, got {inverse!r}")
            check_spec(inverse)

    def check_shape(self, spec: OutputSpec, shape: tuple[int | None, ...]) -> None:
        expected = tuple(spec.image["shape"])
        if len(shape) != 4 or tuple(shape[1:]) != expected:
            raise LensnetError(f"an image output has shape (N, {', '.join(map(str, expected))}); "
                               f"the model returns {tuple(shape)}")

    def postprocess(self, spec: OutputSpec, outputs: Any, images: Any, normalisation: dict) -> Any:
        from lensnet.data.normalise import invert_normalisation

        inverse = spec.image.get("inverse")
        if inverse is None:
            return outputs
        return invert_normalisation(outputs, normalisation if inverse == "input" else inverse, images)

    def tolerance(self, spec: OutputSpec, reference: np.ndarray, atol: float) -> float:
        # Pixels come back in input units (counts, flux...): a fixed 1e-4 means nothing there, so the
        # tolerance is `atol` of the outputs' range.
        span = float(np.ptp(reference)) if reference.size else 0.0
        return float(atol) * span if span > 0 else float(atol)

    def csv_header(self, spec: OutputSpec) -> list[str]:
        return [f"{spec.name}_file"]

    def csv_rows(
        self, spec: OutputSpec, outputs: np.ndarray, sources: list[str], settings: PredictSettings
    ) -> list[list[str]]:
        from lensnet.data.imagefiles import write_image

        if settings.image_dir is None:
            raise LensnetError("image outputs need a folder to write them to")
        rows = []
        for source, image in zip(sources, outputs):
            # Numbered in row order so two inputs with one file name never overwrite each other.
            stem = _UNSAFE.sub("_", Path(source.replace("[", "_").replace("]", "")).name).strip("_") or "image"
            header = _output_header(source, image, settings) if settings.image_format == "fits" else None
            path = write_image(settings.image_dir / f"{len(settings.written):06d}-{stem}", image,
                               settings.image_format, header)
            settings.written.append(path)
            rows.append([str(path)])
        return rows

    def truth_label(self, spec: OutputSpec, value: Any) -> str:
        return ""


def _output_header(source: str, image: np.ndarray, settings: PredictSettings) -> Any:
    """For an output image of a FITS input: the input's header, its pixel scale divided by the output's
    upsampling (output width / input width), so WCS-aware tools place the super-resolved pixels on the sky."""
    from lensnet.data.imagefiles import file_format, read_fits_header, rescaled_header

    path = Path(re.sub(r"\[\d+\]$", "", source))
    if file_format(path) != "fits" or not path.is_file():
        return None
    header = read_fits_header(path, settings.input_hdu)
    if header is None or not header.get("NAXIS1"):
        return None
    factor = image.shape[1] / float(header["NAXIS1"])
    note = f"lensnet: {image.shape[1]}x{image.shape[0]} output of a {header['NAXIS1']}-pixel-wide input, " \
           f"pixel scale divided by {factor:g}"
    return rescaled_header(header, factor, note)
