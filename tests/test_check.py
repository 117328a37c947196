"""`python -m lensnet.data check`: passes on a good dataset; each kind of damage is one line naming the shard."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import run_cli
from lensnet.core.fileio import sha256_file
from lensnet.data.__main__ import main
from lensnet.data.tfrecord import frame, iter_records

SHARD = "train-00001-of-00002.tfrecord"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def rewrite_shard(directory: Path, name: str, records: list[bytes]) -> None:
    """Write `records` as a well-framed shard and record its new sha256 in the manifest."""
    path = directory / name
    path.write_bytes(b"".join(frame(r) for r in records))

    def edit(data: dict) -> None:
        for split in data["splits"].values():
            for shard in split["shards"]:
                if shard["file"] == name:
                    shard["sha256"] = sha256_file(path)

    edit_manifest(directory, edit)


def test_check_passes_and_summarises(synthetic_dataset, capsys):
    code, out, err = run(["check", str(synthetic_dataset), "--no-progress"], capsys)
    assert code == 0, err
    assert "synthetic (kind synthetic)" in out
    assert "class0, class1" in out
    assert "train  32" in out and "val    16" in out and "test   16" in out
    assert "image (16, 16, 1), 1 channel(s)" in out
    assert "radius*, amplitude*" in out
    assert "pixels    image (train split): mean" in out
    assert "verified  4 shard(s), 64 records" in out


def test_info_prints_the_manifest_summary(synthetic_dataset, capsys):
    code, out, _ = run(["info", str(synthetic_dataset)], capsys)
    assert code == 0 and "class0, class1" in out and "verified" not in out


def test_audit_passes_then_flags_a_separating_parameter(synthetic_dataset, copy_dataset, capsys):
    code, out, _ = run(["check", str(synthetic_dataset), "--audit", "--no-progress"], capsys)
    assert code == 0 and "audit" in out and "radius (class-specific)" in out
    biased = copy_dataset(synthetic_dataset)
    # Declared shared, `radius` (which grows with the class) must now separate the classes.
    edit_manifest(biased, lambda data: data.update(class_specific_params=["amplitude"]))
    code, out, err = run(["check", str(biased), "--audit", "--no-progress"], capsys)
    assert code == 2
    assert "radius" in out and "YES" in out
    assert "parameter(s) radius separate the classes" in one_line_error(err)


@pytest.mark.parametrize("damage,expected", [
    ("truncate", "is truncated"),
    ("flip_byte", "bad data checksum"),
    ("flip_length", "bad length checksum"),
    ("missing", "missing"),
    ("sha", "sha256"),
    ("count", "manifest says 9"),
])
def test_damaged_shard_is_named_in_one_line(synthetic_dataset, copy_dataset, capsys, damage, expected):
    directory = copy_dataset(synthetic_dataset)
    shard = directory / SHARD
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[:-100]))
    elif damage == "flip_byte":
        data[12 + 100] ^= 0x01  # inside the first record's data
        shard.write_bytes(bytes(data))
    elif damage == "flip_length":
        data[0] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "missing":
        shard.unlink()
    elif damage == "sha":
        edit_manifest(directory, lambda m: m["splits"]["train"]["shards"][1].update(sha256="0" * 64))
    elif damage == "count":
        edit_manifest(directory, lambda m: m["splits"]["train"]["shards"][1].update(count=9))
    code, _, err = run(["check", str(directory), "--no-progress"], capsys)
    line = one_line_error(err)
    assert code == 2
    assert SHARD in line and expected in line


def test_nan_image_and_wrong_schema_are_found(synthetic_dataset, copy_dataset, capsys):
    directory = copy_dataset(synthetic_dataset)
    records = list(iter_records(directory / SHARD))
    # Patch the first pixel of record 3 to NaN: framing and sha256 stay valid, only the content is bad.
    patched = bytearray(records[3])
    import tensorflow as tf

    from lensnet.data.manifest import read_manifest, schema_of

    schema = schema_of(read_manifest(directory))
    image = schema.decode(tf.constant([bytes(records[3])]), ["image"])["image"].numpy()[0]
    at = bytes(patched).index(image.astype("<f4").tobytes())
    patched[at : at + 4] = struct.pack("<f", float("nan"))
    rewrite_shard(directory, SHARD, [*records[:3], bytes(patched), *records[4:]])
    code, _, err = run(["check", str(directory), "--no-progress"], capsys)
    line = one_line_error(err)
    assert code == 2 and SHARD in line and "record 3" in line and "NaN or Inf" in line

    rewrite_shard(directory, SHARD, [*records[:5], b"not an Example", *records[6:]])
    code, _, err = run(["check", str(directory), "--no-progress"], capsys)
    line = one_line_error(err)
    assert code == 2 and SHARD in line and "record 5 does not match" in line


def test_several_problems_are_listed_on_one_line(synthetic_dataset, copy_dataset, capsys):
    directory = copy_dataset(synthetic_dataset)
    (directory / SHARD).unlink()
    (directory / "val-00000-of-00001.tfrecord").write_bytes(b"\x00" * 5)
    code, _, err = run(["check", str(directory), "--no-progress"], capsys)
    line = one_line_error(err)
    assert code == 2 and "2 problems" in line and SHARD in line and "val-00000-of-00001.tfrecord" in line


def test_check_of_a_non_dataset_is_one_line(tmp_path, capsys):
    code, _, err = run(["check", str(tmp_path / "missing"), "--no-progress"], capsys)
    assert code == 2 and "not found" in one_line_error(err)


@pytest.mark.slow
def test_check_subprocess_exit_code(synthetic_dataset, copy_dataset):
    directory = copy_dataset(synthetic_dataset)
    shard = directory / SHARD
    shard.write_bytes(shard.read_bytes()[:-7])
    result = subprocess.run(
        [sys.executable, "-m", "lensnet.data", "check", str(directory), "--no-progress"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and SHARD in last and "truncated" in last
    assert np.all([not line.startswith("error") for line in result.stderr.strip().splitlines()[:-1]])


def test_pixel_statistics_are_recomputed(synthetic_dataset, copy_dataset, capsys):
    directory = copy_dataset(synthetic_dataset)
    edit_manifest(directory, lambda m: m["pixel_stats"]["image"].update(mean=[5.0]))
    code, _, err = run(["check", str(directory), "--no-progress"], capsys)
    line = one_line_error(err)
    assert code == 2 and "pixel statistics of field 'image'" in line and "mean" in line
