"""Import TensorFlow without its C++ start-up chatter.

TensorFlow's absl logging prints CUDA probes and oneDNN notes before it reads
TF_CPP_MIN_LOG_LEVEL, burying a command's own output. CLIs call `quiet_import()`
first; if the import fails, what TensorFlow printed is shown after all.
"""

from __future__ import annotations

import os
import sys
import tempfile
from types import ModuleType


def quiet_import() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing prints too
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf
