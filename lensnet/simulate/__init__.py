"""Simulated lens datasets: presets and their defaults (presets), scene specs (scene_spec), rendering, the
simulators (simulator, substructure_scenes, lens_finding_scenes; scenes.build_simulator picks one),
substructure and line-of-sight populations, instruments, priors, and the dataset writer (dataset).

Layer: above artifacts, beside tasks (the two never import each other). May import lensnet.core,
lensnet.data, lensnet.models and lensnet.artifacts. Its command is `__main__.py` (argument parsing only).
"""
