"""Importers: folders of DeepLense `.npy` images or FITS cutouts as a RecordSource for the shard writer.

Layout: one subfolder per class (class names = sorted subfolder names, files found
recursively inside each), or files directly in the source folder (unlabelled:
label -1, class name ""). A record's id is its file's path relative to the source
folder, so predictions and users can always find the original file.

Files are assigned to train/val/test per class (stratified) by a permutation drawn
from `seed` and the class name, so a class's assignment does not depend on the
other classes; each split is then permuted so shards mix the classes.

Split folders (the layout DeepLense distributes: SRC/train/<class>/*.npy and
SRC/val/<class>/*.npy) keep their membership, so a published held-out set stays held
out. Each folder maps to one split (`split_map`, default train -> train, test -> test,
val -> test when there is no test folder and val -> val when there is: DeepLense's
val/ is the set its papers report on). When no folder maps to val, `val_fraction` of
the train folder (stratified, seeded) becomes the val split for model selection.
`resplit` pools every file and splits by the fractions as for a plain class layout.
Refused as ambiguous, in one line: split folders beside class folders, files directly
in a split folder, and split folders whose class subfolders differ.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.data.imagefiles import FITS_SUFFIXES, LAYOUTS, NPY_SUFFIXES, read_fits, read_npy, to_hwc
from lensnet.data.manifest import SPLITS
from lensnet.data.schema import Schema
from lensnet.data.writer import (
    RecordBatch,
    ShardPlan,
    WriteSummary,
    image_stats,
    plan_shards,
    split_counts,
    write_dataset,
)

FORMATS = {"deeplense-npy": NPY_SUFFIXES, "fits": FITS_SUFFIXES}
# Folder names that mean "this is a split, not a class" (the DeepLense test sets ship as train/ and val/).
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
_VAL_FOLDERS = ("val", "valid", "validation")
# DeepLense axion files store [image, axion mass]; the mass is kept as a parameter.
AXION_PARAMS = ("m_axion", "log10_m_axion")


@dataclass(frozen=True)
class SourceFile:
    relpath: str  # POSIX path relative to the source folder: the record id
    label: int  # -1 when unlabelled
    folder: str = ""  # the split folder (train, val, ...) it came from, "" without split folders


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(root).parts)


def _matches(path: Path, suffixes: Sequence[str]) -> bool:
    return path.is_file() and path.name.lower().endswith(tuple(suffixes))


def discover(root: str | os.PathLike, fmt: str) -> tuple[list[str], list[SourceFile]]:
    """Class names and files (sorted) of a source folder; layout problems are one-line errors."""
    root = Path(root)
    suffixes = FORMATS[fmt]
    pattern = "/".join(suffixes)
    if not root.is_dir():
        raise LensnetError(f"source folder not found: {root}")
    entries = sorted(p for p in root.iterdir() if _visible(p, root))
    top_files = [p for p in entries if _matches(p, suffixes)]
    folders = {}
    for folder in (p for p in entries if p.is_dir()):
        found = sorted(p for p in folder.rglob("*") if _matches(p, suffixes) and _visible(p, root))
        folders[folder.name] = found
    classes = {name: files for name, files in folders.items() if files}
    if top_files and classes:
        raise LensnetError(
            f"{root} holds both files ({top_files[0].name}) and class folders ({next(iter(classes))}/): "
            "put every file in a class folder, or convert the unlabelled files from a folder of their own"
        )
    if top_files:
        return [], [SourceFile(p.relative_to(root).as_posix(), -1) for p in top_files]
    if not classes:
        raise LensnetError(f"{root} holds no {pattern} files (neither directly nor in class subfolders)")
    empty = [name for name, files in folders.items() if not files]
    if empty:
        raise LensnetError(f"class folder {root / empty[0]} holds no {pattern} files")
    class_names = sorted(classes)
    splits_found = [name for name in class_names if name.lower() in SPLIT_FOLDERS]
    if splits_found and len(splits_found) < len(class_names):
        other = next(name for name in class_names if name not in splits_found)
        raise LensnetError(
            f"{root} mixes split folders ({', '.join(splits_found)}) with other folders ({other}/): give one "
            "folder per class, or split folders (train/, val/, test/) that each hold one folder per class"
        )
    if splits_found:
        return _discover_split_folders(root, splits_found, suffixes)
    files = [
        SourceFile(p.relative_to(root).as_posix(), label)
        for label, name in enumerate(class_names)
        for p in classes[name]
    ]
    return class_names, files


def _discover_split_folders(
    root: Path, folders: list[str], suffixes: Sequence[str]
) -> tuple[list[str], list[SourceFile]]:
    """SRC/<split>/<class>/...: the same classes in every split folder."""
    per_folder: dict[str, dict[str, list[Path]]] = {}
    for folder in folders:
        path = root / folder
        loose = sorted(p for p in path.iterdir() if _matches(p, suffixes) and _visible(p, root))
        if loose:
            raise LensnetError(
                f"{path} holds files directly ({loose[0].name}): a split folder must hold one folder per class"
            )
        classes = {}
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and _visible(p, root)):
            found = sorted(p for p in sub.rglob("*") if _matches(p, suffixes) and _visible(p, root))
            if found:
                classes[sub.name] = found
        if not classes:
            raise LensnetError(f"split folder {path} holds no class folder with {'/'.join(suffixes)} files")
        per_folder[folder] = classes
    class_names = sorted(per_folder[folders[0]])
    for folder, classes in per_folder.items():
        if sorted(classes) != class_names:
            raise LensnetError(
                f"split folders disagree on the classes: {folders[0]}/ has {', '.join(class_names)} but "
                f"{folder}/ has {', '.join(sorted(classes))}"
            )
    files = [
        SourceFile(p.relative_to(root).as_posix(), label, folder)
        for folder, classes in per_folder.items()
        for label, name in enumerate(class_names)
        for p in classes[name]
    ]
    return class_names, files


def parse_split_map(text: str | Mapping[str, str] | None, folders: Sequence[str]) -> dict[str, str]:
    """Folder -> split for the split folders present: defaults, then `val=test,train=train` overrides."""
    has_test = any(f.lower() == "test" for f in folders)
    mapping = {}
    for folder in folders:
        low = folder.lower()
        mapping[folder] = ("val" if has_test else "test") if low in _VAL_FOLDERS else low
    if text:
        items = text.items() if isinstance(text, Mapping) else (
            p.split("=", 1) if "=" in p else (p, "") for p in str(text).split(",") if p.strip())
        for folder, split in items:
            folder, split = folder.strip(), split.strip()
            if folder not in mapping:
                raise LensnetError(f"--split-map: {folder!r} is not a split folder of the source "
                                   f"({', '.join(folders)})")
            if split not in SPLITS:
                raise LensnetError(f"--split-map: {folder}={split!r}; a folder maps to one of {', '.join(SPLITS)}")
            mapping[folder] = split
    if "train" not in mapping.values():
        raise LensnetError(f"--split-map: no folder maps to train ({mapping})")
    return mapping


def assign_folder_splits(
    files: Sequence[SourceFile], class_names: Sequence[str], split_map: Mapping[str, str], val_fraction: float,
    seed: int,
) -> dict[str, list[SourceFile]]:
    """Splits from split folders (membership kept); val_fraction of train becomes val when no folder is val."""
    if not 0.0 <= val_fraction < 1.0:
        raise LensnetError(f"--val-fraction must be in [0, 1), got {val_fraction!r}")
    grouped: dict[str, list[SourceFile]] = {}
    for entry in files:
        grouped.setdefault(split_map[entry.folder], []).append(entry)
    out: dict[str, list[SourceFile]] = {}
    for split, members in grouped.items():
        fractions = {split: 1.0}
        if split == "train" and "val" not in grouped and val_fraction > 0:
            fractions = {"train": 1.0 - val_fraction, "val": val_fraction}
        for name, part in assign_splits(members, class_names, fractions, seed).items():
            out.setdefault(name, []).extend(part)
    return {s: out[s] for s in SPLITS if s in out}


def parse_splits(text: str | Mapping[str, float]) -> dict[str, float]:
    """`0.8,0.1,0.1` (train,val,test), `0.9,0.1` or `train=0.8,test=0.2` -> {split: fraction}."""
    if isinstance(text, Mapping):
        fractions = {str(k): float(v) for k, v in text.items()}
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            if parts and all("=" in p for p in parts):
                fractions = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
            elif parts and len(parts) <= len(SPLITS) and not any("=" in p for p in parts):
                fractions = dict(zip(SPLITS, (float(p) for p in parts)))
            else:
                raise ValueError
        except ValueError:
            raise LensnetError(
                f"--splits expects fractions like 0.8,0.1,0.1 (train,val,test) or train=0.8,test=0.2; got '{text}'"
            ) from None
    split_counts(1, fractions)  # validates names, signs and the sum
    if not all(math.isfinite(v) for v in fractions.values()):
        raise LensnetError(f"--splits fractions must be finite, got {fractions}")
    return fractions


def _stable_int(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode())


def assign_splits(
    files: Sequence[SourceFile], class_names: Sequence[str], fractions: Mapping[str, float], seed: int
) -> dict[str, list[SourceFile]]:
    """Stratified, seeded split assignment: {split: files in record order}."""
    groups: dict[int, list[SourceFile]] = {}
    for entry in files:
        groups.setdefault(entry.label, []).append(entry)
    splits: dict[str, list[SourceFile]] = {s: [] for s in SPLITS}
    for label, group in sorted(groups.items()):
        group = sorted(group, key=lambda e: e.relpath)  # the input order must not matter
        name = class_names[label] if label >= 0 else ""
        order = np.random.default_rng([seed, _stable_int("class", name)]).permutation(len(group))
        lo = 0
        for split, count in split_counts(len(group), dict(fractions)).items():
            splits[split] += [group[i] for i in order[lo : lo + count]]
            lo += count
    for split, members in splits.items():
        members.sort(key=lambda e: e.relpath)
        order = np.random.default_rng([seed, _stable_int("split", split)]).permutation(len(members))
        splits[split] = [members[i] for i in order]
    return {s: m for s, m in splits.items() if m}


# ---- the RecordSource -------------------------------------------------------------------------------
def _record_seed(seed: int, relpath: str) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class FileSource:
    """Records from files, by global index (files of train, then val, then test)."""

    def __init__(
        self, root: Path, fmt: str, files: Sequence[SourceFile], class_names: Sequence[str],
        image_shape: tuple[int, int, int], *, seed: int = 0, layout: str = "auto",
        hdu: int | str | None = None, trust_pickle: bool = False, param_names: Sequence[str] = (),
        reference: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.fmt = fmt
        self.files = list(files)
        self.class_names = list(class_names)
        self.image_shape = tuple(image_shape)
        self.seed = seed
        self.layout = layout
        self.hdu = hdu
        self.trust_pickle = trust_pickle
        self.schema = Schema.standard({"image": self.image_shape}, param_names)
        self.class_specific_params = set(param_names) & set(AXION_PARAMS)
        # The file whose shape every other must match, named in the mixed-shape error.
        self.reference = reference or (self.files[0].relpath if self.files else "")

    def setup(self) -> None:
        pass

    def read(self, relpath: str) -> tuple[np.ndarray, float | None]:
        """float32 (H, W, C) image and scalar of one file; every problem names the file."""
        path = self.root / relpath
        if self.fmt == "fits":
            raw, scalar = read_fits(path, self.hdu), None
        else:
            raw, scalar = read_npy(path, self.trust_pickle)
        return to_hwc(raw, self.layout, path), scalar

    def records(self, plan: ShardPlan, start: int, stop: int) -> RecordBatch:
        param_names = self.schema.param_names
        serialized, labels, images = [], [], []
        params = np.full((stop - start, len(param_names)), np.nan)
        for row, index in enumerate(range(start, stop)):
            entry = self.files[index]
            image, scalar = self.read(entry.relpath)
            if image.shape != self.image_shape:
                raise LensnetError(
                    f"{self.root / entry.relpath}: image shape {image.shape} differs from {self.reference}'s "
                    f"{self.image_shape}; every image of a dataset must have one shape"
                )
            values = {}
            if param_names:
                values = {"m_axion": np.nan, "log10_m_axion": np.nan}
                if scalar is not None:
                    values["m_axion"] = scalar
                    values["log10_m_axion"] = math.log10(scalar) if scalar > 0 else np.nan
                params[row] = [values[n] for n in param_names]
            elif scalar is not None:
                raise LensnetError(
                    f"{self.root / entry.relpath}: holds a number beside its image, but the first file of each "
                    "class did not, so the dataset has no parameter column for it"
                )
            label = entry.label
            record = {
                "id": entry.relpath,
                "seed": _record_seed(self.seed, entry.relpath),
                "label": label,
                "class_name": self.class_names[label] if label >= 0 else "",
                "image": image,
                **values,
            }
            serialized.append(self.schema.encode(record))
            labels.append(label)
            images.append(image)
        return RecordBatch(serialized, np.asarray(labels, np.int64), params, {"image": image_stats(np.stack(images))})


def _listing_digest(root: Path, files: Sequence[SourceFile]) -> str:
    """Identifies the source files' set and versions, so a rerun keeps shards only if nothing changed."""
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e.relpath):
        stat = (root / entry.relpath).stat()
        digest.update(f"{entry.relpath}\t{entry.label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def convert_dataset(
    fmt: str,
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    splits: str | Mapping[str, float] = "0.8,0.1,0.1",
    seed: int = 0,
    layout: str = "auto",
    hdu: int | str | None = None,
    trust_pickle: bool = False,
    records_per_shard: int = 1000,
    name: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    split_map: str | Mapping[str, str] | None = None,
    val_fraction: float = 0.1,
    resplit: bool = False,
) -> WriteSummary:
    """Import a folder of `.npy` (fmt "deeplense-npy") or FITS (fmt "fits") images into sharded TFRecords.

    With split folders (SRC/train/<class>/, SRC/val/<class>/...), `split_map`, `val_fraction` and `resplit`
    decide the splits (see the module doc); `splits` applies only with resplit or without split folders.
    """
    from lensnet import __version__

    if fmt not in FORMATS:
        raise LensnetError(f"unknown format '{fmt}'; formats: {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise LensnetError(f"unknown --layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    if not isinstance(seed, int) or seed < 0:
        raise LensnetError(f"--seed must be an integer >= 0, got {seed!r}")
    if hdu is not None and fmt != "fits":
        raise LensnetError("--hdu applies to FITS files only")
    if trust_pickle and fmt != "deeplense-npy":
        raise LensnetError("--trust-pickle applies to .npy files only")
    root = Path(source)
    class_names, files = discover(root, fmt)
    fractions = parse_splits(splits)
    folders = list(dict.fromkeys(entry.folder for entry in files if entry.folder))
    mapping = None
    if folders and not resplit:
        mapping = parse_split_map(split_map, folders)
        by_split = assign_folder_splits(files, class_names, mapping, val_fraction, seed)
        fractions = {s: len(m) / len(files) for s, m in by_split.items()}
    else:
        if split_map:
            raise LensnetError("--split-map needs split folders (train/, val/...) and no --resplit")
        by_split = assign_splits(files, class_names, fractions, seed)
    ordered = [entry for split in SPLITS for entry in by_split.get(split, [])]
    counts = {split: len(members) for split, members in by_split.items()}

    # The first file of each class fixes the image shape and tells whether the files carry a number
    # (DeepLense axion mass); reading them now finds most problems before any shard is written.
    first_of: dict[int, SourceFile] = {}
    for entry in files:
        first_of.setdefault(entry.label, entry)
    probe = FileSource(root, fmt, files, class_names, (1, 1, 1), layout=layout, hdu=hdu, trust_pickle=trust_pickle)
    reference, carries_number = None, False
    for label in sorted(first_of):
        image, scalar = probe.read(first_of[label].relpath)
        carries_number |= scalar is not None
        if reference is None:
            reference = (first_of[label].relpath, image.shape)
        elif image.shape != reference[1]:
            raise LensnetError(
                f"{root / first_of[label].relpath}: image shape {image.shape} differs from {reference[0]}'s "
                f"{reference[1]}; every image of a dataset must have one shape"
            )
    param_names = list(AXION_PARAMS) if carries_number else []
    ordered_source = FileSource(
        root, fmt, ordered, class_names, reference[1], seed=seed, layout=layout, hdu=hdu,
        trust_pickle=trust_pickle, param_names=param_names, reference=reference[0],
    )

    out = Path(out) if out is not None else Path("tfrecords") / root.resolve().name
    config = {
        "format": fmt,
        "source": str(root.resolve()),
        "splits": fractions,
        "split_folders": mapping,  # folder -> split when the source had split folders (membership kept)
        "val_fraction": float(val_fraction) if mapping and "val" not in mapping.values() else None,
        "records_per_shard": int(records_per_shard),
        "layout": layout,
        "hdu": hdu,
        "trust_pickle": bool(trust_pickle),
        "files": {"count": len(files), "listing_sha256": _listing_digest(root, files)},
    }
    versions = {"lensnet": __version__, "numpy": np.__version__}
    if fmt == "fits":
        import astropy

        versions["astropy"] = astropy.__version__
    manifest_base = {
        "name": name or out.name,
        "kind": "imported",
        "generator": "lensnet.convert",
        "source": str(root.resolve()),
        "config": config,
        "seed": seed,
        "versions": versions,
    }
    plans = plan_shards(counts, int(records_per_shard))
    return write_dataset(
        out, ordered_source, plans, manifest_base, workers=workers, overwrite=overwrite, progress=progress,
        describe=f"importing {root.name}",
    )
