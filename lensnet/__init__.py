"""lensnet: deep learning on strong gravitational lenses.

The top-level modules (`lensnet/<cmd>.py`, each declaring SUMMARY) are the commands: argument parsing and a
call into the library packages below them. The layers, lowest first (docs/layout.md; `lint-imports` checks
them): core < data, models < artifacts < simulate, tasks < training, serving < tuning, studies, survey <
bench < commands.
"""

import os as _os

# TensorFlow's C++ chatter (CUDA probes, oneDNN notes) hides lensnet's own output; `--verbose` undoes this
# unless the user set the level (lensnet.core.tfboot).
USER_TF_LOG_LEVEL = _os.environ.get("TF_CPP_MIN_LOG_LEVEL")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
