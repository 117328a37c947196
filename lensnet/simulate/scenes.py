"""Lens scenes: a validated config -> a Simulator that turns (label, rng) into images + parameters.

Every scene is an SIE + external shear lens (lenstronomy), an elliptical Sersic
source and an optional elliptical Sersic lens light, rendered per band with the
band's PSF on lenstronomy ImageModels that are built once per Simulator (and per
lens-model layout, e.g. per subhalo count) and reused with new kwargs.

Per record the draw order is fixed: all scalar priors (one rng.random call),
then the noise normals, then anything class-specific (subhaloes, vortex,
confusers). So every class draws macro model, source, lens light and noise in the
same way from the same distributions, and one seed gives the same macro scene
and noise realization whatever the class (paired simulations).

Noise is added exactly once: image = model + z sqrt(σ_bkg² + max(model, 0) / t),
z ~ N(0, 1) per pixel: Gaussian background plus the Gaussian approximation of
Poisson noise (as lenstronomy's own noise functions), drawn from the record's rng.
Images are in e-/s per pixel. Replicas of DeepLenseSim may choose its noise instead
(noise.scheme: deeplense_model_i, see `_add_noise`), and image.flux_scale multiplies the
stored image (DeepLense Models II/III save `image_model + image_model`).

Where the parts live: lensnet.simulate.scene_spec (the config sections validated into a SceneSpec),
lensnet.simulate.rendering (lenstronomy ImageModels, Sersic light), lensnet.simulate.simulator (the base
class: magnitudes and noise), lensnet.simulate.substructure_scenes (no_sub/cdm/wdm/axion and
super-resolution pairs), lensnet.simulate.lens_finding_scenes (lenses vs confusers); kind lens_finding_survey:
lensnet.simulate.survey_population (its own spec and simulator).
"""

from __future__ import annotations

from typing import Any

from lensnet.simulate.lens_finding_scenes import LensFindingSimulator
from lensnet.simulate.scene_spec import parse_scene
from lensnet.simulate.simulator import Simulator
from lensnet.simulate.substructure_scenes import SubstructureSimulator, SuperResolutionSimulator


def build_simulator(config: dict, spec: Any = None) -> Simulator:
    """Simulator for a config as returned by lensnet.simulate.presets.resolve_dataset_config.

    `spec` is the config's scene as the resolver parsed it (lensnet.simulate.presets.resolve_dataset); without it
    the config is parsed here."""
    if config["kind"] == "lens_finding_survey":
        from lensnet.simulate.survey_population import SurveyLensFindingSimulator

        return SurveyLensFindingSimulator(config, spec)
    if spec is None:
        spec = parse_scene(config)
    if spec.kind == "substructure":
        return SubstructureSimulator(config, spec)
    if spec.kind == "super_resolution":
        return SuperResolutionSimulator(config, spec)
    return LensFindingSimulator(config, spec)
