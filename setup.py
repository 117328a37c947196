"""Packaging beyond pyproject.toml: the YAML presets in the source tree's top-level configs/ (where users read
and edit them) ship inside the package as lensnet/configs, read through importlib.resources
(lensnet.core.config.CONFIG_DIR), so that a non-editable `pip install .` has them too."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["lensnet", "lensnet.*"]), "lensnet.configs"],
    package_dir={"lensnet.configs": "configs"},
    package_data={
        "lensnet.survey": ["static/*"],  # the dashboard's page, script and style (served offline, no CDN)
        "lensnet.configs": ["datasets/*.yaml", "tasks/*.yaml", "tuning/*.yaml"],
    },
)
