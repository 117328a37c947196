"""`manifest.json`: what a dataset directory holds (schema, config, seed, counts, checksums, statistics)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lensnet.core.errors import LensnetError
from lensnet.data.schema import SCHEMA_VERSION, Schema

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")


def read_manifest(directory: str | os.PathLike) -> dict:
    """Load and sanity-check a dataset's manifest; every problem is a one-line LensnetError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LensnetError(f"dataset directory not found: {directory}")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        parts = directory / ".parts"
        hint = " (simulation parts exist: some shard jobs have not finished)" if parts.is_dir() else ""
        raise LensnetError(f"{directory} is not a lensnet dataset: no {MANIFEST_NAME}{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LensnetError(f"{path} is not valid JSON: {exc}") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise LensnetError(f"{path}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    for key in ("features", "splits", "class_names"):
        if key not in manifest:
            raise LensnetError(f"{path}: missing field '{key}'")
    return manifest


def schema_of(manifest: dict) -> Schema:
    return Schema.from_json(manifest["features"])


def split_info(manifest: dict, split: str, directory: str | os.PathLike = "dataset") -> dict:
    splits = manifest["splits"]
    if split not in splits:
        raise LensnetError(f"{directory}: no split '{split}'; splits: {', '.join(splits) or 'none'}")
    return splits[split]


def shard_files(directory: str | os.PathLike, manifest: dict, split: str) -> list[Path]:
    """Shard paths of one split; an empty split or a missing shard file is an error."""
    directory = Path(directory)
    info = split_info(manifest, split, directory)
    if not info.get("count"):
        raise LensnetError(f"{directory}: split '{split}' is empty")
    paths = [directory / shard["file"] for shard in info["shards"]]
    for path in paths:
        if not path.is_file():
            raise LensnetError(f"{directory}: shard listed in the manifest is missing: {path.name}")
    return paths
