"""Predict: .npy / FITS files, folders and TFRecord datasets scored through onnxruntime and TF
match Keras; bad shapes, NaN pixels and pickled arrays are one-line errors (or skipped with
--skip-bad); the CSV is written atomically; a model that returns images writes one .npy or FITS
file per image, in input units, and a CSV row pointing at it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, keras_outputs, make_image_run, make_run

from lensnet.core.errors import LensnetError, run_cli
from lensnet.predict import main

SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Exports of a 3-class, a binary, a regression and an image run, with their run dirs."""
    from lensnet.serving.export import export_run

    base = tmp_path_factory.mktemp("predict")
    out = {}
    for kind in ("multiclass", "binary", "regression"):
        run = make_run(base / f"run_{kind}", "cnn_small", kind=kind, seed=len(out))
        export_run(run, base / "export" / kind)
        out[kind] = base / "export" / kind
        out[f"run_{kind}"] = run
    run = make_image_run(base / "run_image", shape=SHAPE)
    export_run(run, base / "export" / "image")
    out["image"], out["run_image"] = base / "export" / "image", run
    return out


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def predict(*args: str) -> int:
    return run_cli(main, [*map(str, args), "--no-progress"])


def rng_images(n: int, seed: int = 0, shape: tuple = SHAPE) -> np.ndarray:
    return (5.0 + 2.0 * np.random.default_rng(seed).standard_normal((n, *shape))).astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnx", "tf"])
def test_files_and_folders_match_keras(tmp_path, exported, runtime):
    from astropy.io import fits

    images = rng_images(8)
    data = tmp_path / "cutouts"
    (data / "deeper").mkdir(parents=True)
    np.save(data / "a.npy", images[0])  # (H, W, C)
    np.save(data / "b.npy", images[1, :, :, 0].astype("float64"))  # (H, W), float64
    np.save(data / "stack.npy", images[2:5])  # (N, H, W, C)
    fits.PrimaryHDU(images[5, :, :, 0].astype(">f4")).writeto(data / "deeper" / "c.fits")  # big-endian FITS
    fits.PrimaryHDU(images[6, :, :, 0]).writeto(data / "deeper" / "d.fits.gz")
    np.save(tmp_path / "single.npy", images[7][None])  # a stack of one
    (data / "notes.txt").write_text("ignored: not an image type")

    out = tmp_path / "predictions.csv"
    status = predict("--model", exported["multiclass"], tmp_path / "single.npy", data, "--out", out,
                     "--runtime", runtime, "--batch-size", "3")
    assert status == 0
    header, rows = read_csv(out)
    assert header == ["source", "predicted", "p_c0", "p_c1", "p_c2"]
    # Inputs in the order given; a folder's files sorted by path, recursively.
    expected_sources = [f"{tmp_path / 'single.npy'}[0]", str(data / "a.npy"), str(data / "b.npy"),
                        str(data / "deeper" / "c.fits"), str(data / "deeper" / "d.fits.gz"),
                        *(f"{data / 'stack.npy'}[{i}]" for i in range(3))]
    assert [r[0] for r in rows] == expected_sources
    order = [7, 0, 1, 5, 6, 2, 3, 4]
    reference = keras_outputs(exported["run_multiclass"], images[order])
    probs = np.array([[float(v) for v in r[2:]] for r in rows])
    np.testing.assert_allclose(probs, reference, atol=1e-4)
    assert [r[1] for r in rows] == [f"c{k}" for k in reference.argmax(1)]


