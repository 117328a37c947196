"""data.source simulate: fresh training records streamed from the dataset's own simulator. The stream is the
written training split byte for byte when it starts at record 0, the same for any number of worker processes,
resumes at any batch, and trains through lensnet.fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY = {"image": {"size": 16}, "records_per_shard": 8, "splits": {"train": 0.75, "val": 0.125, "test": 0.125}}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    from lensnet.simulate.dataset import simulate_dataset

    out = tmp_path_factory.mktemp("stream") / "model_ii"
    simulate_dataset("model_ii", out, num=32, seed=5, overrides=TINY, progress=False)
    return out


def written_train_records(info) -> list[bytes]:
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset([str(p) for p in sorted(info.shards("train"))])]


def stream(info, batches: int, **kwargs) -> list[list[bytes]]:
    from lensnet.simulate.stream import record_batches, stream_source

    it = record_batches(stream_source(info), **{"start": 0, "batch_size": 4, **kwargs})
    out = [next(it) for _ in range(batches)]
    it.close()
    return out


def test_stream_from_record_zero_is_the_written_training_split(simulated: Path) -> None:
    from lensnet.data import open_dataset

    info = open_dataset(simulated)
    written = written_train_records(info)
    assert len(written) == 24
    streamed = [r for batch in stream(info, 6) for r in batch]
    assert streamed == written


def test_stream_is_deterministic_across_workers_and_resumes(simulated: Path) -> None:
    from lensnet.data import open_dataset

    info = open_dataset(simulated)
    one = stream(info, 4, start=100)
    two = stream(info, 4, start=100, workers=2)
    assert one == two
    assert stream(info, 2, start=100, first_batch=2) == one[2:]
    assert len({r for batch in one for r in batch}) == 16  # never a repeated record


def test_trainer_stream_resumes_at_the_epoch(simulated: Path) -> None:
    """The prepared training batches of a run resumed at epoch 1 are the uninterrupted run's batches from
    epoch 1 on, and the default start lies past the dataset's own records."""
    from lensnet.core.config import parse_set
    from lensnet.data import open_dataset
    from lensnet.tasks import task_from_config
    from lensnet.training.config import resolve_fit_config
    from lensnet.training.data import simulated_train_batches

    info = open_dataset(simulated)
    config = resolve_fit_config("posterior", None, parse_set([
        f"data.path={simulated}", "data.source=simulate", "data.simulate_workers=1", "data.batch_size=4",
        "train.steps_per_epoch=2", "task.targets=[theta_E]", "data.augment=null"]))
    task = task_from_config(config, info)
    full = [b for _, b in zip(range(4), simulated_train_batches(info, task, config, 0))]
    resumed = [b for _, b in zip(range(2), simulated_train_batches(info, task, config, 1))]
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    written = {r for r in written_train_records(info)}
    from lensnet.simulate.stream import record_batches, stream_source

    first = next(record_batches(stream_source(info), start=sum(info.counts.values()), batch_size=4))
    assert not written & set(first)


@pytest.mark.slow
def test_fit_trains_on_the_stream(simulated: Path, tmp_path: Path, capsys) -> None:
    import json

    from lensnet.core.errors import run_cli
    from lensnet.fit import main

    code = run_cli(main, ["--task", "posterior", "--data", str(simulated), "--model", "cnn_small", "--epochs", "1",
                          "--set", "model.args.filters=[4,8]", "--set", "task.targets=[theta_E]",
                          "--set", "data.source=simulate", "--set", "data.simulate_workers=1",
                          "--set", "train.steps_per_epoch=3", "--batch-size", "8", "--set", "data.augment=null",
                          "--runs", str(tmp_path), "--run-name", "s", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "source: simulate" in (tmp_path / "s" / "config.yaml").read_text()
    history = (tmp_path / "s" / "history.csv").read_text().splitlines()
    assert len(history) == 2
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["n"] == 4


def test_stream_needs_a_simulated_dataset(synthetic_dataset: Path) -> None:
    from lensnet.core.errors import LensnetError
    from lensnet.data import open_dataset
    from lensnet.simulate.stream import stream_source

    with pytest.raises(LensnetError, match="not written by lensnet.simulate"):
        stream_source(open_dataset(synthetic_dataset))
