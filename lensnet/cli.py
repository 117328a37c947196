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

from lensnet.core.plugins import command_modules

# name -> (module defining main(argv), one-line summary): every `lensnet/<cmd>.py` and `lensnet/<pkg>/__main__.py`
# that declares SUMMARY (lensnet.core.plugins), read without importing them
COMMANDS: dict[str, tuple[str, str]] = command_modules()


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: lensnet COMMAND [options]   (same as python -m lensnet.COMMAND)",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
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
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return run_cli(module.main, rest)
    except SystemExit as exc:  # argparse's --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def console() -> None:
    """The `lensnet` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
