"""User-facing errors and the CLI wrapper that turns them into one-line messages."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class LensnetError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI entry point; bad input ends as `error: ...` on stderr, never a traceback."""
    try:
        return int(main(argv) or 0)
    except LensnetError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cli_exit(main: Callable[[Sequence[str] | None], int | None], tensorflow: bool = False) -> None:
    """`if __name__ == "__main__": cli_exit(main)`; `tensorflow=True` imports it first.

    TensorFlow's start-up logs are silenced before anything imports it, unless the command line holds
    `--verbose` (taken off before `main` sees it; lensnet.core.tfboot).
    stdout becomes line-buffered: off a terminal (`> log`, CI, a batch job) Python block-buffers it,
    and per-epoch lines would appear minutes late.
    """
    from lensnet.core.tfboot import quiet_import, quiet_tensorflow, take_verbose

    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if callable(reconfigure):
        reconfigure(line_buffering=True)
    argv, verbose = take_verbose(sys.argv[1:])
    quiet_tensorflow(verbose)
    if tensorflow:
        quiet_import()
    sys.exit(run_cli(main, argv))
