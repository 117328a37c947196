"""The dashboard's web app: a pipeline results folder (and optionally a training run) over HTTP.

Starlette (already pinned for lensnet.serve) serves a small vanilla-JS client bundled in `static/`
(no CDN: works offline). Routes:

    GET  /                     the page              GET /static/{app.js,app.css}
    GET  /api/results          rows, columns, pipeline.json summary, every grader's marks, their agreement,
                               truth metrics (--truth: lenses found and missed)
    POST /api/marks            {"id": ..., "mark": "lens" | "probable" | "unsure" | "not_lens" | null,
                                "grader": NAME}  (token + same origin: see lensnet.core.http)
    GET  /api/export.csv       ?ids=a,b,c (the client's filtered list) or ?marked=1, &grader=NAME: rows + marks
    GET  /api/cutout/{id}      the candidate's raw pixels, bands and WCS orientation (cutouts/ID.npy, .json)
    GET  /files/{path}         a file inside the results folder (thumbnails, overlays, maps)
    GET  /api/run              the --run folder: run.json, metrics.json, its plots and sample images
    GET  /run/files/{path}     an image inside the run folder (plots, samples; never its checkpoints)

Only files inside the two folders are served: a path that resolves outside (`..`, absolute, a symlink out)
is 404, and so is anything that is not a regular file. Marks are saved to RESULTS/marks.json atomically on
every change and read back at start, so they survive a restart; each grader has their own. Grades follow
the SuGOHI / HOLISMOKES visual-inspection scheme: lens (A, definite), probable (B), unsure (C, possible),
not_lens. Exported CSV cells that a spreadsheet would run as a formula (= + - @, tab, CR first) are
prefixed with ' (numbers such as -0.5 are left alone).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import itertools
import json
import re
import threading
from pathlib import Path
from typing import Any

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json
from lensnet.survey.layout import CANDIDATES, CUTOUTS, MARKS, PIPELINE_JSON

MARK_VALUES = ("lens", "probable", "unsure", "not_lens")
DEFAULT_GRADER = "default"
GRADER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
MAX_BODY_BYTES = 64 << 10  # a mark is a few dozen bytes
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
RUN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")


def inside(root: Path, relative: str) -> Path | None:
    """The file `relative` names under `root`, or None if it resolves outside it or is not a regular file."""
    if not relative or "\x00" in relative or relative.startswith(("/", "\\")):
        return None
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class Results:
    """A results folder: candidates, pipeline.json, marks (thread-safe updates)."""

    def __init__(self, folder: str | Path, truth: str | Path | None = None) -> None:
        self.root = Path(folder).resolve()
        if not self.root.is_dir():
            raise LensnetError(f"results folder not found: {folder}")
        table = self.root / CANDIDATES
        try:
            with open(table, newline="") as handle:
                reader = csv.reader(handle)
                self.columns = next(reader)
                self.rows = [dict(zip(self.columns, row)) for row in reader]
        except (OSError, StopIteration, csv.Error, UnicodeDecodeError) as exc:
            raise LensnetError(f"{table}: not a readable candidates table ({type(exc).__name__}); "
                               "is this a lensnet.pipeline results folder?") from None
        if "id" not in self.columns or any(len(r) != len(self.columns) for r in self.rows):
            raise LensnetError(f"{table}: damaged (no 'id' column, or rows of the wrong length)")
        self.pipeline = self._json(self.root / PIPELINE_JSON, required=False) or {}
        if not isinstance(self.pipeline, dict):
            raise LensnetError(f"{self.root / PIPELINE_JSON} is damaged: not a JSON object")
        self.ids = {r["id"] for r in self.rows}
        self.graders = _read_marks(self.root / MARKS, self._json(self.root / MARKS, required=False))
        self._lock = threading.Lock()
        self.truth = None
        if truth is not None:
            from lensnet.survey.field import match_lenses, read_truth

            catalogue = read_truth(truth)
            found, right = match_lenses(catalogue, self.rows)
            lenses = [t for t in catalogue if t["is_lens"]]
            if "label" not in self.columns:
                self.columns.append("label")
                for row, hit in zip(self.rows, right):
                    row["label"] = str(int(hit))
            self.truth = {"path": str(truth), "lenses": len(lenses), "found": sum(found),
                          "missed": [{k: t.get(k, "") for k in ("id", "ra", "dec", "x", "y", "theta_e_arcsec")}
                                     for t, hit in zip(lenses, found) if not hit],
                          "candidates": len(self.rows), "true_candidates": sum(right)}

    @property
    def marks(self) -> dict[str, dict]:
        """The default grader's marks (id -> {"mark", "at"})."""
        return self.graders.get(DEFAULT_GRADER, {})

    @staticmethod
    def _json(path: Path, required: bool) -> Any:
        if not path.is_file():
            if required:
                raise LensnetError(f"{path} is missing")
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise LensnetError(f"{path} is damaged: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None

    def summary(self) -> dict:
        numeric = [c for c in self.columns if c not in ("id", "source", "unit", "thumbnail", "label")
                   and not c.startswith(("overlay_", "map_")) and _numeric(self.rows, c)]
        stages = {name: {"name": s.get("name"), "version": s.get("version"), "task": (s.get("card") or {}).get("task"),
                         "model": (s.get("card") or {}).get("model")}
                  for name, s in (self.pipeline.get("stages") or {}).items()}
        return {
            "folder": str(self.root), "columns": self.columns, "numeric": numeric, "rows": self.rows,
            "marks": self.mark_values(), "grades": list(MARK_VALUES), "agreement": agreement(self.mark_values()),
            "has_labels": "label" in self.columns, "truth": self.truth,
            "pipeline": {"status": self.pipeline.get("status"), "stages": stages,
                         "interpretation": self.pipeline.get("interpretation", {}),
                         "totals": self.pipeline.get("totals", {}), "settings": self.pipeline.get("settings", {})},
        }

    def mark_values(self) -> dict[str, dict[str, str]]:
        """grader -> {id: mark}."""
        return {g: {k: v["mark"] for k, v in marks.items()} for g, marks in self.graders.items()}

    def set_mark(self, cid: Any, mark: Any, grader: Any = DEFAULT_GRADER) -> None:
        if not isinstance(cid, str) or cid not in self.ids:
            raise LensnetError(f"unknown candidate id {str(cid)[:80]!r}")
        if mark is not None and mark not in MARK_VALUES:
            raise LensnetError(f"mark must be one of {', '.join(MARK_VALUES)} or null, got {str(mark)[:40]!r}")
        if not isinstance(grader, str) or not GRADER_NAME.match(grader):
            raise LensnetError("grader must be 1-40 letters, digits, '.', '_' or '-'")
        with self._lock:
            marks = dict(self.graders.get(grader, {}))
            if mark is None:
                marks.pop(cid, None)
            else:
                when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                marks[cid] = {"mark": mark, "at": when}
            graders = {**self.graders, grader: marks}
            write_json(self.root / MARKS, {"format": "lensnet-marks", "graders": graders})
            self.graders = graders

    def export_csv(self, ids: list[str] | None, marked: bool, grader: str = DEFAULT_GRADER) -> str:
        mine = self.graders.get(grader, {})
        chosen = [r for r in self.rows if r["id"] in mine] if marked else (
            [r for r in self.rows if r["id"] in set(ids)] if ids is not None else list(self.rows))
        if ids is not None and not marked:  # the client's order (its sort)
            order = {cid: n for n, cid in enumerate(ids)}
            chosen.sort(key=lambda r: order[r["id"]])
        others = [g for g in sorted(self.graders) if g != grader]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([csv_cell(c) for c in [*self.columns, "mark", *(f"mark_{g}" for g in others)]])
        for row in chosen:
            marks = [mine.get(row["id"], {}).get("mark", "")]
            marks += [self.graders[g].get(row["id"], {}).get("mark", "") for g in others]
            writer.writerow([csv_cell(v) for v in [*(row[c] for c in self.columns), *marks]])
        return buffer.getvalue()

    def cutout(self, cid: str) -> dict:
        """The candidate's raw pixels (H, W, C) as nested lists (NaN as null), bands and WCS orientation."""
        import numpy as np

        if cid not in self.ids:
            raise LensnetError(f"unknown candidate id {cid[:80]!r}")
        path = inside(self.root, f"{CUTOUTS}/{cid}.npy")
        if path is None:
            raise FileNotFoundError(cid)
        try:
            pixels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise LensnetError(f"{path} is damaged: {' '.join(str(exc).split())[:120]}") from None
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        meta = self._json(self.root / CUTOUTS / f"{cid}.json", required=False) or {}
        data = np.where(np.isfinite(pixels), pixels, np.nan).astype(float)
        return {"shape": list(pixels.shape), "bands": meta.get("bands"), "cd_arcsec": meta.get("cd_arcsec"),
                "data": [[[None if v != v else round(v, 6) for v in px] for px in line] for line in data.tolist()]}


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: one starting with = + - @ (or tab/CR) gets a leading ' unless it
    is a plain number (OWASP's CSV injection advice)."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START):
        try:
            float(text)
            return text
        except ValueError:
            return "'" + text
    return text


def _read_marks(path: Path, data: Any) -> dict[str, dict[str, dict]]:
    """grader -> {id: {"mark", "at"}} from marks.json (the single-grader format {"marks": ...} is the default
    grader's); anything else is one error line naming the file."""
    if data is None:
        return {}
    graders = data.get("graders") if isinstance(data, dict) and "graders" in data else (
        {DEFAULT_GRADER: data.get("marks", {})} if isinstance(data, dict) else None)
    ok = isinstance(graders, dict) and all(
        isinstance(g, str) and isinstance(m, dict) and all(
            isinstance(v, dict) and v.get("mark") in MARK_VALUES for v in m.values()) for g, m in graders.items())
    if not ok:
        raise LensnetError(f"{path} is damaged: expected {{\"graders\": {{NAME: {{ID: {{\"mark\": ...}}}}}}}}; "
                           "move it away to start marking afresh")
    return {g: dict(m) for g, m in graders.items()}


def agreement(marks: dict[str, dict[str, str]]) -> list[dict]:
    """Per pair of graders: candidates both marked, the fraction given the same grade, and Cohen's kappa
    (agreement beyond chance; None when chance agreement is 1)."""
    table = []
    for a, b in itertools.combinations(sorted(marks), 2):
        both = sorted(set(marks[a]) & set(marks[b]))
        n = len(both)
        same = sum(marks[a][c] == marks[b][c] for c in both)
        row = {"graders": [a, b], "both": n, "agree": round(same / n, 4) if n else None, "kappa": None}
        if n:
            chance = sum((sum(marks[a][c] == g for c in both) / n) * (sum(marks[b][c] == g for c in both) / n)
                         for g in MARK_VALUES)
            row["kappa"] = round((same / n - chance) / (1 - chance), 4) if chance < 1 else None
        table.append(row)
    return table


def _numeric(rows: list[dict], column: str) -> bool:
    seen = False
    for row in rows:
        value = row.get(column, "")
        if value == "":
            continue
        try:
            float(value)
        except ValueError:
            return False
        seen = True
    return seen


class RunView:
    """A training run folder: run.json, metrics.json and its images (plots, sample predictions)."""

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder).resolve()
        if not self.root.is_dir():
            raise LensnetError(f"--run folder not found: {folder}")
        self.info = Results._json(self.root / "run.json", required=False)
        self.metrics = Results._json(self.root / "metrics.json", required=False)
        if self.info is None and self.metrics is None:
            raise LensnetError(f"--run {folder}: holds neither run.json nor metrics.json")

    def summary(self) -> dict:
        images = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                        if p.is_file() and p.suffix.lower() in RUN_IMAGE_SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        samples = [p for p in images if "sample" in p.lower()]
        return {"folder": str(self.root), "run": self.info, "metrics": self.metrics,
                "plots": [p for p in images if p not in samples], "samples": samples}


def create_app(results: Results, run: RunView | None = None, access: Any = None) -> Any:
    """The starlette app behind lensnet.core.http's Guard (`access`: Host check, token, same origin)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from lensnet.core.http import Access, ClientError, Guard, json_errors, parse_json, read_body

    access = access or Access("127.0.0.1", 0)
    page = (STATIC / "index.html").read_text().replace("__LENSNET_TOKEN__", access.token)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(message.split())}, status_code=status)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                           "frame-ancestors 'none'"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return error(404, "not found")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    async def api_results(request: Request) -> Response:
        return JSONResponse(results.summary())

    async def api_marks(request: Request) -> Response:
        try:
            body = parse_json(await read_body(request, MAX_BODY_BYTES))
            if not isinstance(body, dict):
                raise LensnetError("body must be a JSON object {id, mark, grader}")
            results.set_mark(body.get("id"), body.get("mark"), body.get("grader", DEFAULT_GRADER))
        except ClientError as exc:
            return error(exc.status, exc.message)
        except LensnetError as exc:
            return error(400, str(exc))
        return JSONResponse({"marks": results.mark_values(), "agreement": agreement(results.mark_values())})

    async def export(request: Request) -> Response:
        marked = request.query_params.get("marked") in ("1", "true")
        raw = request.query_params.get("ids")
        grader = request.query_params.get("grader", DEFAULT_GRADER)
        ids = [i for i in raw.split(",") if i] if raw is not None else None
        name = "candidates-marked.csv" if marked else "candidates-filtered.csv"
        return PlainTextResponse(results.export_csv(ids, marked, grader), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def api_cutout(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        try:
            return JSONResponse(await run_in_threadpool(results.cutout, request.path_params["cid"]))
        except FileNotFoundError:
            return error(404, "no raw cutout for this candidate (results of an older pipeline)")
        except LensnetError as exc:
            return error(404 if "unknown candidate" in str(exc) else 422, str(exc))

    def file_route(root_of, suffixes: tuple[str, ...] | None = None):
        async def serve_file(request: Request) -> Response:
            root = root_of()
            path = inside(root, request.path_params["path"]) if root is not None else None
            if path is None or (suffixes is not None and path.suffix.lower() not in suffixes):
                return error(404, "not found")
            return FileResponse(path)

        return serve_file

    async def api_run(request: Request) -> Response:
        if run is None:
            return error(404, "no --run given")
        return JSONResponse(run.summary())

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/results", api_results),
        Route("/api/marks", api_marks, methods=["POST"]),
        Route("/api/export.csv", export),
        Route("/api/cutout/{cid}", api_cutout),
        Route("/api/run", api_run),
        Route("/files/{path:path}", file_route(lambda: results.root)),
        # Only the run's images: its checkpoints and configs are nobody else's business.
        Route("/run/files/{path:path}", file_route(lambda: run.root if run else None, RUN_IMAGE_SUFFIXES)),
    ]
    return Guard(Starlette(routes=routes, exception_handlers=json_errors()), access)
