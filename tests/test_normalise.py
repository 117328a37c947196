"""The `asinh` normalisation (lensnet/data/normalise.py): the op against a numpy reference, its
invariance to a scaling and an offset, its inverse, what it does for a faint arc beside a bright core
compared with `standard`, spec validation with one-line errors, and a lens finder exported with it
(SavedModel and ONNX within 1e-4 of Keras; a NaN image is still refused by `predict` with one line)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_run, three_way

from lensnet.core.errors import LensnetError, run_cli
from lensnet.data.normalise import ASINH_BETA, apply_normalisation, check_spec, invert_normalisation


def numpy_asinh(images: np.ndarray, beta: float, bands: str = "separate") -> np.ndarray:
    """Independent reference: per image and channel, median sky, sigma from the median absolute difference
    of horizontal neighbours, asinh stretch (per band, or one factor asinh(I) / I from the bands' mean),
    then zero mean and unit std."""
    x = images.astype(np.float64)
    sky = np.median(x, axis=(1, 2), keepdims=True)
    mad = np.median(np.abs(np.diff(x, axis=2)), axis=(1, 2), keepdims=True)
    sigma = mad / (0.6744897501960817 * np.sqrt(2.0))
    u = (x - sky) / (beta * sigma)
    if bands == "joint":
        intensity = u.mean(axis=-1, keepdims=True)
        y = u * np.arcsinh(intensity) / intensity
    else:
        y = np.arcsinh(u)
    return (y - y.mean(axis=(1, 2), keepdims=True)) / y.std(axis=(1, 2), keepdims=True)


def galaxy_with_arc(size: int = 32, core: float = 2000.0, arc: float = 3.0, seed: int = 0) -> tuple:
    """(image (1, size, size, 1), arc mask, sky mask): unit sky noise, a bright compact core, and a faint
    half ring of `arc` sigma per pixel at radius size/3."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    ring = (np.abs(r - size / 3) < 1.0) & (yy > 0)
    image = core * np.exp(-0.5 * (r / 1.5) ** 2) + arc * ring
    image = image + np.random.default_rng(seed).standard_normal(image.shape)
    return image[None, :, :, None].astype(np.float32), ring, r > size / 3 + 3


@pytest.mark.parametrize("shape", [(15, 15, 2), (16, 12, 3)], ids=["odd-pixel-count", "even-pixel-count"])
@pytest.mark.parametrize("beta", [0.5, 3.0])
@pytest.mark.parametrize("bands", ["separate", "joint"])
def test_asinh_matches_a_numpy_reference(shape, beta, bands):
    rng = np.random.default_rng(1)
    images = rng.normal(0.3, 2.0, (3, *shape)).astype(np.float32)
    images[:, shape[0] // 2, shape[1] // 2, :] += 500.0  # a bright core must not move the sky or the sigma
    out = apply_normalisation(images, {"method": "asinh", "beta": beta, "bands": bands}).numpy()
    np.testing.assert_allclose(out, numpy_asinh(images, beta, bands), atol=2e-5)


@pytest.mark.parametrize("bands", ["separate", "joint"])
def test_asinh_is_invariant_to_scaling_and_offset_and_inverts(bands):
    images, _, _ = galaxy_with_arc()
    noise = np.random.default_rng(5).standard_normal(images.shape).astype(np.float32)
    images = np.concatenate([images, 2.0 * images + 0.5 + noise], axis=-1)
    spec = {"method": "asinh", "beta": 2.0, "bands": bands}
    out = apply_normalisation(images, spec).numpy()
    for scale, offset in [(4.0, 0.0), (0.037, 0.0), (250.0, -30.0)]:
        np.testing.assert_allclose(apply_normalisation(scale * images + offset, spec).numpy(), out, atol=1e-4)
    back = invert_normalisation(out, spec, images).numpy()
    np.testing.assert_allclose(back, images, rtol=1e-4, atol=1e-3)
    # a blank cutout and one more than half masked stay finite
    blank = np.zeros((1, 8, 8, 1), np.float32)
    np.testing.assert_array_equal(apply_normalisation(blank, spec).numpy(), blank)
    masked = np.zeros((1, 16, 16, 1), np.float32)
    masked[0, :5] = np.random.default_rng(2).standard_normal((5, 16, 1))
    assert np.isfinite(apply_normalisation(masked, spec).numpy()).all()


def test_a_faint_arc_beside_a_bright_core_keeps_more_of_the_range_than_under_standard():
    images, arc, sky = galaxy_with_arc()

    def arc_share(method: dict) -> float:
        out = apply_normalisation(images, method).numpy()[0, :, :, 0]
        floor = np.median(out[sky])
        return float((out[arc].mean() - floor) / (out.max() - floor))

    standard, stretched = arc_share({"method": "standard"}), arc_share({"method": "asinh", "beta": 1.0})
    assert standard < 0.005  # linear: the arc is 3 / 2000 of the core
    assert stretched > 0.15 and stretched > 50 * standard


@pytest.mark.parametrize("spec, message", [
    ({"method": "asinh", "beta": 0}, "beta must be a finite number > 0, got 0"),
    ({"method": "asinh", "beta": -1.0}, "beta must be a finite number > 0"),
    ({"method": "asinh", "beta": float("nan")}, "beta must be a finite number > 0"),
    ({"method": "asinh", "beta": "2"}, "beta must be a finite number > 0, got '2'"),
    ({"method": "asinh", "beta": True}, "beta must be a finite number > 0"),
    ({"method": "asinh", "betta": 2.0}, "unknown field(s) betta; allowed: bands, beta, method"),
    ({"method": "asinh", "bands": "all"}, "bands must be one of joint, separate, got 'all'"),
    ({"method": "standard", "beta": 2.0}, "'standard': unknown field(s) beta"),
])
def test_bad_asinh_specs_are_one_line_errors(spec, message):
    with pytest.raises(LensnetError) as caught:
        check_spec(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_asinh_specs_are_json_able_and_the_fit_config_takes_them(tmp_path, capsys):
    import json

    from lensnet.core.config import parse_set
    from lensnet.data.normalise import normalisation_spec
    from lensnet.fit import main as fit_main
    from lensnet.training.config import resolve_fit_config

    assert normalisation_spec("asinh", None) == {"method": "asinh", "beta": ASINH_BETA, "bands": "joint"}
    spec = check_spec({"method": "asinh", "beta": 3})
    assert json.loads(json.dumps(spec)) == {"method": "asinh", "beta": 3.0, "bands": "joint"}
    override = parse_set(["data.normalise={method: asinh, beta: 10, bands: separate}"])
    config = resolve_fit_config("lens_finding", overrides=override)
    assert config["data"]["normalise"] == {"method": "asinh", "beta": 10.0, "bands": "separate"}
    by_name = resolve_fit_config("lens_finding", overrides=parse_set(["data.normalise=asinh"]))
    assert by_name["data"]["normalise"] == "asinh"
    argv = ["--task", "lens_finding", "--data", str(tmp_path / "missing"), "--runs", str(tmp_path / "runs"),
            "--set", "data.normalise={method: asinh, beta: -2}"]
    assert run_cli(fit_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: normalisation spec 'asinh': beta must be a finite number > 0, got -2"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("bands", ["separate", "joint"])
def test_a_lens_finder_exported_with_asinh_matches_keras_and_refuses_nan(tmp_path, capsys, bands):
    from lensnet.predict import main as predict_main
    from lensnet.serving.export import export_run

    shape = (16, 16, 3)
    spec = {"method": "asinh", "beta": 2.0, "bands": bands}
    run = make_run(tmp_path / "run", "cnn_small", kind="binary", shape=shape, normalisation=spec)
    result = export_run(run, tmp_path / "export")
    assert result.card["normalisation"] == spec
    check = result.card["verification"]
    assert check["max_abs_diff_savedmodel"] <= 1e-4 and check["max_abs_diff_onnxruntime"] <= 1e-4
    images = np.concatenate([galaxy_with_arc(16, seed=s)[0] for s in range(4)]).repeat(3, axis=-1)
    images = images * np.array([0.5, 1.0, 3.0], np.float32) + 0.1
    diffs = three_way(result.path, run, images)
    assert diffs["savedmodel"] <= 1e-4 and diffs["onnx"] <= 1e-4, diffs

    bad = images[0].copy()
    bad[2, 3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert run_cli(predict_main, ["--model", str(tmp_path / "export"), str(tmp_path / "nan.npy"),
                                  "--out", str(tmp_path / "o.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nan.npy'}: image has 1 NaN or Inf pixel(s) (--skip-bad skips such images)"
    assert not (tmp_path / "o.csv").exists()
