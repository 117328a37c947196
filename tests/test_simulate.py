"""`python -m lensnet.simulate` and the shard writer: determinism, resume, parts, manifest, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import LensnetError, run_cli
from lensnet.core.fileio import sha256_file
from lensnet.data.tfrecord import iter_records
from lensnet.simulate.__main__ import main
from lensnet.simulate.dataset import simulate_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = {"image": {"size": 16}, "records_per_shard": 8}


def shard_hashes(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.glob("*.tfrecord"))}


def test_cli_writes_balanced_splits_and_manifest(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m2"
    code = run_cli(main, ["--dataset", "model_ii", "--num", "30", "--out", str(out), "--workers", "1",
                          "--seed", "3", "--set", "image.size=16", "--set", "records_per_shard=8",
                          "--set", "splits={train: 0.6, val: 0.2, test: 0.2}", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "dataset complete" in text and str(out) in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {"train": 18, "val": 6, "test": 6}
    assert manifest["splits"]["train"]["per_class"] == {"no_sub": 6, "cdm": 6, "axion": 6}
    assert manifest["seed"] == 3 and manifest["config"]["image"]["size"] == 16
    assert manifest["class_names"] == ["no_sub", "cdm", "axion"]
    assert [f["name"] for f in manifest["features"]][:5] == ["id", "seed", "label", "class_name", "image"]
    assert "log10_m_axion" in manifest["class_specific_params"]
    audit = manifest["audit"]
    # parameters and image statistics are drawn alike in every class: nothing separates them
    assert audit["ok"] is True and audit["params_ok"] is True and audit["separating"] == []
    assert "theta_E" in audit["params"] and "log10_m_axion" in audit["skipped"]
    assert audit["images"]["statistics"] == ["total_flux", "ring_radius", "q_xx", "q_yy", "q_xy",
                                                    "ring_radius_no_lens_light"]
    assert audit["images"]["ok"] is True
    assert set(audit["images"]["medians"]["ring_radius"]) == {"no_sub", "cdm", "axion"}
    for shard in manifest["splits"]["train"]["shards"]:
        path = out / shard["file"]
        assert sha256_file(path) == shard["sha256"]
        assert len(list(iter_records(path))) == shard["count"]
    assert shard["file"].startswith("train-") and shard["file"].endswith("-of-00003.tfrecord")
    stats = manifest["param_stats"]["train"]["log10_m_axion"]
    assert stats["finite"] == 6 and -24 <= stats["min"] <= stats["max"] <= -22


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one = simulate_dataset("model_ii", tmp_path / "one", num=40, seed=7, overrides=TINY, workers=1, progress=False)
    two = simulate_dataset("model_ii", tmp_path / "two", num=40, seed=7, overrides=TINY, workers=2, progress=False)
    assert one.manifest and two.manifest
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")
    other = simulate_dataset("model_ii", tmp_path / "other", num=40, seed=8, overrides=TINY, progress=False)
    assert other.manifest and shard_hashes(tmp_path / "other") != shard_hashes(tmp_path / "one")


@pytest.mark.slow
def test_parts_form_one_dataset(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    simulate_dataset("model_ii", whole, num=40, seed=1, overrides=TINY, progress=False)
    parts = tmp_path / "parts"
    first = simulate_dataset("model_ii", parts, num=40, seed=1, overrides=TINY, shard_index=0, num_shards=3,
                             progress=False)
    assert first.manifest is None and first.pending_shards > 0
    assert not (parts / "manifest.json").exists()
    for index in (2, 1):
        last = simulate_dataset("model_ii", parts, num=40, seed=1, overrides=TINY, shard_index=index,
                                num_shards=3, progress=False)
    assert last.manifest is not None
    assert shard_hashes(parts) == shard_hashes(whole)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, parts))
    assert a["splits"] == b["splits"] and a["pixel_stats"] == b["pixel_stats"]


@pytest.mark.slow
def test_rerun_skips_complete_shards_and_refuses_another_dataset(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = simulate_dataset("model_ii", out, num=24, seed=0, overrides=TINY, progress=False)
    again = simulate_dataset("model_ii", out, num=24, seed=0, overrides=TINY, progress=False)
    assert len(again.skipped) == len(first.written) and not again.written
    with pytest.raises(LensnetError, match="already holds a different dataset"):
        simulate_dataset("model_ii", out, num=24, seed=1, overrides=TINY, progress=False)
    replaced = simulate_dataset("model_ii", out, num=24, seed=1, overrides=TINY, progress=False, overwrite=True)
    assert replaced.manifest and json.loads((out / "manifest.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_killed_run_leaves_no_partial_shard_and_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    reference = tmp_path / "reference"
    command = [sys.executable, "-m", "lensnet.simulate", "--dataset", "model_ii", "--num", "400", "--seed", "5",
               "--workers", "1", "--no-progress", "--set", "image.size=24", "--set", "records_per_shard=40"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen([*command, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while victim.poll() is None and time.time() < deadline and len(list(out.glob("*.tfrecord"))) < 2:
        time.sleep(0.01)
    if victim.poll() is None:
        victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    # whatever was on disk at the kill: every shard under its final name is complete
    sidecars = {p.name[: -len(".json")] for p in (out / ".parts").glob("*.json")}
    for shard in out.glob("*.tfrecord"):
        if shard.name in sidecars:
            assert len(list(iter_records(shard))) == 40
    subprocess.run([*command, "--out", str(out)], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([*command, "--out", str(reference)], env=env, check=True, capture_output=True, timeout=300)
    assert shard_hashes(out) == shard_hashes(reference)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "no_such_preset"], "no_such_preset"),
        (["--dataset", "model_ii", "--set", "lens.no_such_key=1"], "lens.no_such_key"),
        (["--dataset", "model_ii", "--num", "0"], "--num"),
        (["--dataset", "model_ii", "--seed", "-1"], "--seed"),
        (["--dataset", "model_ii", "--shard-index", "3", "--num-shards", "2"], "--shard-index"),
        (["--config", "/nonexistent/dataset.yaml"], "not found"),
        ([], "--dataset"),
        (["--dataset", "deeplense_model_ii", "--set", "lens.theta_E=1.5"], "replica deeplense_model_ii"),
        (["--dataset", "deeplense_model_i", "--set", "substructure.n_mean=40"], "substructure.n_mean"),
        (["--dataset", "deeplense_model_iii", "--set", "instrument.name=Euclid"], "instrument.name"),
        (["--dataset", "model_ii", "--set", "substructure.f_sub=1.5"], "substructure.f_sub"),
        # redshift conventions and pinned instruments (the replicas' settings, usable by any preset)
        (["--dataset", "model_ii", "--set", "cosmology.multi_plane={z_source_convention: 2.5, H0: 67.5, Om0: 0.3}"],
         "cosmology.multi_plane.Ob0"),
        (["--dataset", "model_ii", "--set", "cosmology.multi_plane={z_convention: 2.5, H0: 67.5, Om0: 0.3, Ob0: 0.05}"],
         "cosmology.multi_plane.z_convention"),
        (["--dataset", "model_ii", "--set",
          "cosmology.multi_plane={z_source_convention: 0.2, H0: 67.5, Om0: 0.3, Ob0: 0.05}"],
         "cosmology.multi_plane.z_source_convention"),
        (["--dataset", "model_ii", "--set", "cosmology.multi_plane=2.5"], "cosmology.multi_plane"),
        (["--dataset", "lens_finding", "--set",
          "cosmology.multi_plane={z_source_convention: 2.5, H0: 67.5, Om0: 0.3, Ob0: 0.05}"], "cosmology.multi_plane"),
        (["--dataset", "model_ii", "--set", "instrument.pinned={VIS: {pixel_scale: 0.1}}"],
         "instrument.pinned.VIS.seeing"),
        (["--dataset", "model_ii", "--set", "instrument.pinned={VIS: {pixel_scale: 0.101, seeing: 0.16, "
          "psf_type: GAUSSIAN, magnitude_zero_point: 24.0, exposure_time: 565.0, num_exposures: 4, "
          "sky_brightness: 22.35, read_noise: 4.2, ccd_gain: 3.1, gain: 2}}"], "instrument.pinned.VIS.gain"),
        (["--dataset", "model_ii", "--set", "instrument.pinned={R: {pixel_scale: 0.1}}"], "instrument.pinned.VIS"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    code = run_cli(main, [*argv, "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert message in err
    assert not (tmp_path / "x").exists()  # nothing written


def test_replica_records_pass_check_audit_and_report_image_statistics(tmp_path: Path, capsys) -> None:
    from lensnet.data.__main__ import main as data_main

    out = tmp_path / "replica"
    code = run_cli(main, ["--dataset", "deeplense_model_ii", "--num", "60", "--out", str(out), "--workers", "1",
                          "--set", "image.size=32", "--set", "records_per_shard=30", "--no-progress"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["symmetry"] == "rot180" and manifest["config"]["replica"] == "deeplense_model_ii"
    assert manifest["audit"]["ok"] is True and manifest["audit"]["separating"] == []
    capsys.readouterr()
    assert run_cli(data_main, ["check", str(out), "--audit", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "image statistics per class" in text and "ring_radius" in text


def test_list_shows_presets(capsys) -> None:
    assert run_cli(main, ["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("model_i", "model_ii", "model_iii", "lens_finding", "super_resolution"):
        assert name in out
    for name in ("deeplense_model_i", "deeplense_model_ii", "deeplense_model_iii"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "REPLICA" in line


def test_writer_refuses_non_finite_images() -> None:
    from lensnet.data.schema import Schema

    schema = Schema.standard({"image": (2, 2, 1)}, ["theta_E"])
    record = {"id": "r", "seed": 0, "label": 0, "class_name": "x", "theta_E": 1.0,
              "image": np.array([[[1.0], [np.nan]], [[0.0], [0.0]]], np.float32)}
    with pytest.raises(LensnetError, match="'image' contains NaN"):
        schema.encode(record)
    record["image"] = np.zeros((3, 2, 1), np.float32)
    with pytest.raises(LensnetError, match="shape"):
        schema.encode(record)


def test_encoding_is_a_valid_tf_example() -> None:
    import tensorflow as tf

    from lensnet.data.schema import Schema

    schema = Schema.standard({"image": (2, 3, 1)}, ["theta_E", "log10_m_axion"])
    image = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    data = schema.encode({"id": "a/1", "seed": 2**62, "label": -1, "class_name": "", "image": image,
                          "theta_E": 1.25, "log10_m_axion": float("nan")})
    example = tf.train.Example.FromString(data)
    assert example.features.feature["seed"].int64_list.value[0] == 2**62
    assert example.features.feature["label"].int64_list.value[0] == -1
    decoded = schema.decode(tf.constant([data]))
    np.testing.assert_array_equal(decoded["image"].numpy()[0], image)
    assert decoded["theta_E"].numpy()[0] == np.float32(1.25) and np.isnan(decoded["log10_m_axion"].numpy()[0])
    assert decoded["id"].numpy()[0] == b"a/1"
