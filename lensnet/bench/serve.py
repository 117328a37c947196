"""REST server under a bounded load: requests/s, p50/p99 latency and failures.

`python -m lensnet.serve` runs as a child process on a free local port (127.0.0.1 only); this
process is the load generator: `--clients` threads, each on its own keep-alive connection, send
`--requests` POST :predict requests in total (row format, `--batch` images each, body encoded
once) and time each one. A request fails if the connection errs or the answer is not a 200
holding one prediction per image. Without `--model`, a scratch cnn_small (64x64x1, random
weights) is exported first. One row per runtime.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

SUMMARY = "REST server under load: requests/s, p50/p99 latency, failures"

_START_TIMEOUT = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="export directory export/NAME (default: scratch cnn_small)")
    parser.add_argument("--runtimes", default="onnx,tf", help="server runtimes to measure (default onnx,tf)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per runtime (default 2000)")
    parser.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed requests first (default 50)")
    parser.add_argument("--size", type=int, default=64, help="image size of the scratch model (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and images")


class ServerProcess:
    """`python -m lensnet.serve` on a free port, as a child process; stopped by its own pid."""

    def __init__(self, model_dir: Path, runtime: str) -> None:
        command = [
            sys.executable,
            "-m",
            "lensnet.serve",
            "--model",
            os.fspath(model_dir),
            "--port",
            "0",
            "--runtime",
            runtime,
        ]
        # stderr to a file: an unread pipe that fills up would stall the server.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self._announcement()
        self.url = line.rsplit(" at ", 1)[1].strip()

    def _announcement(self) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT)
        if not result or not result[0].startswith("serving "):
            self.stop()
            self.log.seek(0)
            err = self.log.read()
            raise RuntimeError(f"server did not start: {(result or [''])[0]!r} {err[-500:]}")
        return result[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def load(url: str, body: bytes, batch: int, clients: int, requests: int) -> tuple[list[float], int, float]:
    """(latencies in s of the successful requests, failures, wall seconds) of `requests` POSTs."""
    parts = urlsplit(url)
    path = f"{parts.path}:predict"
    counter = itertools.count()
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        mine: list[float] = []
        bad = 0
        while next(counter) < requests:
            start = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and len(json.loads(answer)["predictions"]) == batch
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            if ok:
                mine.append(time.perf_counter() - start)
            else:
                bad += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            failures[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures[0], time.perf_counter() - start


def run(args: argparse.Namespace) -> list[dict]:
    if args.clients < 1 or args.requests < 1 or args.batch < 1:
        raise SystemExit("--clients, --requests and --batch must be at least 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lensnet-bench-serve-") as tmp:
        if args.model:
            model_dir = Path(args.model)
        else:
            from lensnet.bench.infer import scratch_export

            _, model_dir, _ = scratch_export(Path(tmp), "cnn_small", (args.size, args.size, 1), args.seed)
        from lensnet.artifacts.exports import load_export

        exported = load_export(model_dir)
        rng = np.random.default_rng(args.seed)
        images = rng.standard_normal((args.batch, *exported.input_shape)).astype(np.float32)
        body = json.dumps({"instances": images.round(5).tolist()}).encode()
        for runtime in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
            server = ServerProcess(model_dir, runtime)
            try:
                load(server.url, body, args.batch, min(args.clients, args.warmup or 1), args.warmup)
                latencies, failures, wall = load(server.url, body, args.batch, args.clients, args.requests)
            finally:
                server.stop()
            ms = np.asarray(latencies) * 1000.0
            rows.append(
                {
                    "model": f"{exported.name} v{exported.version}",
                    "input": "x".join(map(str, exported.input_shape)),
                    "runtime": runtime,
                    "clients": args.clients,
                    "requests": args.requests,
                    "images_per_request": args.batch,
                    "requests_s": round(args.requests / wall, 1),
                    "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
                    "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
                    "max_ms": round(float(ms.max()), 2) if len(ms) else None,
                    "failed": failures,
                    "body_kb": round(len(body) / 1024, 1),
                    # Other jobs on a shared machine show up here: compare rows measured at similar load.
                    "load_1min": round(os.getloadavg()[0], 2),
                }
            )
    return rows

