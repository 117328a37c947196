"""Super-resolution (issue 11): models, task, honest PSNR/SSIM, pairs, degrade mode, export, predict FITS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lensnet.core.errors import run_cli
from lensnet.fit import main as fit_main

TINY = {  # one-epoch versions of every super-resolution model
    "bicubic": [],
    "edsr": ["--set", "model.args.filters=8", "--set", "model.args.num_blocks=1"],
    "rcan": ["--set", "model.args.filters=8", "--set", "model.args.num_groups=1", "--set", "model.args.num_blocks=1"],
    "swinir": ["--set", "model.args.embed_dim=8", "--set", "model.args.depths=[2]", "--set", "model.args.num_heads=[2]",
               "--set", "model.args.upsample_filters=8"],
}


def fit_argv(data: Path, runs: Path, model: str, name: str, *extra: str) -> list[str]:
    return ["--task", "super_resolution", "--data", str(data), "--model", model, "--epochs", "1", "--batch-size", "16",
            "--runs", str(runs), "--run-name", name, "--no-progress", "--set", "run.verbose=2", "--seed", "0",
            *extra]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The super_resolution preset at LR 16x16 / HR 32x32 (48 records)."""
    from lensnet.simulate.dataset import simulate_dataset

    out = tmp_path_factory.mktemp("sr") / "pairs"
    simulate_dataset("super_resolution", out, num=48, seed=0, progress=False,
                     overrides={"image": {"size": 16, "supersampling": 1}, "records_per_shard": 16})
    return out


