"""The TF Serving REST API over the versions of one export (the library under `python -m lensnet.serve`).

    GET  /v1/models/NAME[/versions/N]             version status
    GET  /v1/models/NAME[/versions/N]/metadata    signature (+ the lensnet card)
    POST /v1/models/NAME[/versions/N]:predict     {"instances": [...]} -> {"predictions": [...]}
                                                  {"inputs": ...}      -> {"outputs": ...}

Requests carry raw images (H, W, C) float numbers; the model normalises them. Answers are
nested lists, one entry per image, shaped by the output spec (an image output is an (H, W, C)
list per image, in input units). Every bad request gets a 4xx with `{"error": "..."}` and the
server keeps serving. Built on starlette + uvicorn; inference runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lensnet.artifacts.export_layout import INPUT_NAME, SIGNATURE
from lensnet.artifacts.exports import ExportedModel, load_export
from lensnet.artifacts.versions import list_versions
from lensnet.core.errors import LensnetError
from lensnet.core.http import (
    Access,
    ClientError,
    Guard,
    app_in_thread,
    json_errors,
    one_line,
    parse_json,
    read_body,
)
from lensnet.serving.runtimes import Runner, open_runner

DEFAULT_MAX_BODY_MB = 16.0
DEFAULT_MAX_BATCH = 256
DEFAULT_POLL_SECONDS = 2.0
_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?P<tail>/metadata|:[A-Za-z]+)?$")


class ModelServer:
    """The versions of one export, loaded once, and the request handling that does not touch HTTP."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        name: str | None = None,
        runtime: str = "card",
        threads: int | None = 1,
        max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 2**20),
        max_batch: int = DEFAULT_MAX_BATCH,
        concurrency: int | None = None,
    ) -> None:
        versions = list_versions(model_dir)
        if not versions:
            load_export(model_dir)  # raises the one-line error naming the problem
        self.model_dir = Path(model_dir)
        self.runtime = runtime
        self.threads = threads
        self.models: dict[int, tuple[ExportedModel, Runner]] = {}
        for version in versions:
            self.models[version] = self._load(version)
        self.name = name or self.models[versions[-1]][0].name
        self.max_body_bytes = int(max_body_bytes)
        self.max_batch = int(max_batch)
        # Bounded parallel inference: more concurrent runs than cores only adds contention.
        self.concurrency = concurrency or max(1, os.cpu_count() or 1)
        self._slots: asyncio.Semaphore | None = None
        self._failed: set[int] = set()

    def _load(self, version: int) -> tuple[ExportedModel, Runner]:
        exported = load_export(self.model_dir, version)
        return exported, open_runner(exported, self.runtime, self.threads)

    def refresh(self) -> list[int]:
        """Load versions exported since startup and drop deleted ones, as TF Serving's file-system
        poll does; returns the versions added. A version that fails to load is reported once."""
        on_disk = set(list_versions(self.model_dir))
        models = {v: m for v, m in self.models.items() if v in on_disk} if on_disk else dict(self.models)
        added = []
        for version in sorted(on_disk - set(models) - self._failed):
            try:
                models[version] = self._load(version)
                added.append(version)
            except LensnetError as exc:
                self._failed.add(version)
                print(f"warning: version {version} not served: {exc}", file=sys.stderr, flush=True)
        if models.keys() != self.models.keys():
            self.models = models  # one reference swap: requests in flight keep the dict they resolved from
        return added

    @property
    def latest(self) -> int:
        return max(self.models)

    # ---- routing ------------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None) -> tuple[int, ExportedModel, Runner]:
        if name != self.name:
            raise ClientError(404, f"Servable not found for request: model '{name}' (this server has '{self.name}')")
        models = self.models  # one snapshot: refresh() may swap the dict meanwhile
        if version is None:
            number = max(models)
        else:
            if not re.fullmatch(r"[0-9]+", version):
                raise ClientError(400, f"version must be a positive integer, got '{version}'")
            number = int(version)
            if number not in models:
                available = ", ".join(map(str, sorted(models)))
                raise ClientError(
                    404, f"Servable not found for request: Specific({name}, {number}); versions: {available}"
                )
        exported, runner = models[number]
        return number, exported, runner

    def status(self, name: str, version: str | None) -> dict:
        if version is None:
            self.resolve(name, None)
            numbers = sorted(self.models, reverse=True)
        else:
            numbers = [self.resolve(name, version)[0]]
        return {
            "model_version_status": [
                {"version": str(n), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for n in numbers
            ]
        }

    def metadata(self, name: str, version: str | None) -> dict:
        number, exported, _ = self.resolve(name, version)

        def tensor(shape: list, tensor_name: str) -> dict:
            dims = [{"size": str(-1 if d is None else d), "name": ""} for d in shape]
            return {"dtype": "DT_FLOAT", "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": tensor_name}

        signature = {
            "inputs": {INPUT_NAME: tensor(exported.card["input"]["shape"], f"{SIGNATURE}_{INPUT_NAME}:0")},
            "outputs": {exported.output_name: tensor(exported.card["output"]["shape"], "StatefulPartitionedCall:0")},
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(number)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}, "lensnet_card": exported.card},
        }

    # ---- predict ------------------------------------------------------------------------------
    def parse(self, body: bytes, exported: ExportedModel) -> tuple[np.ndarray, str]:
        """Request body -> (images (N, H, W, C) float32, "instances" | "inputs")."""
        request = parse_json(body)
        if not isinstance(request, dict):
            raise ClientError(400, 'request body must be a JSON object with "instances" or "inputs"')
        signature = request.get("signature_name", SIGNATURE)
        if signature not in (SIGNATURE, ""):
            raise ClientError(400, f"unknown signature_name '{signature}'; this model has '{SIGNATURE}'")
        unknown = set(request) - {"instances", "inputs", "signature_name"}
        if unknown:
            raise ClientError(400, f"unknown request key(s): {', '.join(sorted(unknown))}")
        if ("instances" in request) == ("inputs" in request):
            raise ClientError(400, 'request must hold exactly one of "instances" (row format) or "inputs" (columnar)')
        if "instances" in request:
            instances = request["instances"]
            if not isinstance(instances, list) or not instances:
                raise ClientError(400, '"instances" must be a non-empty list of images')
            if all(isinstance(item, dict) for item in instances):
                instances = [_named_input(item, "instance") for item in instances]
            elif any(isinstance(item, dict) for item in instances):
                raise ClientError(400, '"instances" mixes named ({"images": ...}) and plain entries')
            return self._images(instances, "instances", exported), "instances"
        inputs = request["inputs"]
        if isinstance(inputs, dict):
            inputs = _named_input(inputs, "inputs")
        return self._images(inputs, "inputs", exported), "inputs"

    def _images(self, value: Any, what: str, exported: ExportedModel) -> np.ndarray:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise ClientError(400, f"{what}: not a rectangular array of numbers ({one_line(exc)})") from None
        if array.dtype.kind not in "iuf":
            found = {"U": "strings", "S": "strings", "b": "booleans", "O": "mixed or non-numeric values"}
            kind = found.get(array.dtype.kind, str(array.dtype))
            raise ClientError(400, f"{what}: expected float numbers (DT_FLOAT), got {kind}")
        expected = exported.input_shape
        if array.ndim != 4 or array.shape[1:] != expected or array.shape[0] < 1:
            raise ClientError(
                400, f"{what}: expected shape (N, {', '.join(map(str, expected))}) of raw images, got {array.shape}"
            )
        if array.shape[0] > self.max_batch:
            raise ClientError(413, f"{what}: {array.shape[0]} images exceed the limit of {self.max_batch} per request")
        with np.errstate(over="ignore"):
            images = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(images).all():
            raise ClientError(400, f"{what}: values must be finite float32 numbers (NaN, Inf or out of range)")
        return images

    async def predict(self, name: str, version: str | None, body: bytes) -> dict:
        from starlette.concurrency import run_in_threadpool

        _, exported, runner = self.resolve(name, version)
        images, form = self.parse(body, exported)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            outputs = await run_in_threadpool(runner, images)
        rows = exported.kind.json_outputs(exported.spec, np.asarray(outputs))
        return {"predictions": rows} if form == "instances" else {"outputs": rows}


