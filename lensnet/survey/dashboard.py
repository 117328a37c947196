"""The dashboard's web app: a pipeline results folder (and optionally a training run) over HTTP.

Starlette (already pinned for lensnet.serve) serves a small vanilla-JS client bundled in `static/`
(no CDN: works offline). Routes:

    GET  /                     the page              GET /static/{app.js,app.css}
    GET  /api/results          rows, columns, pipeline.json summary, marks
    POST /api/marks            {"id": ..., "mark": "lens" | "not_lens" | "unsure" | null}
    GET  /api/export.csv       ?ids=a,b,c (the client's filtered list) or ?marked=1: rows + their mark
    GET  /files/{path}         a file inside the results folder (thumbnails, overlays, maps)
    GET  /api/run              the --run folder: run.json, metrics.json, its plots and sample images
    GET  /run/files/{path}     a file inside the run folder

Only files inside the two folders are served: a path that resolves outside (`..`, absolute, a symlink out)
is 404, and so is anything that is not a regular file. Marks are saved to RESULTS/marks.json atomically on
every change and read back at start, so they survive a restart.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import threading
from pathlib import Path
from typing import Any

from lensnet.core.errors import LensnetError
from lensnet.core.fileio import write_json
from lensnet.survey.layout import CANDIDATES, MARKS, PIPELINE_JSON

MARK_VALUES = ("lens", "not_lens", "unsure")
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

    def __init__(self, folder: str | Path) -> None:
        self.root = Path(folder).resolve()
        if not self.root.is_dir():
            raise LensnetError(f"results folder not found: {folder}")
        table = self.root / CANDIDATES
        try:
            with open(table, newline="") as handle:
                reader = csv.reader(handle)
                self.columns = next(reader)
                self.rows = [dict(zip(self.columns, row)) for row in reader]
        except (OSError, StopIteration, csv.Error) as exc:
            raise LensnetError(f"{table}: not a readable candidates table ({type(exc).__name__}); "
                               "is this a lensnet.pipeline results folder?") from None
        if "id" not in self.columns or any(len(r) != len(self.columns) for r in self.rows):
            raise LensnetError(f"{table}: damaged (no 'id' column, or rows of the wrong length)")
        self.pipeline = self._json(self.root / PIPELINE_JSON, required=False) or {}
        self.ids = {r["id"] for r in self.rows}
        marks = self._json(self.root / MARKS, required=False) or {}
        self.marks: dict[str, dict] = dict(marks.get("marks", {})) if isinstance(marks, dict) else {}
        self._lock = threading.Lock()

    @staticmethod
    def _json(path: Path, required: bool) -> Any:
        if not path.is_file():
            if required:
                raise LensnetError(f"{path} is missing")
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LensnetError(f"{path} is damaged: {exc}") from None

    def summary(self) -> dict:
        numeric = [c for c in self.columns if c not in ("id", "source", "unit", "thumbnail", "label")
                   and not c.startswith(("overlay_", "map_")) and _numeric(self.rows, c)]
        stages = {name: {"name": s.get("name"), "version": s.get("version"), "task": (s.get("card") or {}).get("task"),
                         "model": (s.get("card") or {}).get("model")}
                  for name, s in (self.pipeline.get("stages") or {}).items()}
        return {
            "folder": str(self.root), "columns": self.columns, "numeric": numeric, "rows": self.rows,
            "marks": {k: v["mark"] for k, v in self.marks.items()}, "has_labels": "label" in self.columns,
            "pipeline": {"status": self.pipeline.get("status"), "stages": stages,
                         "interpretation": self.pipeline.get("interpretation", {}),
                         "totals": self.pipeline.get("totals", {}), "settings": self.pipeline.get("settings", {})},
        }

    def set_mark(self, cid: Any, mark: Any) -> None:
        if not isinstance(cid, str) or cid not in self.ids:
            raise LensnetError(f"unknown candidate id {cid!r}")
        if mark is not None and mark not in MARK_VALUES:
            raise LensnetError(f"mark must be one of {', '.join(MARK_VALUES)} or null, got {mark!r}")
        with self._lock:
            if mark is None:
                self.marks.pop(cid, None)
            else:
                when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                self.marks[cid] = {"mark": mark, "at": when}
            write_json(self.root / MARKS, {"format": "lensnet-marks", "marks": self.marks})

    def export_csv(self, ids: list[str] | None, marked: bool) -> str:
        chosen = [r for r in self.rows if r["id"] in self.marks] if marked else (
            [r for r in self.rows if r["id"] in set(ids)] if ids is not None else list(self.rows))
        if ids is not None and not marked:  # the client's order (its sort)
            order = {cid: n for n, cid in enumerate(ids)}
            chosen.sort(key=lambda r: order[r["id"]])
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*self.columns, "mark"])
        for row in chosen:
            writer.writerow([*(row[c] for c in self.columns), self.marks.get(row["id"], {}).get("mark", "")])
        return buffer.getvalue()


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


def create_app(results: Results, run: RunView | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return error(404, "not found")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    async def api_results(request: Request) -> Response:
        return JSONResponse(results.summary())

    async def api_marks(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise LensnetError("body must be a JSON object {id, mark}")
            results.set_mark(body.get("id"), body.get("mark"))
        except json.JSONDecodeError:
            return error(400, "body is not JSON")
        except LensnetError as exc:
            return error(400, str(exc))
        return JSONResponse({"marks": {k: v["mark"] for k, v in results.marks.items()}})

    async def export(request: Request) -> Response:
        marked = request.query_params.get("marked") in ("1", "true")
        raw = request.query_params.get("ids")
        ids = [i for i in raw.split(",") if i] if raw is not None else None
        name = "candidates-marked.csv" if marked else "candidates-filtered.csv"
        return PlainTextResponse(results.export_csv(ids, marked), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def file_route(root_of):
        async def serve_file(request: Request) -> Response:
            root = root_of()
            path = inside(root, request.path_params["path"]) if root is not None else None
            if path is None:
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
        Route("/api/run", api_run),
        Route("/files/{path:path}", file_route(lambda: results.root)),
        Route("/run/files/{path:path}", file_route(lambda: run.root if run else None)),
    ]
    return Starlette(routes=routes)
