"""`python -m lensnet.survey synth`: a g, r, i field with a TAN WCS, galaxies at the asked density, stars,
injected lenses (lenstronomy through the simulator's renderer), masked edges, and its truth catalogue; the
same seed gives the same bytes, bad options are one `error:` line, nothing is left half-written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lensnet.core.errors import run_cli
from lensnet.survey.__main__ import main

SMALL = ["--size", "256", "--tile", "32", "--edge-px", "8", "--gap-px", "4", "--density", "150",
         "--lens-rate", "0.03", "--no-progress"]


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("field")
    assert run_cli(main, ["synth", "--out", str(out / "a"), "--seed", "3", *SMALL]) == 0
    return out / "a"


def test_field_image_wcs_and_truth(field):
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(field / "field.fits") as hdul:
        header, data = hdul[0].header, hdul[0].data
    assert data.shape == (3, 256, 256) and data.dtype.newbyteorder("=") == np.float32 and header["BANDS"] == "g,r,i"
    # Masks: the left columns, the top rows (FITS row 0 is the bottom) and the chip gap are NaN.
    assert np.isnan(data[:, :, :8]).all() and np.isnan(data[:, -8:, :]).all()
    assert np.isnan(data[:, :, int(0.6 * 256)]).all() and np.isfinite(data[:, 100, 100]).all()
    with open(field / "truth.csv", newline="") as handle:
        truth = list(csv.DictReader(handle))
    kinds = [r["kind"] for r in truth]
    area = (256 * 0.2 / 60) ** 2
    assert abs(kinds.count("galaxy") - 150 * area) < 5 * np.sqrt(150 * area)
    lenses = [r for r in truth if r["kind"] == "lens"]
    assert lenses and all(r["is_lens"] == "1" and 0.8 <= float(r["theta_e_arcsec"]) <= 2.5 for r in lenses)
    assert all(float(r["magnification"]) > 1.5 for r in lenses)  # strongly lensed sources
    wcs = WCS(header).celestial
    for row in truth[:20] + lenses:
        x, y = wcs.world_to_pixel_values(float(row["ra"]), float(row["dec"]))
        assert abs(x - float(row["x"])) < 1e-3 and abs(y - float(row["y"])) < 1e-3
    # A lens galaxy is red (i brighter than g) and sits at its catalogued pixel.
    i, g = data[2], data[0]
    for row in lenses:
        x, y = int(float(row["x"])), int(float(row["y"]))
        assert i[y, x] > 20 * np.nanstd(i[:60, 200:]) and i[y, x] > g[y, x]
    summary = json.loads((field / "field.json").read_text())
    assert summary["seed"] == 3 and summary["counts"]["lens"] == len(lenses) and summary["spec"]["size"] == 256


def test_same_seed_same_bytes_and_no_temporaries(field, tmp_path):
    assert run_cli(main, ["synth", "--out", str(tmp_path / "b"), "--seed", "3", *SMALL]) == 0
    for name in ("field.fits", "truth.csv", "field.json"):
        assert (tmp_path / "b" / name).read_bytes() == (field / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["field.fits", "field.json", "truth.csv"]
    assert run_cli(main, ["synth", "--out", str(tmp_path / "c"), "--seed", "4", *SMALL]) == 0
    assert (tmp_path / "c" / "truth.csv").read_bytes() != (field / "truth.csv").read_bytes()


@pytest.mark.parametrize("option, value, field_name", [("--size", "20", "--size"), ("--lens-rate", "2", "--lens-rate"),
                                                       ("--fwhm-arcsec", "0", "--fwhm-arcsec")])
def test_bad_options_are_one_line(tmp_path, capsys, option, value, field_name):
    assert run_cli(main, ["synth", "--out", str(tmp_path / "x"), option, value, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and field_name in err[0]
    assert not (tmp_path / "x").exists()


def test_pipeline_finds_the_injected_lenses(field, tmp_path):
    """synth -> the stand-in finder -> pipeline: every injected lens is in a candidate (they are bright)."""
    from lensnet.pipeline import main as pipeline
    from lensnet.serving.export import export_run
    from lensnet.survey.field import match_lenses, read_truth
    from lensnet.survey.synthetic import peak_finder_run

    export_run(peak_finder_run(tmp_path / "run", 32, channels=3), tmp_path / "export")
    out = tmp_path / "results"
    assert run_cli(pipeline, [str(field / "field.fits"), "--finder", str(tmp_path / "export"), "--out", str(out),
                              "--methods", "none", "--no-progress"]) == 0
    with open(out / "candidates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    found, right = match_lenses(read_truth(field / "truth.csv"), rows)
    assert found and all(found) and any(right)
    assert all(r["ra"] for r in rows)
    cutout = np.load(out / "cutouts" / f"{rows[0]['id']}.npy", allow_pickle=False)
    meta = json.loads((out / "cutouts" / f"{rows[0]['id']}.json").read_text())
    assert cutout.shape == (32, 32, 3) and meta["bands"] == ["g", "r", "i"]
    assert np.allclose(meta["cd_arcsec"], [[-0.2, 0.0], [0.0, 0.2]])