def _named_input(item: dict, what: str) -> Any:
    if set(item) != {INPUT_NAME}:
        raise ClientError(400, f'{what} keys must be exactly {{"{INPUT_NAME}"}}, got {sorted(item)}')
    return item[INPUT_NAME]


# ---- HTTP ------------------------------------------------------------------------------------------


def create_app(server: ModelServer, poll_seconds: float = DEFAULT_POLL_SECONDS, access: Access | None = None) -> Any:
    """The starlette application serving `server`; new versions on disk are picked up every `poll_seconds`.

    `access` puts lensnet.core.http's Guard in front: the Host check (DNS rebinding) always, the token
    only if it asks for one. No same-origin check: :predict changes nothing, and TF Serving clients send no
    token.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def models(request: Request) -> JSONResponse:
        match = _PATH.match(request.path_params["rest"])
        if not match:
            return error(404, f"unknown path {request.url.path}")
        name, version, tail = match["name"], match["version"], match["tail"] or ""
        try:
            if request.method == "GET" and tail == "":
                return JSONResponse(server.status(name, version))
            if request.method == "GET" and tail == "/metadata":
                return JSONResponse(server.metadata(name, version))
            if tail == ":predict":
                if request.method != "POST":
                    return error(405, "use POST for :predict")
                server.resolve(name, version)  # unknown model / version: 404 before reading the body
                body = await read_body(request, server.max_body_bytes)
                return JSONResponse(await server.predict(name, version, body))
            if tail.startswith(":"):
                return error(400, f"method '{tail[1:]}' is not supported; this model serves ':predict'")
            return error(405, f"{request.method} is not supported on {request.url.path}")
        except ClientError as exc:
            return error(exc.status, exc.message)
        except Exception as exc:  # inference failure: answer 500 and keep serving
            return error(500, f"internal error: {type(exc).__name__}: {one_line(exc)}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        watcher = asyncio.create_task(_watch(server, poll_seconds)) if poll_seconds > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    routes = [Route("/v1/models/{rest:path}", models, methods=["GET", "POST"])]
    app = Starlette(routes=routes, exception_handlers=json_errors(), lifespan=lifespan)
    return Guard(app, access, csrf=False) if access is not None else app


async def _watch(server: ModelServer, seconds: float) -> None:
    from starlette.concurrency import run_in_threadpool

    while True:
        await asyncio.sleep(seconds)
        added = await run_in_threadpool(server.refresh)
        if added:
            print(f"serving new version(s) {', '.join(map(str, added))} of {server.name}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def serve_in_thread(
    server: ModelServer, host: str = "127.0.0.1", poll_seconds: float = DEFAULT_POLL_SECONDS
) -> Iterator[str]:
    """Run `server` on a free local port in a background thread; yields its base URL."""
    access = Access(host, 0, require_token=False)
    with app_in_thread(create_app(server, poll_seconds, access), host) as base:
        yield base
