"""Import TensorFlow without its C++ start-up chatter.

TensorFlow's absl logging prints CUDA probes (`E0000 ... failed call to cuInit`, which reads like a crash) and
oneDNN notes before it reads TF_CPP_MIN_LOG_LEVEL, burying a command's own output; no environment variable
silences them. So every command's entry point (`cli_exit`, `lensnet COMMAND`) calls `quiet_tensorflow()` before
anything imports TensorFlow: the first `import tensorflow`, wherever it happens, then runs with file
descriptor 2 captured, and what TensorFlow printed is shown only if the import fails. `--verbose` on any
command (taken off the command line by `take_verbose`) leaves TensorFlow's logs as they are.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType

VERBOSE_FLAG = "--verbose"
_state = {"verbose": False}


def take_verbose(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(argv without `--verbose`, whether it was there)."""
    rest = [a for a in argv if a != VERBOSE_FLAG]
    return rest, len(rest) != len(argv)


@contextlib.contextmanager
def _stderr_captured() -> Iterator[None]:
    """fd 2 goes to a temporary file; on an exception what was written is replayed to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with stderr captured (and its device probe, which prints too)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):  # resource readers and the like: TensorFlow's loader answers
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_captured():
            self._loader.exec_module(module)
            module.config.list_physical_devices()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the path finder does, with a loader that keeps its start-up quiet (once)."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(verbose: bool = False) -> None:
    """Make the coming `import tensorflow` quiet (C++, absl and Python logs below errors); verbose: leave it be."""
    _state["verbose"] = verbose
    if verbose:
        import lensnet

        if lensnet.USER_TF_LOG_LEVEL is None:  # the level lensnet set on import, not the user's: show everything
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ logs after start-up: errors only
    logging.getLogger("absl").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def quiet_import() -> ModuleType:
    """Import TensorFlow now (quietly unless the command runs with --verbose) and return it."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if _state["verbose"]:
        import tensorflow as tf

        return tf
    with _stderr_captured():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing prints too
    return tf
