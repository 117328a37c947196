"""data.source simulate: fresh training records streamed from the dataset's own simulator (a lensnet.simulate
preset, or the toy BlobSource with an analytic posterior). The stream is the written training split byte for byte
when it starts at record 0, the same for any number of worker processes, resumes at any batch, and trains
through lensnet.fit."""

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

    with pytest.raises(LensnetError, match="not by a simulator lensnet can stream from"):
        stream_source(open_dataset(synthetic_dataset))


# the toy of tests/test_posterior.py, on 64 records (train 51 here)
TOY = {"noise": 3.0, "blob_width": 8.0}


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    from lensnet.data.synthetic import write_blobs

    out = tmp_path_factory.mktemp("stream") / "blobs"
    write_blobs(out, 64, seed=3, records_per_shard=16, **TOY)
    return out


def test_toy_stream_is_the_written_training_split_and_deterministic_per_seed(blobs: Path, tmp_path: Path) -> None:
    from lensnet.data import open_dataset
    from lensnet.data.synthetic import write_blobs

    info = open_dataset(blobs)
    written = written_train_records(info)
    assert len(written) == info.counts["train"] > 40
    batches = -(-len(written) // 4)
    streamed = [r for batch in stream(info, batches) for r in batch]
    assert streamed[:len(written)] == written
    assert stream(info, 3, start=500) == stream(info, 3, start=500, workers=2)  # same batches, any workers
    assert stream(info, 2, start=500, first_batch=1) == stream(info, 3, start=500)[1:]
    write_blobs(tmp_path / "seed4", 64, seed=4, records_per_shard=16, **TOY)
    other = stream(open_dataset(tmp_path / "seed4"), 3, start=500)
    assert all(not set(a) & set(b) for a, b in zip(other, stream(info, 3, start=500)))


def test_toy_written_before_its_generator_was_recorded_still_streams(blobs: Path, copy_dataset) -> None:
    import json

    from lensnet.core.errors import LensnetError
    from lensnet.data import open_dataset
    from lensnet.data.synthetic import BlobSource
    from lensnet.simulate.stream import stream_source

    old = copy_dataset(blobs)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["generator"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    source = stream_source(open_dataset(old))
    assert isinstance(source, BlobSource)
    assert (source.seed, source.noise, source.blob_width, source.image_shape) == (3, 3.0, 8.0, (16, 16, 1))
    assert stream(open_dataset(old), 2) == stream(open_dataset(blobs), 2)
    del manifest["config"]["blob_width"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LensnetError, match="cannot rebuild lensnet.data.synthetic.blobs.*blob_width"):
        stream_source(open_dataset(old))


def toy_fit_argv(blobs: Path, runs: Path, name: str, epochs: int) -> list[str]:
    return ["--task", "posterior", "--data", str(blobs), "--model", "cnn_small", "--set", "model.args.filters=[4,8]",
            "--set", "task.targets=[amplitude]", "--set", "task.width=16", "--set", "task.depth=2",
            "--set", "data.source=simulate", "--set", "data.simulate_workers=1", "--set", "train.steps_per_epoch=3",
            "--batch-size", "8", "--set", "train.schedule=constant", "--set", "train.warmup_epochs=0",
            "--seed", "0", "--epochs", str(epochs), "--runs", str(runs), "--run-name", name, "--no-progress",
            "--set", "run.verbose=0"]


@pytest.mark.slow
def test_fit_on_the_toy_stream_trains_and_resumes_bit_identically(blobs: Path, tmp_path: Path) -> None:
    """Two straight epochs of fresh toy simulations, and one epoch then --resume to two: the same weights,
    which needs the resumed run to stream batches 3-5, not the first run's 0-2 again."""
    import json

    import keras

    import lensnet.models  # noqa: F401
    import lensnet.tasks  # noqa: F401
    from lensnet.core.errors import run_cli
    from lensnet.data import open_dataset
    from lensnet.fit import main

    assert run_cli(main, toy_fit_argv(blobs, tmp_path, "straight", 2)) == 0
    assert run_cli(main, toy_fit_argv(blobs, tmp_path, "resumed", 1)) == 0
    assert run_cli(main, ["--resume", str(tmp_path / "resumed"), "--epochs", "2", "--no-progress"]) == 0
    assert "source: simulate" in (tmp_path / "straight" / "config.yaml").read_text()
    for run in ("straight", "resumed"):
        history = (tmp_path / run / "history.csv").read_text().splitlines()
        assert len(history) == 3  # header + 2 epochs
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["n"] == open_dataset(blobs).counts["test"]
        assert np.isfinite(metrics["parameters"]["amplitude"]["coverage_68"])
    straight, resumed = (keras.models.load_model(tmp_path / r / "checkpoints" / "last.keras", compile=False,
                                                 safe_mode=True) for r in ("straight", "resumed"))
    assert len(straight.weights) == len(resumed.weights)
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)

