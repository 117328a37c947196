"""The record schema: one source of truth for the writers (simulator, importers) and the reader.

A record is a `tf.train.Example`. Images are raw little-endian float32 bytes of a
fixed shape (fast to parse), every physical parameter is a float32 scalar (NaN
where it does not apply), and every record carries its id, per-record seed,
label (-1 when unlabelled) and class name. The schema travels in the dataset's
manifest, so a reader needs nothing but the manifest to decode a shard.

Encoding is done here without TensorFlow (protobuf wire format by hand) so
simulation workers stay light; decoding uses `tf.io.parse_example`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lensnet.core.errors import LensnetError

SCHEMA_VERSION = 1
KINDS = ("image", "float", "int", "bytes")
CORE_FIELDS = ("id", "seed", "label", "class_name")

# The substructure label fields (float parameters; lensnet.simulate.substructure says how they are drawn). Any
# stored parameter is a regression target by name, so a realised quantity and the normalisation it was drawn from
# have different names: `f_sub` is what the image holds, `f_sub_drawn` what was asked for.
SUBSTRUCTURE_LABELS = {
    "n_subhalo": "number of subhaloes in the image",
    "m_sub_total": "sum of the subhaloes' drawn masses (M200c for TNFW), Msun",
    "m_sub_lensing": "sum of the subhaloes' lensing masses (truncated TNFW total mass; point mass m), Msun",
    "f_sub": "REALISED projected substructure mass fraction: lensing mass of the subhaloes centred in "
             "theta_E/2 <= R <= 3 theta_E/2 over pi Sigma_crit theta_E^2 (kappa_sub / kappa_macro there)",
    "f_sub_drawn": "the requested f_sub (normalisation f_sub); the count is calibrated so that the median of "
                   "the realised f_sub equals it",
    "sigma_sub": "REALISED pyHalo sigma_sub: sigma_sub_drawn x (CDM count / its expectation), kpc^-2",
    "sigma_sub_drawn": "the drawn pyHalo sigma_sub (normalisation sigma_sub), kpc^-2",
}


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # image | float | int | bytes
    shape: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape)}


@dataclass
class Schema:
    features: list[Feature]
    _by_name: dict[str, Feature] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {}
        for feature in self.features:
            if feature.kind not in KINDS:
                raise LensnetError(f"schema feature '{feature.name}': unknown kind '{feature.kind}'")
            if feature.name in self._by_name:
                raise LensnetError(f"schema feature '{feature.name}' defined twice")
            self._by_name[feature.name] = feature

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def standard(cls, image_shapes: Mapping[str, Sequence[int]], param_names: Iterable[str] = (),
                 text_names: Iterable[str] = ()) -> Schema:
        """Core fields, the named images, one float per physical parameter and one string per text field.

        Text fields hold per-record categories that are not numbers, e.g. a lens-finding non-lens's
        `subtype` ("spiral", "ring", ...); their integer code is stored beside them as a float parameter.
        """
        features = [
            Feature("id", "bytes"),
            Feature("seed", "int"),
            Feature("label", "int"),
            Feature("class_name", "bytes"),
        ]
        features += [Feature(name, "image", tuple(int(s) for s in shape)) for name, shape in image_shapes.items()]
        features += [Feature(name, "float") for name in param_names]
        features += [Feature(name, "bytes") for name in text_names]
        return cls(features)

    @classmethod
    def from_json(cls, data: Sequence[Mapping]) -> Schema:
        return cls([Feature(d["name"], d["kind"], tuple(d.get("shape", ()))) for d in data])

    def to_json(self) -> list[dict]:
        return [f.to_json() for f in self.features]

    # ---- lookup ---------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise LensnetError(
                f"dataset has no field '{name}'; fields: {', '.join(self.names)}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def image_names(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "image"]

    @property
    def param_names(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "float"]

    @property
    def text_names(self) -> list[str]:
        """Per-record string fields beyond the core ones (e.g. `subtype`)."""
        return [f.name for f in self.features if f.kind == "bytes" and f.name not in CORE_FIELDS]

    # ---- encoding (no TensorFlow) ---------------------------------------------------------
    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Serialize one record; refuses missing fields, wrong shapes and non-finite pixels."""
        ident = record.get("id", "?")
        entries = []
        for feature in self.features:  # schema order is fixed, so bytes are deterministic
            if feature.name not in record:
                raise LensnetError(f"record {ident}: missing field '{feature.name}'")
            value = record[feature.name]
            entries.append(_map_entry(feature.name, _encode_feature(feature, value, ident)))
        return _length_delimited(0x0A, b"".join(entries))

    # ---- decoding (TensorFlow) ------------------------------------------------------------
    def parse_spec(self, names: Iterable[str] | None = None) -> dict:
        import tensorflow as tf

        dtypes = {"image": tf.string, "float": tf.float32, "int": tf.int64, "bytes": tf.string}
        selected = self.names if names is None else list(names)
        return {n: tf.io.FixedLenFeature([], dtypes[self[n].kind]) for n in selected}

    def decode(self, serialized: Any, names: Iterable[str] | None = None) -> dict:
        """Parse a batch (1-D string tensor) of serialized records into a dict of tensors."""
        import tensorflow as tf

        parsed = tf.io.parse_example(serialized, self.parse_spec(names))
        for name, value in parsed.items():
            feature = self[name]
            if feature.kind == "image":
                flat = tf.io.decode_raw(value, tf.float32, little_endian=True)
                parsed[name] = tf.reshape(flat, [-1, *feature.shape])
        return parsed


# ---- protobuf wire format -------------------------------------------------------------------
# Example{features=1: Features{feature=1: map<string, Feature>}};
# Feature{bytes_list=1 | float_list=2 | int64_list=3}; each list holds `value=1` (numbers packed).

def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _map_entry(key: str, feature: bytes) -> bytes:
    return _length_delimited(0x0A, _length_delimited(0x0A, key.encode()) + _length_delimited(0x12, feature))


def _bytes_feature(value: bytes) -> bytes:
    return _length_delimited(0x0A, _length_delimited(0x0A, value))


def _encode_feature(feature: Feature, value: Any, ident: Any) -> bytes:
    kind = feature.kind
    if kind == "image":
        array = np.asarray(value)
        if array.shape != feature.shape:
            raise LensnetError(
                f"record {ident}: field '{feature.name}' has shape {array.shape}, schema says {feature.shape}"
            )
        array = np.ascontiguousarray(array, dtype="<f4")
        if not np.isfinite(array).all():
            raise LensnetError(f"record {ident}: field '{feature.name}' contains NaN or Inf")
        return _bytes_feature(array.tobytes())
    if kind == "float":
        number = float(value)
        if math.isinf(number):
            raise LensnetError(f"record {ident}: parameter '{feature.name}' is infinite")
        return _length_delimited(0x12, _length_delimited(0x0A, struct.pack("<f", number)))
    if kind == "int":
        return _length_delimited(0x1A, _length_delimited(0x0A, _varint(int(value))))
    if isinstance(value, str):
        value = value.encode()
    return _bytes_feature(bytes(value))
