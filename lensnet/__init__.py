"""lensnet: deep learning on strong gravitational lenses."""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) hides lensnet's own output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
