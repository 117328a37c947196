"""Make LR/HR super-resolution pairs from any dataset of HR images: blur, downsample, add noise.

For imported real HR cutouts (`lensnet.convert fits ...`) there is no simulator to render the LR
image of the same scene, so the LR image is made from the HR one: convolve with a Gaussian PSF
(FWHM `psf_fwhm` in HR pixels; this is the EXTRA blur of the LR instrument, i.e. the quadrature
difference between its PSF and the HR one), average `factor` x `factor` blocks (the LR pixel is
the mean of its HR pixels: the brightness scale of the `super_resolution` preset), and add
Gaussian noise of rms `noise_rms` in the HR pixels' units (plus Poisson noise of `gain`
electrons per unit when gain > 0). Every record keeps its id, seed, label, class and parameters;
`image` becomes the LR image and `image_hr` the original; the splits stay as they were. The noise
of record i is drawn from (seed, i), so the output is deterministic.

`python -m lensnet.convert degrade SRC_DATASET --out DIR --factor 2 --psf-fwhm 1.5 --noise-rms 0.01`
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.data.manifest import SPLITS, read_manifest, schema_of, shard_files
from lensnet.data.schema import Schema
from lensnet.data.writer import RecordBatch, ShardPlan, WriteSummary, image_stats, plan_shards, write_dataset

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class Degradation:
    factor: int = 2  # HR pixels per LR pixel, per side
    psf_fwhm: float = 0.0  # Gaussian blur FWHM in HR pixels before downsampling (0: none)
    noise_rms: float = 0.0  # Gaussian noise rms added to LR pixels, in the HR pixels' units
    gain: float = 0.0  # > 0: Poisson noise of LR * gain counts (divided back by gain)

    def check(self) -> Degradation:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise LensnetError(f"--factor must be an integer >= 2, got {self.factor!r}")
        for name in ("psf_fwhm", "noise_rms", "gain"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise LensnetError(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")
        return self


def degrade_image(hr: np.ndarray, spec: Degradation, rng: np.random.Generator) -> np.ndarray:
    """One (H, W, C) HR image -> its (H/f, W/f, C) LR image: blur, block mean, noise."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(hr, np.float64)
    if spec.psf_fwhm > 0:
        x = gaussian_filter(x, sigma=(spec.psf_fwhm * FWHM_TO_SIGMA,) * 2 + (0,), mode="nearest")
    h, w, c = x.shape
    f = spec.factor
    lr = x.reshape(h // f, f, w // f, f, c).mean(axis=(1, 3))
    if spec.gain > 0:
        lr = rng.poisson(np.clip(lr, 0, None) * spec.gain) / spec.gain
    if spec.noise_rms > 0:
        lr = lr + spec.noise_rms * rng.standard_normal(lr.shape)
    return lr.astype(np.float32)


class DegradeSource:
    """The records of a dataset, in split order, with `image` degraded to LR and the original as `image_hr`."""

    def __init__(self, path: Path, manifest: dict, field: str, spec: Degradation, seed: int) -> None:
        self.path, self.manifest, self.field, self.spec, self.seed = path, manifest, field, spec, seed
        self.source_schema = schema_of(manifest)
        hr = tuple(self.source_schema[field].shape)
        self.lr_shape = (hr[0] // spec.factor, hr[1] // spec.factor, hr[2])
        self.hr_shape = hr
        params = self.source_schema.param_names
        self.schema = Schema.standard({"image": self.lr_shape, "image_hr": hr}, params)
        self.class_names = list(manifest.get("class_names", []))
        self.class_specific_params = set(manifest.get("class_specific_params", []))
        self._records: list[bytes] | None = None

    def setup(self) -> None:
        from lensnet.data.tfrecord import iter_records

        records: list[bytes] = []
        for split in SPLITS:
            if self.manifest["splits"].get(split, {}).get("count"):
                for shard in shard_files(self.path, self.manifest, split):
                    records.extend(iter_records(shard))
        self._records = records

    def records(self, plan: ShardPlan, start: int, stop: int) -> RecordBatch:
        if self._records is None:
            self.setup()
        names = [n for n in self.source_schema.names if n != self.field and self.source_schema[n].kind != "image"]
        batch = {k: v.numpy() for k, v in self.source_schema.decode(self._records[start:stop],
                                                                    [*names, self.field]).items()}
        params = self.schema.param_names
        serialized, lrs, hrs = [], [], []
        for row, index in enumerate(range(start, stop)):
            hr = batch[self.field][row]
            lr = degrade_image(hr, self.spec, np.random.default_rng([self.seed, index]))
            record = {n: batch[n][row] for n in names}
            record.update(id=batch["id"][row].decode(), class_name=batch["class_name"][row].decode(),
                          image=lr, image_hr=hr)
            serialized.append(self.schema.encode(record))
            lrs.append(lr)
            hrs.append(hr)
        values = np.stack([[float(batch[n][row]) for n in params] for row in range(stop - start)]) if params \
            else np.zeros((stop - start, 0))
        return RecordBatch(serialized, np.asarray(batch["label"], np.int64), values,
                           {"image": image_stats(np.stack(lrs)), "image_hr": image_stats(np.stack(hrs))})


def degrade_dataset(source: str | os.PathLike, out: str | os.PathLike, spec: Degradation, *, field: str = "image",
                    seed: int = 0, records_per_shard: int = 1000, name: str | None = None, workers: int = 1,
                    overwrite: bool = False, progress: bool = True) -> WriteSummary:
    """Write LR/HR pairs of every record of the dataset `source` to `out` (see the module doc)."""
    spec = spec.check()
    if not isinstance(seed, int) or seed < 0:
        raise LensnetError(f"--seed must be an integer >= 0, got {seed!r}")
    path = Path(source)
    manifest = read_manifest(path)
    schema = schema_of(manifest)
    if field not in schema.image_names:
        raise LensnetError(f"dataset {path} has no image field '{field}'; image fields: "
                           f"{', '.join(schema.image_names)}")
    if "image_hr" in schema.names:
        raise LensnetError(f"dataset {path} already holds HR images ('image_hr'): it is a pair dataset")
    h, w, _ = schema[field].shape
    if h % spec.factor or w % spec.factor or h // spec.factor < 1:
        raise LensnetError(f"dataset {path}: HR images {h}x{w} are not a multiple of --factor {spec.factor}")
    out = Path(out)
    counts = {s: int(manifest["splits"][s]["count"]) for s in SPLITS if manifest["splits"].get(s, {}).get("count")}
    config = dict(manifest.get("config") or {})
    base = {
        "name": name or out.name,
        "kind": "super_resolution",
        "generator": "lensnet.convert degrade",
        "source": str(path.resolve()),
        "config": {"degrade": asdict(spec), "source_field": field, "source_name": manifest.get("name"),
                   "symmetry": config.get("symmetry"),
                   "description": "LR = block mean (factor) of HR blurred by a Gaussian (psf_fwhm, HR px) + noise"},
        "seed": seed,
    }
    plans = plan_shards(counts, int(records_per_shard))
    return write_dataset(out, DegradeSource(path, manifest, field, spec, seed), plans, base, workers=workers,
                         overwrite=overwrite, progress=progress, describe=f"degrading {path.name}")
