"""lensnet: deep learning on strong gravitational lenses."""

__version__ = "0.1.0"
