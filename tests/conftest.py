"""Shared pytest fixtures: tiny datasets, written once per session.

Session-scoped datasets are READ-ONLY: a test that damages or extends a dataset
copies it first (`copy_dataset`). Keep fixtures tiny (16-32 px, tens of records)
so the whole suite stays fast on two CPU cores.

Fixtures:
    synthetic_dataset  Path of a 2-class 16x16x1 synthetic dataset (64 records: train 32, val 16, test 16;
                       16 records per shard; parameters `radius` and `amplitude`, NaN for class0).
    synthetic_info     `lensnet.data.open_dataset(synthetic_dataset)`.
    copy_dataset       copy_dataset(src) -> a private copy under the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter buries test output

SYNTHETIC_NUM = 64
SYNTHETIC_SHAPE = (16, 16, 1)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lensnet.data.synthetic import write_synthetic

    path = tmp_path_factory.mktemp("datasets") / "synthetic"
    write_synthetic(path, SYNTHETIC_NUM, image_shape=SYNTHETIC_SHAPE, seed=0, records_per_shard=16)
    return path


@pytest.fixture(scope="session")
def synthetic_info(synthetic_dataset: Path):
    from lensnet.data import open_dataset

    return open_dataset(synthetic_dataset)


@pytest.fixture
def copy_dataset(tmp_path: Path) -> Callable[[Path], Path]:
    def copy(src: Path) -> Path:
        dst = tmp_path / f"copy-{Path(src).name}"
        shutil.copytree(src, dst)
        return dst

    return copy
