"""PSNR / SSIM against independent references on fixed arrays, with the data range stated."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lensnet.core.errors import LensnetError
from lensnet.tasks import image_quality as iq


def pair(seed: int = 0, shape=(3, 24, 20, 2)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.gamma(2.0, 3.0, size=shape).astype(np.float32) + 5.0  # physical units, offset from 0
    prediction = (target + rng.normal(0, 1.0, size=shape)).astype(np.float32)
    return target, prediction


def test_psnr_matches_numpy_and_tf_image_psnr() -> None:
    target, prediction = pair()
    r = 40.0
    mine = np.asarray(iq.psnr(target, prediction, r))
    mse = ((prediction.astype(np.float64) - target) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(mine, 10 * np.log10(r**2 / mse), rtol=1e-5)
    np.testing.assert_allclose(mine, tf.image.psnr(target, prediction, max_val=r).numpy(), rtol=1e-5)


@pytest.mark.parametrize("r", [1.0, 40.0, 255.0])
def test_ssim_matches_tf_image_ssim_with_the_same_window_and_range(r: float) -> None:
    target, prediction = pair(1)
    mine = np.asarray(iq.ssim(target, prediction, r))
    ref = tf.image.ssim(target, prediction, max_val=r, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03).numpy()
    np.testing.assert_allclose(mine, ref, atol=2e-5)


def test_per_image_range_is_each_hr_images_own_span() -> None:
    target, prediction = pair(2)
    values = iq.per_image(target, prediction, "per_image")
    spans = target.max(axis=(1, 2, 3)) - target.min(axis=(1, 2, 3))
    np.testing.assert_allclose(values["data_range"], spans, rtol=1e-6)
    for k in range(len(target)):
        ref = tf.image.ssim(target[k:k + 1], prediction[k:k + 1], max_val=float(spans[k])).numpy()[0]
        assert values["ssim"][k] == pytest.approx(ref, abs=2e-5)
        assert values["psnr"][k] == pytest.approx(tf.image.psnr(target[k], prediction[k], float(spans[k])).numpy(),
                                                  rel=1e-5)
    # the range changes the figures: a stated range is part of the result
    fixed = iq.per_image(target, prediction, 1000.0)
    assert np.all(fixed["psnr"] > values["psnr"])


def test_quality_table_mean_interval_and_classes() -> None:
    target, prediction = pair(3, shape=(8, 16, 16, 1))
    labels = np.array([0, 1] * 4)
    table = iq.quality_table(target, {"model": prediction, "same": target}, "per_image", labels, ["a", "b"])
    row = table["rows"]["model"]
    assert row["psnr"]["n"] == 8 and row["psnr"]["ci95"][0] <= row["psnr"]["mean"] <= row["psnr"]["ci95"][1]
    assert set(row["per_class"]) == {"a", "b"} and row["per_class"]["a"]["ssim"]["n"] == 4
    assert table["rows"]["same"]["psnr"]["n_infinite"] == 8 and table["rows"]["same"]["psnr"]["mean"] is None
    assert table["rows"]["same"]["ssim"]["mean"] == pytest.approx(1.0)
    assert "per_image" in table["data_range"]


def test_bad_ranges_and_sizes_are_one_line_errors() -> None:
    for bad in (0, -1, "max", None, float("nan"), True):
        with pytest.raises(LensnetError, match="task.data_range"):
            iq.check_data_range(bad)
    assert iq.check_data_range("per_image") == "per_image" and iq.check_data_range(2) == 2.0
    with pytest.raises(LensnetError, match="11x11"):
        iq.per_image(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)), 1.0)
