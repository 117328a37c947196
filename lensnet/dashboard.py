"""`python -m lensnet.dashboard RESULTS [--port 8050] [--run runs/X]`: browse, mark and export pipeline candidates.

RESULTS is a `lensnet.pipeline` results folder. The page (served by this process, no internet needed) sorts and
filters candidates by any score, pages through thumbnails with their saliency overlay on or off, opens one at
full size with its scores, maps and sky position, marks it (lens / not a lens / unsure: saved to RESULTS/
marks.json at once), exports the filtered or marked list as CSV, and, when the table has a `label` column,
draws ROC and PR curves and the confusion matrix at a threshold you slide. `--run` adds a training run's
metrics, plots and sample predictions. Binds to 127.0.0.1 unless --host says otherwise; another host needs
the token in the printed URL (see lensnet.core.http for what the server refuses).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "browse, mark and export pipeline candidates in a web page"  # its line in `lensnet --help`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", metavar="RESULTS", help="a lensnet.pipeline results folder")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--run", default=None, help="a training run folder to show as well (runs/X)")
    parser.add_argument("--truth", default=None,
                        help="a truth catalogue (truth.csv of lensnet.survey synth): lenses found and missed")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host header is NAME (a DNS name of this machine)")
    parser.add_argument("--seed", type=int, default=0, help="accepted for uniformity; nothing is random")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise LensnetError("--port must be within [0, 65535]")
    from lensnet.core.http import Access, bind, network_warning, uvicorn_server, warn
    from lensnet.survey.dashboard import Results, RunView, create_app

    results = Results(args.results, args.truth)
    run = RunView(args.run) if args.run else None
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    access = Access(args.host, port, args.allow_host)
    app = create_app(results, run, access)
    warn(network_warning(args.host, "the dashboard"))
    print(f"dashboard of {results.root} ({len(results.rows)} candidates) at {access.url()} "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn_server(app).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    cli_exit(main)  # no TensorFlow on this path: it serves a page, no model
