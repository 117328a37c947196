"""Simulated lens datasets: presets, physics and the `python -m lensnet.simulate` command."""
