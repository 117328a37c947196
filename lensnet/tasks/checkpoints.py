"""A run's trained model, loaded with every lensnet layer, head and task model registered (Keras safe_mode).

It lives at the tasks layer because deserialising a checkpoint needs the classes of lensnet.models and
lensnet.tasks registered; the run layout itself (lensnet.artifacts.runs) stays below both.
"""

from __future__ import annotations

import os

from lensnet.artifacts.runs import best_model_path
from lensnet.core.errors import LensnetError


def load_model(run_dir: str | os.PathLike, compile: bool = False):
    """The run's best model, loaded with Keras safe_mode."""
    import keras

    import lensnet.models  # noqa: F401  (registers custom layers)
    import lensnet.tasks  # noqa: F401  (registers heads, losses)

    path = best_model_path(run_dir)
    try:
        return keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # corrupt or foreign file: name it, no traceback
        raise LensnetError(f"cannot load model {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
