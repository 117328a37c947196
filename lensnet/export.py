"""`python -m lensnet.export --run runs/X --out export/NAME`: a verified SavedModel + ONNX version of a run.

Writes export/NAME/<version>/ (1, 2, ... as TF Serving expects; a new export takes
the next number) holding:

- a SavedModel whose `serving_default` signature takes raw images `images`
  (N, H, W, C) float32, applies the run's normalisation itself and returns the run's
  output as its output spec says (class probabilities, named values, a score, or an
  image mapped back to the units of the input pixels);
- `model.onnx`, the same function (input `images`, one output);
- `card.json`: task, input shape, normalisation, the output spec, test metrics,
  dataset checksum, package versions, export time and the verification figures.

Before a version is published, Keras (float32 model + normalisation), the reloaded
SavedModel and onnxruntime score the same batch and must agree within `--atol`
(default 1e-4; for an image output, that fraction of the output's range). Everything
is built in a hidden temporary directory beside the versions and renamed into place
only when verified, so a failed or killed export leaves no version behind.
(The library is lensnet.serving.export.)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lensnet.artifacts.export_layout import CARD, ONNX_FILE
from lensnet.core.errors import LensnetError, cli_exit
from lensnet.serving.onnx_convert import DEFAULT_OPSET
from lensnet.serving.verification import DEFAULT_ATOL

SUMMARY = "export a run to a verified SavedModel + ONNX version"  # its line in `lensnet --help`


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lensnet.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory (holds run.json)")
    parser.add_argument("--out", required=True, help="export directory export/NAME; versions go below it")
    parser.add_argument("--batch", type=int, default=16, help="verification images (default 16, plus a blank one)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"max abs difference (default {DEFAULT_ATOL})")
    parser.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification images")
    parser.add_argument("--quantize", metavar="int8",
                        help="also write model.int8.onnx (onnxruntime static int8, per-channel weights; dynamic for "
                             "attention models) and, for CNNs, model.int8.tflite (TFLite int8, XNNPACK), "
                             "calibrated on training images and compared on test images")
    parser.add_argument("--calibration", metavar="DIR", help="dataset to calibrate on (default: the run's dataset)")
    parser.add_argument("--calibration-images", type=int, default=256, help="calibration images (default 256)")
    parser.add_argument("--int8-tolerance", type=float, default=0.002,
                        help="the int8 model becomes the version's default runtime if its test metric moves by at "
                             "most this much (default 0.002)")
    args = parser.parse_args(argv)
    if args.quantize is not None and args.quantize != "int8":
        raise LensnetError(f"--quantize {args.quantize!r} is not supported; valid: int8")
    if args.calibration_images < 1:
        raise LensnetError("--calibration-images must be at least 1")
    if args.batch < 1:
        raise LensnetError("--batch must be at least 1")
    if not args.atol > 0:
        raise LensnetError("--atol must be positive")
    from lensnet.core.runinfo import seed_everything

    seed_everything(args.seed, deterministic_ops=False)
    from lensnet.serving.export import export_run

    result = export_run(args.run, args.out, batch=args.batch, atol=args.atol, opset=args.opset, seed=args.seed,
                        quantize=args.quantize, calibration=args.calibration,
                        calibration_images=args.calibration_images, int8_tolerance=args.int8_tolerance)
    check = result.card["verification"]
    print(
        f"exported {args.run} -> {result.path} (SavedModel + {ONNX_FILE} + {CARD}); verified on "
        f"{check['images']} images: max |diff| vs Keras SavedModel {check['max_abs_diff_savedmodel']:.2g}, "
        f"onnxruntime {check['max_abs_diff_onnxruntime']:.2g} (allowed {check['tolerance']:.2g})"
    )
    if "int8" in result.card:
        print(int8_line(result.card))
    return 0


def int8_line(card: dict) -> str:
    """One line per int8 model: its metric change, size and latency against float32, and the default runtime."""
    int8 = card["int8"]
    lines = [f"int8 ({int8['mode']}, per-channel weights; calibrated on {int8['calibration']['images']} images):"]
    tflite = int8.get("tflite") or {}
    for name, figures in (("onnx-int8", int8["comparison"]), ("tflite-int8", tflite.get("comparison"))):
        if figures is None:
            continue
        metric, size = figures["metric"], figures["size_bytes"]
        latency = figures["latency_ms_per_image"]["batch_64"]
        change = "n/a" if metric["change"] is None else f"{metric['change']:+.4f}"
        lines.append(f"  {name}: {metric['name']} {change} vs float32 on {figures['images']} images, size "
                     f"{size['int8'] / 1e6:.2f} MB vs {size['float32'] / 1e6:.2f} MB, {latency['int8']:.3f} vs "
                     f"{latency['float32']:.3f} ms/image at batch 64 (one thread)")
    if "error" in tflite:
        lines.append(f"  tflite-int8: not written: {tflite['error']}")
    lines.append(f"  default runtime: {card['runtime']}")
    return "\n".join(lines)


if __name__ == "__main__":
    cli_exit(main, tensorflow=True)
