"""`python -m lensnet.models [--input-shape H W C] [--json]`: list the registered models.

With `--input-shape` every model is built (random weights, no download) to
report its parameter count and the features it returns for that image shape.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from lensnet.core.errors import LensnetError, cli_exit

SUMMARY = "list the registered models"  # its line in `lensnet --help`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.models", description=__doc__.splitlines()[0])
    parser.add_argument("--input-shape", nargs=3, type=int, metavar=("H", "W", "C"), help="build each model")
    parser.add_argument("--json", action="store_true", help="print the registry as JSON")
    args = parser.parse_args(argv)

    # Imported here so `--help` does not pay for TensorFlow.
    from lensnet.models import create_model, list_models

    entries = list_models()
    if args.input_shape:
        shape = tuple(args.input_shape)
        for entry in entries:
            try:
                model = create_model(entry["name"], shape)
            except LensnetError as exc:
                entry["error"] = str(exc)
                continue
            entry["params"] = int(model.count_params())
            entry.update(model.feature_info())
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for entry in entries:
        extra = ""
        if "params" in entry:
            shape = "x".join(str(d) for d in entry["feature_shape"][1:])
            extra = f"  {entry['params'] / 1e6:6.2f}M params, {entry['feature_kind']} {shape}"
        elif "error" in entry:
            extra = f"  (cannot build: {entry['error']})"
        print(f"{entry['name']:14s} {entry['family']:13s} {entry['description']}{extra}")
    return 0


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