@pytest.mark.slow
def test_tfrecord_dataset_rows_are_record_ids(tmp_path, exported):
    from lensnet.data.pipeline import load
    from lensnet.data.synthetic import write_synthetic

    dataset = tmp_path / "ds"
    write_synthetic(dataset, num=24, image_shape=SHAPE, num_classes=2, records_per_shard=5)
    out = tmp_path / "all.csv"
    assert predict("--model", exported["binary"], dataset, "--out", out, "--batch-size", "7") == 0
    header, rows = read_csv(out)
    assert header == ["source", "predicted", "p_non_lens", "p_lens"]
    assert sorted(r[0] for r in rows) == sorted(f"synthetic/{i}" for i in range(24))

    out_test = tmp_path / "test.csv"
    assert predict("--model", exported["binary"], dataset, "--split", "test", "--out", out_test,
                   "--runtime", "tf") == 0
    _, rows = read_csv(out_test)
    batch = next(iter(load(dataset, "test", batch_size=100, fields=["id", "image"], normalise="none")))
    ids = [v.decode() for v in batch["id"].numpy()]
    assert [r[0] for r in rows] == ids
    p_lens = keras_outputs(exported["run_binary"], batch["image"].numpy())[:, 0]
    np.testing.assert_allclose([float(r[3]) for r in rows], p_lens, atol=1e-4)
    np.testing.assert_allclose([float(r[2]) for r in rows], 1 - p_lens, atol=1e-4)
    assert [r[1] for r in rows] == ["lens" if p >= 0.5 else "non_lens" for p in p_lens]


@pytest.mark.slow
def test_regression_rows_hold_the_target_value(tmp_path, exported):
    images = rng_images(3, seed=4)
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "r.csv"
    assert predict("--model", exported["regression"], tmp_path / "x.npy", "--out", out) == 0
    header, rows = read_csv(out)
    assert header == ["source", "radius"]
    reference = keras_outputs(exported["run_regression"], images)[:, 0]
    np.testing.assert_allclose([float(r[1]) for r in rows], reference, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((32, 32), "float32"), "image shape (32, 32) does not fit the model"),
        (np.zeros((16, 16, 3), "float32"), "image shape (16, 16, 3) does not fit the model"),
        (np.zeros((2, 16, 16, 2), "float32"), "image shape (2, 16, 16, 2)"),
        (np.array(["a", "b"]), "expected numeric pixels"),
    ],
)
def test_wrong_shapes_name_the_file_and_the_expected_shape(tmp_path, exported, capsys, array, fragment):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    assert predict("--model", exported["multiclass"], path, "--out", tmp_path / "o.csv") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}") and fragment in err and len(err.splitlines()) == 1
    if "fit the model" in fragment:
        assert "(16, 16, 1)" in err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_nan_pixels_fail_or_are_skipped(tmp_path, exported, capsys):
    images = rng_images(4, seed=2)
    images[1, 3, 3, 0] = np.nan
    images[2, 0, 0, 0] = np.inf
    for i, image in enumerate(images):
        np.save(tmp_path / f"img{i}.npy", image)
    out = tmp_path / "o.csv"
    assert predict("--model", exported["multiclass"], tmp_path, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'img1.npy'}: image has 1 NaN or Inf pixel(s) (--skip-bad skips such images)"
    assert not out.exists()

    assert predict("--model", exported["multiclass"], tmp_path, "--out", out, "--skip-bad") == 0
    err = capsys.readouterr().err
    assert f"skipped: {tmp_path / 'img1.npy'}: image has 1 NaN" in err
    assert f"skipped: {tmp_path / 'img2.npy'}: image has 1 NaN or Inf" in err
    assert "skipped 2" in err
    _, rows = read_csv(out)
    assert [r[0] for r in rows] == [str(tmp_path / "img0.npy"), str(tmp_path / "img3.npy")]