@pytest.fixture(scope="module")
def runs(pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("sr_runs")
    for model, extra in TINY.items():
        assert run_cli(fit_main, fit_argv(pairs, runs, model, model, *extra)) == 0, model
    return runs


def numpy_bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upsampling written out: Keys kernel a = -0.5, half-pixel centres; taps outside the image are
    dropped and the remaining weights renormalised (TF's half-pixel convention, ONNX's exclude_outside)."""
    def weights(t: np.ndarray) -> np.ndarray:
        a, t = -0.5, np.abs(t)
        return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))

    def along(x: np.ndarray, axis: int) -> np.ndarray:
        n = x.shape[axis]
        centre = (np.arange(n * scale) + 0.5) / scale - 0.5
        base = np.floor(centre).astype(int)
        out, total = 0, 0
        for k in range(-1, 3):
            inside = (base + k >= 0) & (base + k < n)
            w = np.where(inside, weights(centre - (base + k)), 0.0)
            w = w.reshape([-1 if d == axis else 1 for d in range(x.ndim)])
            out = out + np.take(x, np.clip(base + k, 0, n - 1), axis=axis) * w
            total = total + w
        return out / total

    return along(along(lr.astype(np.float64), 1), 2)


@pytest.mark.slow
def test_every_model_trains_one_epoch_and_round_trips_its_config(runs: Path) -> None:
    import keras

    from lensnet.models import create_model

    for model in TINY:
        info = json.loads((runs / model / "run.json").read_text())
        assert info["status"] == "finished" and info["output"]["kind"] == "image"
        assert info["output"]["image"] == {"shape": [32, 32, 1], "inverse": None}
        assert info["task_state"]["scale"] == 2 and info["normalisation"] == {"method": "none"}
        metrics = json.loads((runs / model / "metrics.json").read_text())
        assert metrics["psnr"] is not None and metrics["bicubic_psnr"] is not None and metrics["scale"] == 2
        assert "per_image" in metrics["data_range"] and (runs / model / "plots" / "sr_panels.png").is_file()
        assert list((runs / model / "logs" / "sr_panels").glob("events.out.tfevents.*"))  # panels each epoch
        built = create_model(model, (16, 16, 1), scale=2)
        again = type(built).from_config(built.get_config())
        again.set_weights(built.get_weights())
        x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
        np.testing.assert_allclose(again(x), built(x), atol=1e-6)
        assert keras.saving.serialize_keras_object(again)["config"] == built.get_config()
    assert create_model("swinir", (16, 16, 1), scale=4).output.shape[1:] == (64, 64, 1)


@pytest.mark.slow
def test_bicubic_has_no_weights_and_its_psnr_is_reproduced_independently(runs: Path, pairs: Path) -> None:
    from lensnet.data import load
    from lensnet.tasks.checkpoints import load_model

    model = load_model(runs / "bicubic")
    assert model.count_params() == 0 and not model.trainable_weights
    batch = next(iter(load(pairs, "test", batch_size=64, fields=["image", "image_hr"], normalise="none")))
    lr, hr = batch["image"].numpy(), batch["image_hr"].numpy().astype(np.float64)
    sr = numpy_bicubic(lr, 2)
    np.testing.assert_allclose(model(lr).numpy(), sr, atol=1e-4 * np.ptp(hr))
    span = hr.max(axis=(1, 2, 3)) - hr.min(axis=(1, 2, 3))
    psnr = 10 * np.log10(span**2 / ((sr - hr) ** 2).mean(axis=(1, 2, 3)))
    metrics = json.loads((runs / "bicubic" / "metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(psnr.mean(), abs=1e-3)
    assert metrics["bicubic_psnr"] == pytest.approx(psnr.mean(), abs=1e-3)
    assert metrics["image_quality"]["rows"]["model"]["per_image"]["psnr"] == pytest.approx(list(psnr), abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--model", "edsr", "--set", "model.args.scale=4"], "scale 4) but the dataset's HR images are 32x32x1 (scale 2)"),
    (["--model", "cnn_small"], "'cnn_small' is a backbone model, but this task needs a super_resolution model"),
    (["--model", "swinir", "--set", "model.args.window_size=5"], "window_size 5 does not divide"),
    (["--model", "edsr", "--set", "data.normalise=standard"], "data.normalise must be none"),
])
def test_bad_sr_setups_are_one_line_errors_and_write_nothing(capsys, pairs: Path, tmp_path: Path, argv, message):
    base = fit_argv(pairs, tmp_path, "edsr", "bad")
    base[base.index("--model"):base.index("--model") + 2] = argv[:2]
    code = run_cli(fit_main, [*base, *argv[2:]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_wrong_data_and_classifiers_on_sr_models_are_one_line_errors(capsys, synthetic_dataset, pairs, tmp_path):
    code = run_cli(fit_main, fit_argv(synthetic_dataset, tmp_path, "edsr", "x"))
    err = capsys.readouterr().err
    assert code == 2 and "no high-resolution image field 'image_hr'" in err and len(err.strip().splitlines()) == 1
    code = run_cli(fit_main, ["--task", "regression", "--target", "theta_E", "--model", "edsr", "--data", str(pairs),
                              "--runs", str(tmp_path), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "'edsr' is a super_resolution model, but this task needs a backbone model" in err
    assert not any(tmp_path.iterdir())


def test_degrade_makes_aligned_pairs_and_d4_keeps_them_aligned(tmp_path: Path) -> None:
    from lensnet.convert import main as convert_main
    from lensnet.data import load, open_dataset
    from lensnet.data.synthetic import write_synthetic

    write_synthetic(tmp_path / "hr", 32, image_shape=(32, 32, 1), num_classes=2, seed=0)
    argv = ["degrade", str(tmp_path / "hr"), "--out", str(tmp_path / "pairs"), "--factor", "2", "--no-progress"]
    assert run_cli(convert_main, argv) == 0
    info = open_dataset(tmp_path / "pairs")
    assert info.image_shape == (16, 16, 1) and tuple(info.schema["image_hr"].shape) == (32, 32, 1)
    assert info.class_names == ["class0", "class1"] and "radius" in info.param_names
    assert info.manifest["config"]["degrade"] == {"factor": 2, "psf_fwhm": 0.0, "noise_rms": 0.0, "gain": 0.0}
    for augment in (None, "d4"):  # no blur, no noise: LR is exactly the 2x2 block mean of HR, before and after D4
        batch = next(iter(load(info, "train", batch_size=16, augment=augment, normalise="none", seed=3)))
        lr, hr = batch["image"].numpy(), batch["image_hr"].numpy()
        np.testing.assert_allclose(lr, hr.reshape(-1, 16, 2, 16, 2, 1).mean(axis=(2, 4)), atol=1e-6)
    assert run_cli(convert_main, [*argv[:2], "--out", str(tmp_path / "p3"), "--factor", "3"]) == 2
    blurred = tmp_path / "blurred"
    argv_blur = [*argv[:3], str(blurred), "--psf-fwhm", "2", "--noise-rms", "0.1", "--no-progress"]
    assert run_cli(convert_main, argv_blur) == 0
    a = next(iter(load(blurred, "test", batch_size=8, normalise="none")))["image"].numpy()
    b = next(iter(load(tmp_path / "pairs", "test", batch_size=8, normalise="none")))["image"].numpy()
    assert 0.05 < np.std(a - b) < 1.0  # blur and noise changed the LR images


@pytest.mark.slow
def test_scores_per_class_beside_bicubic(pairs: Path) -> None:
    from lensnet.data import open_dataset
    from lensnet.tasks import get_task_class

    task = get_task_class("super_resolution").from_config({})
    task.setup(open_dataset(pairs))
    rng = np.random.default_rng(0)
    lr = rng.gamma(2.0, 1.0, (6, 16, 16, 1)).astype(np.float32)
    hr = numpy_bicubic(lr, 2).astype(np.float32) + 0.1 * rng.normal(size=(6, 32, 32, 1)).astype(np.float32)
    task.class_names, task.fields = ["a", "b"], ("image", "image_hr", "label")
    y = task.targets({"image": lr, "image_hr": hr, "label": np.array([0, 1, 0, 1, 0, 1])})
    scores = task.score(y, hr + 0.01)  # nearly perfect model
    assert scores["psnr"] > scores["bicubic_psnr"] and scores["psnr_gain_over_bicubic"]["ci95"][0] > 0
    assert set(scores["image_quality"]["rows"]["model"]["per_class"]) == {"a", "b"}


@pytest.mark.slow
def test_sr_export_verifies_and_predict_writes_fits_with_the_new_pixel_scale(runs: Path, tmp_path: Path) -> None:
    from astropy.io import fits
    from helpers import keras_outputs, three_way

    from lensnet.export import main as export_main
    from lensnet.predict import main as predict_main

    run = runs / "edsr"
    assert run_cli(export_main, ["--run", str(run), "--out", str(tmp_path / "export")]) == 0
    card = json.loads((tmp_path / "export" / "1" / "card.json").read_text())
    assert card["output"]["kind"] == "image" and card["output"]["shape"] == [None, 32, 32, 1]
    images = (5.0 + 2.0 * np.random.default_rng(1).gamma(2.0, 1.0, (3, 16, 16, 1))).astype(np.float32)
    reference = keras_outputs(run, images)
    diffs = three_way(tmp_path / "export" / "1", run, images)
    assert max(diffs.values()) <= 1e-4 * np.ptp(reference), diffs

    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=8.5, CRPIX2=8.5, CDELT1=-0.1 / 3600,
                  CDELT2=0.1 / 3600, CRVAL1=150.0, CRVAL2=2.0, PIXSCALE=0.1, BUNIT="e-/s", OBJECT="lens")
    source = tmp_path / "cutout.fits"
    fits.PrimaryHDU(images[0, ..., 0], header=header).writeto(source)
    out = tmp_path / "p.csv"
    argv = ["--model", str(tmp_path / "export"), str(source), "--out", str(out), "--image-format", "fits",
            "--no-progress"]
    assert run_cli(predict_main, argv) == 0
    written = Path(out.read_text().splitlines()[1].split(",")[1])
    with fits.open(written) as hdul:
        data, h = hdul[0].data, hdul[0].header
    assert data.shape == (32, 32) and h["OBJECT"] == "lens" and h["BUNIT"] == "e-/s"
    assert h["CDELT1"] == pytest.approx(-0.05 / 3600) and h["CDELT2"] == pytest.approx(0.05 / 3600)
    assert h["PIXSCALE"] == pytest.approx(0.05) and h["CRPIX1"] == pytest.approx(16.5)
    np.testing.assert_allclose(data, reference[0, ..., 0], atol=1e-4 * np.ptp(reference))


def test_serve_answers_image_outputs_as_nested_lists() -> None:
    from lensnet.artifacts.outputs import OutputSpec

    spec = OutputSpec("image", "sr_image", image={"shape": [4, 4, 1], "inverse": None})
    body = spec.handler.json_outputs(spec, np.zeros((2, 4, 4, 1), np.float32))
    assert isinstance(body, list) and len(body) == 2 and body[0][3][3] == [0.0]
