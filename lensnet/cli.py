"""`lensnet COMMAND [options]`: one entry point for every command, beside `python -m lensnet.COMMAND`.

    lensnet fit --task lens_finding        is   python -m lensnet.fit --task lens_finding
    lensnet COMMAND --help                 the command's own options

Each subcommand hands the rest of the command line, unchanged, to that module's `main(argv)`,
so both spellings behave alike: bad input prints `error: ...` and exits 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module defining main(argv), imports TensorFlow first (quietly), one-line summary)
COMMANDS: dict[str, tuple[str, bool, str]] = {
    "simulate": ("lensnet.simulate.__main__", False, "simulate lens images into a TFRecord dataset"),
    "convert": ("lensnet.convert", False, "import DeepLense .npy folders or FITS cutouts as a dataset"),
    "data": ("lensnet.data.__main__", True, "check or describe a dataset"),
    "models": ("lensnet.models.__main__", True, "list the registered models"),
    "fit": ("lensnet.fit", False, "train a task's model on a dataset"),
    "tune": ("lensnet.tune", False, "search hyperparameters with KerasTuner"),
    "evaluate": ("lensnet.evaluate", False, "score a trained run on a dataset split"),
    "export": ("lensnet.export", True, "export a run to a verified SavedModel + ONNX version"),
    "predict": ("lensnet.predict", True, "score image files or datasets with an export, to CSV"),
    "serve": ("lensnet.serve", True, "serve an export over the TF Serving REST API"),
    "pipeline": ("lensnet.pipeline", True, "find, classify and explain lens candidates in survey images"),
    "dashboard": ("lensnet.dashboard", False, "browse, mark and export pipeline candidates in a web page"),
    "bench": ("lensnet.bench.__main__", True, "run a benchmark"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: lensnet COMMAND [options]   (same as python -m lensnet.COMMAND)",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()),
        "",
        "`lensnet COMMAND --help` shows a command's options; `--verbose` on any command shows TensorFlow's logs.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `argv` (default: sys.argv[1:]) to a command; returns its exit status."""
    from lensnet.core.errors import run_cli
    from lensnet.core.tfboot import quiet_tensorflow, take_verbose

    argv, verbose = take_verbose(sys.argv[1:] if argv is None else argv)
    quiet_tensorflow(verbose)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, tensorflow, _ = COMMANDS[name]
    if tensorflow:
        from lensnet.core.tfboot import quiet_import

        quiet_import()
    module = importlib.import_module(module_name)
    try:
        return run_cli(module.main, rest)
    except SystemExit as exc:  # argparse's --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def console() -> None:
    """The `lensnet` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
