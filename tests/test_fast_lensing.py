"""substructure.engine fast: deflections and images against lenstronomy's sum over the same haloes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lenstronomy.LensModel.lens_model import LensModel

from lensnet.core.errors import run_cli
from lensnet.core.fileio import sha256_file
from lensnet.simulate.__main__ import main
from lensnet.simulate.dataset import simulate_dataset
from lensnet.simulate.engine_check import engine_agreement
from lensnet.simulate.fast_lensing import DeflectionGrid, tnfw_total_weight
from lensnet.simulate.presets import resolve_dataset_config
from lensnet.simulate.substructure import Haloes

N, PIXEL = 48, 0.06  # a 48 x 48 grid of 0.06" (2.9")


def grid() -> tuple[np.ndarray, np.ndarray]:
    """Evaluation points as lenstronomy's data_configure_simple lays them out (x decreasing along a row)."""
    import lenstronomy.Util.simulation_util as sim_util
    from lenstronomy.Data.imaging_data import ImageData

    data = ImageData(**sim_util.data_configure_simple(N, PIXEL))
    x, y = data.pixel_coordinates
    return x.ravel(), y.ravel()


def tnfw(x: list[float], y: list[float], rs: float = 0.05, alpha_rs: float = 0.01, r_trunc: float = 0.2) -> Haloes:
    n = len(x)
    return Haloes("TNFW", np.array(x), np.array(y), rs=np.full(n, rs), alpha_rs=np.full(n, alpha_rs),
                  r_trunc=np.full(n, r_trunc))


def lenstronomy_alpha(groups: list[Haloes], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kwargs = [k for g in groups for k in g.kwargs()]
    return LensModel([g.profile for g in groups for _ in range(len(g))]).alpha(x, y, kwargs)


def errors(groups: list[Haloes]) -> tuple[float, float]:
    """(RMS, max) of |fast - lenstronomy| over the RMS of lenstronomy's deflection."""
    x, y = grid()
    ax, ay = DeflectionGrid(x, y).deflections(groups)
    bx, by = lenstronomy_alpha(groups, x, y)
    rms = np.sqrt(np.mean(bx**2 + by**2))
    diff = np.hypot(ax - bx, ay - by)
    return float(np.sqrt(np.mean(diff**2)) / rms), float(diff.max() / rms)


def test_tnfw_total_weight_is_the_far_field_of_lenstronomys_profile() -> None:
    rs, alpha, r_trunc = np.array([0.05, 0.02]), np.array([0.01, 0.003]), np.array([0.2, 0.5])
    far = 1e4
    for k in range(2):
        kwargs = {"Rs": rs[k], "alpha_Rs": alpha[k], "r_trunc": r_trunc[k], "center_x": 0.0, "center_y": 0.0}
        ax, _ = LensModel(["TNFW"]).alpha(far, 0.0, [kwargs])
        assert tnfw_total_weight(rs, alpha, r_trunc)[k] == pytest.approx(float(ax) * far, rel=1e-4)


def test_fixed_populations_agree_with_lenstronomy_including_edge_and_pixel_centre() -> None:
    x, y = grid()
    centre = (float(x[N * 20 + 17]), float(y[N * 20 + 17]))  # exactly on an evaluation point
    edge = 0.5 * N * PIXEL
    groups = [
        tnfw([centre[0], 0.3, -0.7, edge - 0.01, edge + 0.4, -edge], [centre[1], -0.4, 0.9, 0.2, -0.1, -edge]),
        tnfw([0.5, -0.2], [0.1, -0.9], rs=0.1, alpha_rs=0.05, r_trunc=1.0),  # big haloes: near field over the grid
        tnfw([edge + 1.0, -edge - 0.3, 3.0 * edge], [0.0, 1.5 * edge, 0.2]),  # on the padded mesh / beyond it
        Haloes("POINT_MASS", np.array([0.11, -1.0, 0.0]), np.array([0.37, 0.5, 1.6]),
               theta_e=np.array([0.05, 0.02, 0.1])),
    ]
    rms, worst = errors(groups)
    assert rms <= 0.01 and worst <= 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_many_random_tnfw_haloes_agree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    m = (1e6**-0.9 + (1e10**-0.9 - 1e6**-0.9) * rng.random(n)) ** (1 / -0.9)  # dN/dm ~ m^-1.9
    rs = 0.05 * (m / 1e9) ** 0.4
    group = Haloes("TNFW", rng.uniform(-1.6, 1.6, n), rng.uniform(-1.6, 1.6, n), rs=rs,
                   alpha_rs=0.02 * (m / 1e9) ** 0.6, r_trunc=3.0 * rs)
    rms, _ = errors([group])
    assert rms <= 0.01


def test_rendered_images_agree_to_well_below_the_noise() -> None:
    config = resolve_dataset_config("model_ii", {"image": {"size": 24}, "substructure": {
        "profile": "TNFW", "normalisation": "count", "n_mean": 150, "m_min": 1e7}})
    result = engine_agreement(config, 1, [0, 1])
    assert result["haloes"] > 100
    assert result["deflection_rms_rel"] <= 0.01 and result["image_max_over_noise"] <= 0.1
    replica = engine_agreement(resolve_dataset_config("deeplense_model_ii", {"image": {"size": 24}}), 2, [3])
    assert replica["image_max_over_noise"] <= 0.01  # the axion vortex: 100 point masses


@pytest.mark.slow
def test_fast_engine_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    tiny = {"image": {"size": 16}, "records_per_shard": 8, "substructure": {"engine": "fast", "profile": "TNFW"}}
    one = simulate_dataset("model_ii", tmp_path / "one", num=24, seed=7, overrides=tiny, workers=1, progress=False)
    two = simulate_dataset("model_ii", tmp_path / "two", num=24, seed=7, overrides=tiny, workers=2, progress=False)
    assert one.manifest and two.manifest
    hashes = [{p.name: sha256_file(p) for p in sorted((tmp_path / d).glob("*.tfrecord"))} for d in ("one", "two")]
    assert hashes[0] == hashes[1] and hashes[0]


def test_unknown_engine_is_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    code = run_cli(main, ["--dataset", "model_ii", "--num", "6", "--out", str(out), "--set", "substructure.engine=gpu",
                          "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: substructure.engine") and len(err.strip().splitlines()) == 1
    assert not out.exists()
