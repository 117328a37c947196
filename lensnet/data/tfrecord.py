"""TFRecord framing without TensorFlow: atomic shard writer and a checksum-verifying reader."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import google_crc32c

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import atomic_open


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: length, masked crc32c of length, data, masked crc32c of data."""
    header = struct.pack("<Q", len(record))
    return header + struct.pack("<I", _masked_crc(header)) + record + struct.pack("<I", _masked_crc(record))


class ShardWriter:
    """Write records to `path` through a temporary file; the shard appears only when complete.

    Use as a context manager; on a clean exit the file is renamed into place and
    `sha256` / `count` describe it. On an exception nothing is left behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.count = 0
        self.sha256 = ""
        self._digest = hashlib.sha256()
        self._context = None
        self._handle = None

    def __enter__(self) -> ShardWriter:
        self._context = atomic_open(self.path, "wb")
        self._handle = self._context.__enter__()
        return self

    def write(self, record: bytes) -> None:
        data = frame(record)
        self._handle.write(data)
        self._digest.update(data)
        self.count += 1

    def __exit__(self, *exc_info) -> bool:
        result = self._context.__exit__(*exc_info)
        if exc_info[0] is None:
            self.sha256 = self._digest.hexdigest()
        return bool(result)


class CorruptShard(LensnetError):
    pass


def iter_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Yield the records of a shard, verifying both checksums; damage raises CorruptShard naming the file."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise LensnetError(f"cannot open shard {path}: {exc.strerror}") from None
    with handle:
        index = 0
        offset = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptShard(f"shard {path} is truncated: record {index} at byte {offset} has a partial header")
            length, length_crc = struct.unpack("<QI", header)
            if _masked_crc(header[:8]) != length_crc:
                raise CorruptShard(
                    f"shard {path} is corrupt: record {index} at byte {offset} has a bad length checksum"
                )
            body = handle.read(length + 4)
            if len(body) < length + 4:
                raise CorruptShard(f"shard {path} is truncated: record {index} at byte {offset} is incomplete")
            data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
            if _masked_crc(data) != data_crc:
                raise CorruptShard(f"shard {path} is corrupt: record {index} at byte {offset} has a bad data checksum")
            yield data
            index += 1
            offset += 12 + length + 4
