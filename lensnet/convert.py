"""`python -m lensnet.convert FORMAT SRC --out DIR`: import image folders into sharded TFRecords + manifest.json.

Formats:
  deeplense-npy  one subfolder per class of .npy images, (H,W), (1,H,W), (H,W,C) or (C,H,W); or the layout
                 DeepLense distributes, split folders each holding one folder per class
                 (SRC/train/<class>/*.npy, SRC/val/<class>/*.npy): membership is kept, train/ -> train,
                 val/ -> test (DeepLense's held-out set; val/ -> val when a test/ folder exists), and
                 --val-fraction of train/ becomes the val split; --split-map val=val changes the mapping,
                 --resplit pools every file and splits by --splits
  fits           FITS cutouts, labelled by subfolder, or unlabelled when directly in SRC
  degrade        a lensnet dataset of HR images (e.g. imported FITS cutouts) -> super-resolution pairs:
                 LR `image` = Gaussian blur (--psf-fwhm, HR pixels), block mean (--factor) and noise
                 (--noise-rms, --gain) of the HR image, kept as `image_hr` (lensnet.data.degrade)

The conversion is resumable (a rerun keeps complete shards) and deterministic
(split assignment and record order follow --seed).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lensnet.core.errors import cli_exit

SUMMARY = "import DeepLense .npy folders or FITS cutouts as a dataset"  # its line in `lensnet --help`


def _hdu(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lensnet.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("source", metavar="SRC", help="source folder")
    common.add_argument("--out", help="output dataset directory (default: tfrecords/<SRC folder name>)")
    common.add_argument("--name", help="dataset name in the manifest (default: the --out folder name)")
    common.add_argument("--splits", default="0.8,0.1,0.1",
                        help="train,val,test fractions, stratified by class (default 0.8,0.1,0.1; "
                             "also train=0.9,test=0.1)")
    common.add_argument("--seed", type=int, default=0, help="decides the split assignment and record order")
    common.add_argument("--layout", choices=("auto", "hwc", "chw"), default="auto",
                        help="axis order of 3-D images (auto: the small axis is the channel axis)")
    common.add_argument("--split-map", metavar="FOLDER=SPLIT,...",
                        help="with split folders: which split each folder becomes (default train=train, "
                             "val=test, or val=val when a test/ folder exists)")
    common.add_argument("--val-fraction", type=float, default=0.1,
                        help="with split folders and no folder mapped to val: fraction of train/ (stratified, "
                             "seeded) used as the val split (default 0.1; 0 for none)")
    common.add_argument("--resplit", action="store_true",
                        help="ignore split folders: pool every file and split by --splits")
    common.add_argument("--records-per-shard", type=int, default=1000)
    common.add_argument("--workers", type=int, default=1, help="reader processes")
    common.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    common.add_argument("--no-progress", action="store_true")
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    npy = sub.add_parser("deeplense-npy", parents=[common], help="DeepLense folders of .npy images",
                         description="Import DeepLense folders of .npy images (one subfolder per class).")
    npy.add_argument("--trust-pickle", action="store_true",
                     help="load object arrays such as DeepLense [image, axion_mass] files (unpickling runs code "
                          "from the file: only for files you trust); the number is stored as m_axion")
    fits = sub.add_parser("fits", parents=[common], help="FITS cutouts",
                          description="Import FITS cutouts (class = subfolder; files directly in SRC: unlabelled).")
    fits.add_argument("--hdu", type=_hdu, help="HDU index or name (default: the first HDU with image data)")
    degrade = sub.add_parser("degrade", help="LR/HR pairs from a dataset of HR images",
                             description="Make super-resolution pairs from a lensnet dataset of HR images: "
                                         "LR = blur, block mean and noise of HR (lensnet.data.degrade).")
    degrade.add_argument("source", metavar="SRC", help="dataset directory (with manifest.json) of HR images")
    degrade.add_argument("--out", required=True, help="output dataset directory")
    degrade.add_argument("--name", help="dataset name in the manifest (default: the --out folder name)")
    degrade.add_argument("--field", default="image", help="the HR image field of SRC (default image)")
    degrade.add_argument("--factor", type=int, default=2, help="HR pixels per LR pixel per side (default 2)")
    degrade.add_argument("--psf-fwhm", type=float, default=0.0,
                         help="Gaussian blur FWHM in HR pixels before downsampling (default 0)")
    degrade.add_argument("--noise-rms", type=float, default=0.0, help="Gaussian noise rms on LR, HR units")
    degrade.add_argument("--gain", type=float, default=0.0, help="> 0: Poisson noise with this many counts per unit")
    degrade.add_argument("--seed", type=int, default=0, help="seeds the noise (record i draws from (seed, i))")
    degrade.add_argument("--records-per-shard", type=int, default=1000)
    degrade.add_argument("--workers", type=int, default=1)
    degrade.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    degrade.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lensnet.data.importers import convert_dataset
    from lensnet.data.manifest import read_manifest, schema_of
    from lensnet.data.writer import print_summary

    args = build_parser().parse_args(argv)
    if args.format == "degrade":
        from lensnet.data.degrade import Degradation, degrade_dataset

        spec = Degradation(args.factor, args.psf_fwhm, args.noise_rms, args.gain)
        summary = degrade_dataset(args.source, args.out, spec, field=args.field, seed=args.seed,
                                  records_per_shard=args.records_per_shard, name=args.name, workers=args.workers,
                                  overwrite=args.overwrite, progress=not args.no_progress)
        print_summary(summary)
        return 0
    summary = convert_dataset(
        args.format, args.source, args.out,
        splits=args.splits, seed=args.seed, layout=args.layout, hdu=getattr(args, "hdu", None),
        trust_pickle=getattr(args, "trust_pickle", False), records_per_shard=args.records_per_shard,
        name=args.name, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress,
        split_map=args.split_map, val_fraction=args.val_fraction, resplit=args.resplit,
    )
    print_summary(summary)
    if summary.manifest is not None:
        manifest = read_manifest(summary.out)  # not open_dataset: no TensorFlow start-up for one line
        schema = schema_of(manifest)
        classes = ", ".join(manifest["class_names"]) or "(unlabelled)"
        counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
        params = f"; parameters {', '.join(schema.param_names)}" if schema.param_names else ""
        print(f"{manifest['name']}: {counts} records of {schema['image'].shape}; classes {classes}{params}")
    return 0


if __name__ == "__main__":
    cli_exit(main)