class _Payload:
    """Unpickling this would create a directory: the loader must never unpickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.slow
def test_pickled_npy_is_refused_and_never_unpickled(tmp_path, exported, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    assert predict("--model", exported["multiclass"], path, "--out", tmp_path / "o.csv") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: holds pickled Python objects") and "--trust-pickle" in err
    assert not marker.exists()


@pytest.mark.slow
def test_trusted_pickles_are_read_like_convert_reads_them(tmp_path, exported):
    """DeepLense axion files ([image, mass] object arrays) score with --trust-pickle, as convert imports them."""
    image = rng_images(1, seed=6)[0, :, :, 0]
    path = tmp_path / "axion.npy"
    np.save(path, np.array([image, 1e-23], dtype=object), allow_pickle=True)
    out = tmp_path / "o.csv"
    assert predict("--model", exported["multiclass"], path, "--out", out, "--trust-pickle") == 0
    _, rows = read_csv(out)
    reference = keras_outputs(exported["run_multiclass"], image[None, :, :, None])
    np.testing.assert_allclose([float(v) for v in rows[0][2:]], reference[0], atol=1e-4)


@pytest.mark.slow
def test_csv_is_written_atomically(tmp_path, exported):
    images = rng_images(5, seed=3)
    images[4, 0, 0, 0] = np.nan
    for i, image in enumerate(images):
        np.save(tmp_path / f"img{i}.npy", image)
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    out.write_text("previous results\n")
    # Batches of 1: four rows are scored and written to the temporary file before the error.
    assert predict("--model", exported["multiclass"], tmp_path, "--out", out, "--batch-size", "1") == 2
    assert out.read_text() == "previous results\n"
    assert os.listdir(out.parent) == ["p.csv"]


@pytest.mark.slow
def test_fits_hdu_selection(tmp_path, exported, capsys):
    from astropy.io import fits

    image = rng_images(1, seed=5)[0, :, :, 0]
    path = tmp_path / "multi.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 4), "f4"), name="WHT"),
                  fits.ImageHDU(image, name="SCI")]).writeto(path)
    for hdu in ("SCI", "2"):
        out = tmp_path / f"{hdu}.csv"
        assert predict("--model", exported["multiclass"], path, "--hdu", hdu, "--out", out) == 0
        _, rows = read_csv(out)
        reference = keras_outputs(exported["run_multiclass"], image[None, :, :, None])
        np.testing.assert_allclose([float(v) for v in rows[0][2:]], reference[0], atol=1e-4)
    # Default: the first HDU with image data, here the 4x4 weight map, which does not fit.
    assert predict("--model", exported["multiclass"], path, "--out", tmp_path / "x.csv") == 2
    assert "image shape (4, 4) does not fit" in capsys.readouterr().err
    assert predict("--model", exported["multiclass"], path, "--hdu", "9", "--out", tmp_path / "x.csv") == 2
    assert "no HDU 9; HDUs: 0:PRIMARY, 1:WHT, 2:SCI" in capsys.readouterr().err


@pytest.mark.slow
def test_versions_and_missing_inputs(tmp_path, exported, capsys):
    np.save(tmp_path / "a.npy", rng_images(1)[0])
    assert predict("--model", exported["multiclass"], tmp_path / "a.npy", "--version", "1",
                   "--out", tmp_path / "o.csv") == 0
    assert predict("--model", exported["multiclass"], tmp_path / "a.npy", "--version", "7") == 2
    assert "has no version 7; versions: 1" in capsys.readouterr().err
    assert predict("--model", tmp_path / "nothing", tmp_path / "a.npy") == 2
    assert "model directory not found" in capsys.readouterr().err
    assert predict("--model", exported["multiclass"], tmp_path / "missing.npy") == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict("--model", exported["multiclass"], tmp_path / "empty") == 2
    assert "holds no .npy or FITS files" in capsys.readouterr().err


def test_as_image_batch_layouts():
    from lensnet.data.imagefiles import as_image_batch

    hwc = np.arange(2 * 3 * 4, dtype="f8").reshape(2, 3, 4)  # H=2, W=3, C=4
    assert as_image_batch(hwc, (2, 3, 4), "x").shape == (1, 2, 3, 4)
    chw = np.moveaxis(hwc, -1, 0)
    np.testing.assert_array_equal(as_image_batch(chw, (2, 3, 4), "x")[0], hwc)
    np.testing.assert_array_equal(as_image_batch(np.stack([chw, chw]), (2, 3, 4), "x")[1], hwc)
    assert as_image_batch(np.zeros((5, 2, 3)), (2, 3, 1), "x").shape == (5, 2, 3, 1)
    assert as_image_batch(np.zeros((2, 3), "i2"), (2, 3, 1), "x").dtype == np.float32
    with pytest.raises(LensnetError, match=r"^y: image shape \(3, 2\) does not fit"):
        as_image_batch(np.zeros((3, 2)), (2, 3, 1), "y")


@pytest.mark.slow
def test_predict_command_line(tmp_path, exported):
    np.save(tmp_path / "a.npy", rng_images(2))
    out = tmp_path / "p.csv"
    command = [sys.executable, "-m", "lensnet.predict", "--model", str(exported["multiclass"]),
               str(tmp_path / "a.npy"), "--out", str(out), "--seed", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote 2 predictions" in done.stderr and len(read_csv(out)[1]) == 2
    np.save(tmp_path / "a.npy", np.zeros((8, 8)))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'a.npy'}: image shape (8, 8)")


@pytest.mark.slow
@pytest.mark.parametrize("image_format", ["npy", "fits"])
def test_image_outputs_are_written_one_file_per_image(tmp_path, exported, image_format):
    from astropy.io import fits

    from lensnet.data.imagefiles import read_image_file

    images = rng_images(4, seed=8, shape=SHAPE) * 20.0 + 100.0
    data = tmp_path / "in"
    data.mkdir()
    np.save(data / "one.npy", images[0])
    np.save(data / "stack.npy", images[1:3])
    fits.PrimaryHDU(images[3, :, :, 0]).writeto(data / "z.fits")
    out = tmp_path / "p.csv"
    assert predict("--model", exported["image"], data, "--out", out, "--image-format", image_format,
                   "--batch-size", "2") == 0
    header, rows = read_csv(out)
    assert header == ["source", "image_file"]
    assert [r[0] for r in rows] == [str(data / "one.npy"), f"{data / 'stack.npy'}[0]", f"{data / 'stack.npy'}[1]",
                                    str(data / "z.fits")]
    files = [Path(r[1]) for r in rows]
    assert all(f.parent == tmp_path / "p_images" and f.name.endswith(f".{image_format}") for f in files)
    assert len(set(files)) == 4 and sorted(p.name for p in (tmp_path / "p_images").iterdir()) == \
        sorted(f.name for f in files)
    reference = keras_outputs(exported["run_image"], images)
    span = float(np.ptp(reference))
    for f, expected in zip(files, reference):
        written, _ = read_image_file(f)
        assert written.shape == ((16, 16, 1) if image_format == "npy" else (16, 16))
        np.testing.assert_allclose(written.reshape(16, 16, 1), expected, atol=1e-4 * span)
    # Pixels in input units: the output images sit on the inputs' scale, not the normalised one.
    assert abs(float(reference.mean()) - 100.0) < 50.0

    # --image-dir puts them elsewhere.
    assert predict("--model", exported["image"], data / "one.npy", "--out", tmp_path / "q.csv",
                   "--image-dir", tmp_path / "elsewhere") == 0
    assert len(list((tmp_path / "elsewhere").iterdir())) == 1


def test_values_and_score_rows_come_from_the_output_kind():
    from lensnet.artifacts.outputs import OutputSpec, PredictSettings

    values = OutputSpec("values", "value", columns=("theta_E", "q"), units=("arcsec", ""))
    assert values.handler.csv_header(values) == ["theta_E", "q"]
    rows = values.handler.csv_rows(values, np.array([[1.25, 0.5]], np.float32), ["a"], PredictSettings())
    assert rows == [["1.25", "0.5"]]
    score = OutputSpec("score", "anomaly", meaning="higher is more anomalous")
    assert score.handler.csv_header(score) == ["score"]
    binary = OutputSpec("probabilities", "p", columns=("p_lens",), class_names=("non_lens", "lens"),
                        positive_class="lens")
    rows = binary.handler.csv_rows(binary, np.array([[0.7], [0.2]], np.float32), ["a", "b"],
                                   PredictSettings(threshold=0.75))
    assert [r[0] for r in rows] == ["non_lens", "non_lens"] and rows[0][1:] == ["0.3", "0.7"]
    with pytest.raises(LensnetError, match="positive_class 'x' must be one of exactly 2 class_names"):
        OutputSpec.from_json({**binary.to_json(), "positive_class": "x"})
