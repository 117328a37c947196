"""Version numbers under an export directory, and publishing a verified version atomically."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from lensnet.artifacts.export_layout import CARD, TMP_PREFIX
from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json

_VERSION = re.compile(r"^[1-9][0-9]*$")
_NUMERIC = re.compile(r"^[0-9]+$")


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Complete versions under `model_dir`, ascending (a version is complete once its card exists)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if _VERSION.match(p.name) and (p / CARD).is_file())


def version_dir(model_dir: str | os.PathLike, version: int | None = None) -> Path:
    """The directory of `version`, or of the newest version when None."""
    model_dir = Path(model_dir)
    versions = list_versions(model_dir)
    if not model_dir.is_dir():
        raise LensnetError(f"model directory not found: {model_dir}")
    if not versions:
        raise LensnetError(f"{model_dir} holds no exported model version (run `python -m lensnet.export`)")
    if version is None:
        return model_dir / str(versions[-1])
    if version not in versions:
        raise LensnetError(f"{model_dir} has no version {version}; versions: {', '.join(map(str, versions))}")
    return model_dir / str(version)


def next_version(out_dir: Path) -> int:
    """One above every numbered entry (complete or not), so a number is never reused."""
    numbers = [int(p.name) for p in out_dir.iterdir() if _NUMERIC.match(p.name)] if out_dir.is_dir() else []
    return max(numbers, default=0) + 1


def remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary dirs of exports that were killed (their process no longer exists)."""
    for path in out_dir.glob(f"{TMP_PREFIX}*"):
        pid = path.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(tmp: Path, out_dir: Path, card: dict) -> int:
    """Rename `tmp` to the next free version number; the card is written just before."""
    for _ in range(1000):
        version = next_version(out_dir)
        card["version"] = version
        write_json(tmp / CARD, card)
        try:
            os.rename(tmp, out_dir / str(version))  # fails on an existing non-empty dir: a concurrent export won
            return version
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise LensnetError(f"could not find a free version number under {out_dir}")
