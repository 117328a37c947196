"""Render scenes the way DeepLenseSim renders them, by executing its lenstronomy calls (a test helper).

Runs under the library version DeepLenseSim pins (lenstronomy 1.9.2: tests/reference/requirements.txt),
in its own virtualenv, never inside lensnet's process. It mirrors mwt5345/DeepLenseSim @ a0c0191
`deeplense/lens.py` call for call: `simple_sim` (Model I: ImageData + Gaussian PSF + ImageModel, no
supersampling) and `simple_sim_2` (Models II/III: SimAPI with the lens and source redshift lists, pyHalo's
Planck 2018 astropy cosmology, z_source_convention 2.5, z_source 1.0, `magnitude2amplitude`,
point_source_supersampling_factor 1 only, stored image = image_model + image_model). `set_instrument`
builds kwargs_single_band from the installed ObservationConfig, as DeepLenseSim does.

Usage: REFERENCE_PYTHON lensnet/bench/deeplense_callpath.py SCENES.json OUT.npy (it imports nothing of lensnet;
lensnet.bench.replica_fidelity and tests/test_replica_callpath.py run it)
SCENES.json: {"model": "I"|"II"|"III", "scenes": [{"lens_model_list": [...], "kwargs_lens": [...],
"kwargs_source": [...]}, ...], optional "z_source_convention", "cosmology": {"H0", "Om0", "Ob0"}}.
OUT.npy: float64 (n, H, W) images (Model I: the noiseless `image_model`, since its noise is random).
"""

import json
import sys

import numpy as np


def instrument(model):
    if model == "II":  # set_instrument('Euclid')
        from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

        return Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6).kwargs_single_band()
    # Model III: DeepLenseSim's set_instrument('hst') sets nothing (simple_sim_2 then fails). Of lenstronomy
    # 1.9.2's HST configurations only WFC3_F160W with a Gaussian PSF renders (TDLMC_F160W has no seeing);
    # the README says "HST observation characteristics as done by default in lenstronomy".
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST

    return HST(band="WFC3_F160W", psf_type="GAUSSIAN").kwargs_single_band()


def simple_sim_2(scene, kwargs_single_band, cosmo, z_source_convention):
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    n_lens = len(scene["lens_model_list"])
    kwargs_model_physical = {
        "lens_model_list": scene["lens_model_list"],
        "lens_redshift_list": [0.5] * n_lens,
        "source_light_model_list": ["SERSIC_ELLIPSE"],
        "source_redshift_list": [1.0],
        "cosmo": cosmo,
        "z_source_convention": z_source_convention,
        "z_source": 1.0,
    }
    sim = SimAPI(numpix=64, kwargs_single_band=kwargs_single_band, kwargs_model=kwargs_model_physical)
    im_sim = sim.image_model_class({"point_source_supersampling_factor": 1})
    _, kwargs_source, _ = sim.magnitude2amplitude(None, scene["kwargs_source"])
    image = im_sim.image(scene["kwargs_lens"], kwargs_source, None)
    return image + image


def simple_sim(scene):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util import util

    num_pix, delta_pix = 150, 0.05
    _, _, ra0, dec0, _, _, m_pix2coord, _ = util.make_grid_with_coordtransform(  # positional: renamed in 1.10
        num_pix, delta_pix, center_ra=0, center_dec=0, subgrid_res=1, inverse=False)
    data = ImageData(background_rms=1e-2, exposure_time=1000.0, ra_at_xy_0=ra0, dec_at_xy_0=dec0,
                     transform_pix2angle=m_pix2coord, image_data=np.zeros((num_pix, num_pix)))
    psf = PSF(psf_type="GAUSSIAN", fwhm=0.087, pixel_size=delta_pix, truncation=3)
    model = ImageModel(data, psf, lens_model_class=LensModel(scene["lens_model_list"]),
                       source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False},
                       lens_light_model_class=None)
    return model.image(scene["kwargs_lens"], scene["kwargs_source"], kwargs_lens_light=None, kwargs_ps=None)


def main(scenes_path, out_path):
    with open(scenes_path) as fh:
        job = json.load(fh)
    model = job["model"]
    images = []
    if model == "I":
        images = [simple_sim(s) for s in job["scenes"]]
    else:
        from astropy.cosmology import FlatLambdaCDM

        c = job.get("cosmology", {"H0": 67.5, "Om0": 0.309, "Ob0": 0.049})  # pyHalo's default since 2022-02
        cosmo = FlatLambdaCDM(H0=c["H0"], Om0=c["Om0"], Ob0=c["Ob0"])
        kwargs_single_band = job.get("kwargs_single_band") or instrument(model)
        images = [simple_sim_2(s, dict(kwargs_single_band), cosmo, job.get("z_source_convention", 2.5))
                  for s in job["scenes"]]
    np.save(out_path, np.asarray(images, dtype=np.float64))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
