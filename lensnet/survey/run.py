"""The find -> classify -> interpret pipeline over a list of inputs, resumable, into one results folder.

    RESULTS/
      pipeline.json        inputs, settings, stages (each export's card and version), methods, counts, status
      candidates.csv       one row per candidate (columns: `CANDIDATE_COLUMNS`, then each stage's, then files)
      thumbs/ID.png        the candidate's colour composite, north up; overlays/ID.METHOD.png its saliency over it
      cutouts/ID.npy       its raw pixels (H, W, C) float32; cutouts/ID.json its bands and WCS orientation
      maps/ID.METHOD.npy   the saliency map (H, W) float32 in [0, 1]
      parts/               one CSV + one JSON per finished unit (a file, or a batch of a dataset)

Resuming: a unit's rows are written to parts/U.csv atomically and its parts/U.json (the marker) after it,
so a killed run leaves each unit either finished or absent; a rerun with the same inputs and settings skips
finished units and candidates.csv is rebuilt from the parts at the end, so no row is ever written twice.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import atomic_open, write_json, write_text
from lensnet.survey.layout import CANDIDATES, CUTOUTS, PARTS, PIPELINE_JSON
from lensnet.survey.merge import merge_by_peak, nms, tile_peaks
from lensnet.survey.stages import Stage, detection_scores
from lensnet.survey.tiles import TileSet, read_tiles

CANDIDATE_COLUMNS = ["id", "source", "unit", "x0", "y0", "x1", "y1", "ra", "dec", "finder_score"]
FORMAT_VERSION = 1


@dataclass
class Settings:
    """Everything that changes the rows: a resumed run must have the same."""

    inputs: list[str]
    threshold: float = 0.5
    top_k: int | None = None
    overlap: int = 0
    iou: float | None = None  # box NMS at this IoU instead of merging by peak position
    merge_radius: float = 8.0  # px: detections whose tiles' brightest spots are this close are one
    fill_nonfinite: str = "median"
    max_blank: float = 0.5
    methods: list[str] = field(default_factory=lambda: ["integrated_gradients", "gradcam"])
    explain: str = "classifier"  # which stage's model is explained (falls back to the finder)
    hdu: int | str | None = None
    batch_size: int = 64
    labels: str | None = None
    seed: int = 0


def _stage_json(stages: list[Stage]) -> dict:
    return {s.name: s.card_summary() for s in stages}


def _labels(path: str | None) -> dict[str, str]:
    """source -> label from a CSV with columns source,label (1 = lens, 0 = not a lens)."""
    if not path:
        return {}
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise LensnetError(f"--labels {path}: {exc.strerror}") from None
    if rows and not {"source", "label"} <= set(rows[0]):
        raise LensnetError(f"--labels {path}: needs columns source,label")
    return {r["source"]: r["label"] for r in rows}


class Pipeline:
    def __init__(self, stages: list[Stage], settings: Settings, out: Path, options, progress: bool | None) -> None:
        from lensnet.survey.interpret import Explainer

        self.stages = {s.name: s for s in stages}
        self.settings, self.out, self.options, self.progress = settings, Path(out), options, progress
        self.finder = self.stages["finder"]
        self.others = [s for s in stages if s.name != "finder"]
        explained = self.stages.get(settings.explain) or self.finder
        self.explainer = Explainer(explained.exported, tuple(settings.methods)) if settings.methods else None
        self.explained = explained.name
        self.labels = _labels(settings.labels)
        self.columns = [*CANDIDATE_COLUMNS, *(c for s in self.others for c in s.columns)]
        # Truth: --labels, or the class of dataset records (label 1 when it is the finder's positive class).
        self.truth_classes = any(item.endswith("manifest.json") or (Path(item) / "manifest.json").is_file()
                                 for item in settings.inputs)
        self.positive = self.finder.exported.spec.positive_class or "lens"
        if self.truth_classes:
            self.columns.append("true_class")
        if self.labels or self.truth_classes:
            self.columns.append("label")
        self.columns.append("thumbnail")
        for method in (self.explainer.methods if self.explainer else []):
            self.columns += [f"overlay_{method}", f"map_{method}"]

    # ---- the run --------------------------------------------------------------------------------------

    def header(self) -> dict:
        return {
            "format": "lensnet-pipeline",
            "format_version": FORMAT_VERSION,
            "settings": asdict(self.settings),
            "stages": _stage_json(list(self.stages.values())),
            "interpretation": {
                "model": self.explained,
                "methods": self.explainer.methods if self.explainer else [],
                "notes": self.explainer.notes if self.explainer else {},
            },
            "columns": self.columns,
        }

    def prepare(self, restart: bool) -> None:
        """Start, or resume a run with the same settings; a folder holding another run is refused."""
        meta = self.out / PIPELINE_JSON
        if meta.is_file() and not restart:
            try:
                old = json.loads(meta.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise LensnetError(f"{meta} is damaged ({exc}); pass --restart to start over") from None
            if old.get("settings") != asdict(self.settings) or old.get("columns") != self.columns:
                raise LensnetError(f"{self.out} holds results of other inputs or settings; give another --out "
                                   "or pass --restart")
        elif restart:
            shutil.rmtree(self.out / PARTS, ignore_errors=True)
        from lensnet.core.runinfo import package_versions

        write_json(meta, {**self.header(), "status": "running", "versions": package_versions()})

    def run(self, items: list[tuple[str, Path]], restart: bool = False) -> dict:
        from lensnet.core.progress import Progress

        self.prepare(restart)
        expected = self.finder.exported.input_shape
        totals = {"inputs": len(items), "tiles": 0, "candidates": 0, "resumed_units": 0, "notes": []}
        scored: list = []  # [finder score, truth 0/1] of every tile whose truth is known
        with Progress(len(items), "pipeline", "input", enabled=self.progress) as bar:
            for i, (kind, path) in enumerate(items):
                for j, tiles in enumerate(read_tiles(kind, path, expected, self.options, self.settings.overlap,
                                                     self.settings.fill_nonfinite, self.settings.max_blank)):
                    marker = self.out / PARTS / f"{i:06d}-{j:06d}.json"
                    if marker.is_file():
                        done = json.loads(marker.read_text())
                        totals["resumed_units"] += 1
                    else:
                        done = self.unit(f"c{i:05d}_{j:04d}", tiles, marker)
                    totals["tiles"] += done["tiles"]
                    totals["candidates"] += done["candidates"]
                    scored += done.get("scored", [])
                    totals["notes"] += done.get("notes", [])
                bar.update(1)
        rows = self.collect()
        totals["candidates"] = len(rows)
        totals["skipped"] = list(self.options.skipped)
        if scored:
            from lensnet.tasks.survey_metrics import survey_scores

            values = np.asarray(scored, dtype=np.float64)
            totals["survey"] = survey_scores(values[:, 1], values[:, 0])
            totals["survey"]["scope"] = "every tile with a known truth, scored by the finder before --threshold"
        from lensnet.core.runinfo import package_versions

        write_json(self.out / PIPELINE_JSON, {**self.header(), "status": "done", "totals": totals,
                                              "versions": package_versions()})
        return totals

    def collect(self) -> list[list[str]]:
        """candidates.csv from the finished parts, in input order (the global top k when asked)."""
        rows: list[list[str]] = []
        for marker in sorted((self.out / PARTS).glob("*.json")):
            with open(marker.with_suffix(".csv"), newline="") as handle:
                rows += list(csv.reader(handle))[1:]
        k = self.settings.top_k
        if k is not None and len(rows) > k:
            score = self.columns.index("finder_score")
            rows = sorted(rows, key=lambda r: -float(r[score]))[:k]
        with atomic_open(self.out / CANDIDATES, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows(rows)
        return rows

    # ---- one unit ------------------------------------------------------------------------------------

    def _batched(self, stage: Stage, images: np.ndarray) -> np.ndarray:
        size = self.settings.batch_size
        return np.concatenate([stage.runner(images[s:s + size]) for s in range(0, len(images), size)])

    def unit(self, prefix: str, tiles: TileSet, marker: Path) -> dict:
        n = len(tiles.sources)
        keep = np.zeros(0, dtype=np.int64)
        scores = np.zeros(0)
        if n:
            scores = detection_scores(self.finder, self._batched(self.finder, tiles.images))
            keep = np.flatnonzero(scores >= self.settings.threshold)
            if tiles.full_image is not None and keep.size > 1:  # overlapping tiles of one image: one detection
                if self.settings.iou is not None:
                    keep = keep[nms(tiles.boxes[keep], scores[keep], self.settings.iou)]
                else:
                    peaks = tile_peaks(tiles.images[keep], tiles.boxes[keep])
                    kept = merge_by_peak(peaks, scores[keep], self.settings.merge_radius)
                    keep = keep[kept]
                    # The best tile of an object may see it at its edge: cut it again around the object (twice:
                    # the second cut sees all of it) and score that too (the score is the better of the two).
                    fill = self.settings.fill_nonfinite
                    tiles.recentre(keep, peaks[kept], fill)
                    tiles.recentre(keep, tile_peaks(tiles.images[keep], tiles.boxes[keep]), fill)
                    again = detection_scores(self.finder, self._batched(self.finder, tiles.images[keep]))
                    scores[keep] = np.maximum(scores[keep], again)
            keep = keep[np.argsort(-scores[keep], kind="stable")]
            if self.settings.top_k is not None:
                keep = keep[: self.settings.top_k]
            keep = np.sort(keep)
        rows = [self._row(prefix, tiles, int(t), float(scores[t])) for t in keep]
        scored = self._truths(tiles, scores) if n and (self.labels or self.truth_classes) else []
        if keep.size:
            images = tiles.images[keep]
            sources = [tiles.sources[t] for t in keep]
            for stage in self.others:
                outputs = self._batched(stage, images)
                for row, cells in zip(rows, stage.cells(outputs, sources, self.settings.threshold)):
                    row += cells
            truths = [tiles.class_names[t] for t in keep] if tiles.class_names else [""] * len(rows)
            if self.truth_classes:
                for row, truth in zip(rows, truths):
                    row.append(truth)
            if self.labels or self.truth_classes:
                for row, source, truth in zip(rows, sources, truths):
                    given = self.labels.get(source, self.labels.get(tiles.unit, ""))
                    row.append(given if given or not truth else str(int(truth == self.positive)))
            self._files(rows, images, tiles)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(rows)
        write_text(marker.with_suffix(".csv"), buffer.getvalue())
        done = {"tiles": n, "candidates": len(rows), "notes": tiles.notes}
        if scored:
            done["scored"] = scored
        write_json(marker, done)  # last: the unit is finished only once its marker exists
        return done

    def _truths(self, tiles: TileSet, scores: np.ndarray) -> list[list[float]]:
        """[score, 1 lens / 0 not] of every tile of the unit whose truth is known (survey metrics)."""
        out = []
        for t, source in enumerate(tiles.sources):
            given = self.labels.get(source, self.labels.get(tiles.unit, ""))
            truth = tiles.class_names[t] if tiles.class_names else ""
            label = given if given else (str(int(truth == self.positive)) if truth else "")
            if label in ("0", "1"):
                out.append([float(scores[t]), float(label)])
        return out

    def _row(self, prefix: str, tiles: TileSet, t: int, score: float) -> list:
        box = tiles.boxes[t]
        ra, dec = tiles.radec[t]
        return [f"{prefix}_{t:05d}", tiles.sources[t], tiles.unit, *map(int, box), _degrees(ra), _degrees(dec),
                format(score, ".6g")]

    def _files(self, rows: list[list], images: np.ndarray, tiles: TileSet) -> None:
        """Per candidate: its raw pixels (cutouts/ID.npy, array orientation) and what the dashboard needs to
        draw them (cutouts/ID.json: bands, the WCS's arcsec-per-pixel matrix); the thumbnail (a Lupton colour
        composite) and overlays drawn north up, east left when the WCS says where north is."""
        from lensnet.survey.pngs import lupton_rgb, north_up, overlay, upscale_for, write_png

        scale = upscale_for(images.shape[1])
        maps = self.explainer.explain(images) if self.explainer else {}
        cd = tiles.cd
        for index, row in enumerate(rows):
            cid = row[0]
            with atomic_open(self.out / CUTOUTS / f"{cid}.npy", "wb") as handle:
                np.save(handle, images[index].astype(np.float32), allow_pickle=False)
            write_json(self.out / CUTOUTS / f"{cid}.json", {
                "bands": tiles.bands, "cd_arcsec": None if cd is None else np.asarray(cd).tolist()})
            thumb = f"thumbs/{cid}.png"
            write_png(self.out / thumb, north_up(lupton_rgb(images[index]), cd), scale)
            row.append(thumb)
            for method, values in maps.items():
                png, npy = f"overlays/{cid}.{method}.png", f"maps/{cid}.{method}.npy"
                write_png(self.out / png, north_up(overlay(images[index], values[index]), cd), scale)
                with atomic_open(self.out / npy, "wb") as handle:
                    np.save(handle, values[index].astype(np.float32), allow_pickle=False)
                row += [png, npy]


def _degrees(value: float) -> str:
    return format(float(value), ".9f") if np.isfinite(value) else ""  # 1e-9 deg = 4 micro-arcsec


def report(totals: dict, out: Path) -> None:
    skipped = f", skipped {len(totals['skipped'])} bad input(s)" if totals["skipped"] else ""
    resumed = f", {totals['resumed_units']} unit(s) resumed from an earlier run" if totals["resumed_units"] else ""
    print(f"searched {totals['tiles']} tiles in {totals['inputs']} input(s): {totals['candidates']} candidates "
          f"in {out / CANDIDATES}{resumed}{skipped}", file=sys.stderr)
    if "survey" in totals:
        from lensnet.tasks.survey_metrics import format_survey

        print("\n".join(format_survey(totals["survey"])), file=sys.stderr)
