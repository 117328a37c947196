"""Serve: the TF Serving REST API over real HTTP (urllib) against a server on a free local port:
status, metadata, row and columnar predict, versions; every bad request gets a 4xx JSON error
and the server keeps answering."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, keras_outputs, make_image_run, make_run

SHAPE = (16, 16, 1)
LIMIT = 64 * 1024  # bytes: small, so an oversized body is cheap to send


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """export/lenses with versions 1 and 2 (different weights, so versions are distinguishable)."""
    from lensnet.serving.export import export_run

    base = tmp_path_factory.mktemp("serve")
    for seed in (1, 2):
        run = make_run(base / f"run{seed}", "cnn_small", kind="multiclass", seed=seed)
        export_run(run, base / "export" / "lenses")
    return base / "export" / "lenses"


@pytest.fixture(scope="module")
def url(model_dir):
    from lensnet.serving.server import ModelServer, serve_in_thread

    with serve_in_thread(ModelServer(model_dir, max_body_bytes=LIMIT, max_batch=8)) as base:
        yield f"{base}/v1/models/lenses"


def call(url: str, body: bytes | dict | None = None, method: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["content-type"] == "application/json"
        return exc.code, json.loads(exc.read())


def images(n: int, seed: int = 0) -> np.ndarray:
    return (3.0 + np.random.default_rng(seed).standard_normal((n, *SHAPE))).astype("float32")


def expected(model_dir: Path, version: int, batch: np.ndarray) -> np.ndarray:
    from lensnet.artifacts.exports import load_export
    from lensnet.serving.runtimes import open_runner

    return open_runner(load_export(model_dir, version), "onnx")(batch)


@pytest.mark.slow
def test_status_lists_versions_newest_first(url):
    status, body = call(url)
    assert status == 200
    assert [v["version"] for v in body["model_version_status"]] == ["2", "1"]
    assert all(v["state"] == "AVAILABLE" and v["status"]["error_code"] == "OK" for v in body["model_version_status"])
    status, body = call(f"{url}/versions/1")
    assert status == 200 and [v["version"] for v in body["model_version_status"]] == ["1"]


@pytest.mark.slow
def test_metadata_describes_the_signature(url):
    status, body = call(f"{url}/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "lenses", "signature_name": "", "version": "2"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    dims = [d["size"] for d in signature["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "16", "16", "1"] and signature["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert list(signature["outputs"]) == ["probabilities"]
    assert body["metadata"]["lensnet_card"]["output"]["class_names"] == ["c0", "c1", "c2"]
    assert call(f"{url}/versions/1/metadata")[1]["model_spec"]["version"] == "1"


@pytest.mark.slow
def test_row_and_columnar_predict_match_the_model(url, model_dir):
    batch = images(3)
    newest, oldest = expected(model_dir, 2, batch), expected(model_dir, 1, batch)
    assert np.abs(newest - oldest).max() > 1e-3  # the two versions really differ

    status, body = call(f"{url}:predict", {"instances": batch.tolist()})
    assert status == 200 and list(body) == ["predictions"]
    np.testing.assert_allclose(body["predictions"], newest, atol=1e-6)

    status, body = call(f"{url}:predict", {"instances": [{"images": x} for x in batch.tolist()]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], newest, atol=1e-6)

    status, body = call(f"{url}:predict", {"inputs": batch.tolist(), "signature_name": "serving_default"})
    assert status == 200 and list(body) == ["outputs"]
    np.testing.assert_allclose(body["outputs"], newest, atol=1e-6)

    status, body = call(f"{url}/versions/1:predict", {"inputs": {"images": batch.tolist()}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"], oldest, atol=1e-6)

    ints = np.round(batch).astype(int)  # JSON integers are numbers too
    status, body = call(f"{url}:predict", {"instances": ints.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected(model_dir, 2, ints.astype("float32")), atol=1e-6)


IMAGE = images(1)[0].tolist()


def _replace_pixel(value):
    broken = json.loads(json.dumps(IMAGE))
    broken[3][4][0] = value
    return broken


BAD_REQUESTS = {
    "malformed json": (b'{"instances": [1, 2', 400, "malformed JSON"),
    "not an object": (b"[1, 2, 3]", 400, "JSON object"),
    "no instances or inputs": ({"images": [IMAGE]}, 400, "unknown request key"),
    "both instances and inputs": ({"instances": [IMAGE], "inputs": [IMAGE]}, 400, "exactly one of"),
    "empty instances": ({"instances": []}, 400, "non-empty list"),
    "wrong shape": ({"instances": [IMAGE[:8]]}, 400, "expected shape (N, 16, 16, 1)"),
    "missing channel axis": ({"inputs": [[row[0] for row in img] for img in [IMAGE]]}, 400, "expected shape"),
    "ragged": ({"instances": [IMAGE, IMAGE[:3]]}, 400, "not a rectangular array"),
    "strings": ({"instances": [_replace_pixel("0.5")]}, 400, "got strings"),
    "booleans": ({"instances": [[[[True]] * 16] * 16]}, 400, "got booleans"),
    "null pixel": ({"instances": [_replace_pixel(None)]}, 400, "mixed or non-numeric"),
    "nan literal": (json.dumps({"instances": [_replace_pixel(0.123456)]}).replace("0.123456", "NaN").encode(),
                    400, "NaN is not valid JSON"),
    "infinity literal": (json.dumps({"instances": [_replace_pixel(0.123456)]}).replace("0.123456", "-Infinity")
                         .encode(), 400, "-Infinity is not valid JSON"),
    "float32 overflow": ({"instances": [_replace_pixel(1e39)]}, 400, "finite float32"),
    "wrong named input": ({"instances": [{"pixels": IMAGE}]}, 400, 'keys must be exactly {"images"}'),
    "unknown signature": ({"instances": [IMAGE], "signature_name": "classify"}, 400, "unknown signature_name"),
    "too many images": ({"inputs": [IMAGE] * 9}, 413, "exceed the limit of 8"),
    "oversized body": (b'{"instances": [' + b"0.5, " * (LIMIT // 5) + b"0.5]}", 413, "exceeds the limit"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(url, case):
    body, code, fragment = BAD_REQUESTS[case]
    status, answer = call(f"{url}:predict", body)
    assert status == code and list(answer) == ["error"], answer
    assert fragment in answer["error"], answer
    assert call(f"{url}:predict", {"instances": [IMAGE]})[0] == 200


@pytest.mark.slow
def test_unknown_models_versions_and_paths(url):
    base = url.rsplit("/", 1)[0]
    cases = [
        (f"{base}/other:predict", {"instances": [IMAGE]}, None, 404, "Servable not found"),
        (f"{base}/other", None, None, 404, "Servable not found"),
        (f"{url}/versions/3:predict", {"instances": [IMAGE]}, None, 404, "Specific(lenses, 3); versions: 1, 2"),
        (f"{url}/versions/3/metadata", None, None, 404, "Servable not found"),
        (f"{url}/versions/latest:predict", {"instances": [IMAGE]}, None, 400, "positive integer"),
        (f"{url}:classify", {"instances": [IMAGE]}, None, 400, "not supported"),
        (f"{url}:predict", None, "GET", 405, "use POST"),
        (f"{url}/labels/x", None, None, 404, "unknown path"),
        (f"{base.rsplit('/', 2)[0]}/v2/models", None, None, 404, "Not Found"),
    ]
    for address, body, method, code, fragment in cases:
        status, answer = call(address, body, method)
        assert status == code and fragment in answer["error"], (address, answer)
    assert call(url)[0] == 200


@pytest.mark.slow
def test_oversized_declared_length_is_refused_before_reading(url):
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    # Declares 1 GB but sends nothing: the answer must come from the header alone.
    connection.putrequest("POST", f"{parts.path}:predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "exceeds the limit" in json.loads(response.read())["error"]
    connection.close()
    assert call(url)[0] == 200


@pytest.mark.slow
def test_tf_runtime_serves_the_same_answers(model_dir):
    from lensnet.serving.server import ModelServer, serve_in_thread

    batch = images(2, seed=5)
    with serve_in_thread(ModelServer(model_dir, runtime="tf")) as base:
        status, body = call(f"{base}/v1/models/lenses:predict", {"instances": batch.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], expected(model_dir, 2, batch), atol=1e-4)


@pytest.mark.slow
def test_serve_command_line(model_dir):
    command = [sys.executable, "-m", "lensnet.serve", "--model", str(model_dir), "--port", "0", "--name", "finder",
               "--seed", "0"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving finder versions 1, 2 (newest 2, runtime onnx) at http://127.0.0.1:"), line
        address = line.split(" at ")[1].strip()
        assert address.endswith("/v1/models/finder")
        port = address.split(":")[2].split("/")[0]
        status, body = call(f"{address}:predict", {"instances": [IMAGE]})
        assert status == 200 and len(body["predictions"][0]) == 3

        # A second server on the same port: one line, exit status 2.
        busy = subprocess.run([*command[:5], "--port", port], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert busy.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    missing = subprocess.run([*command[:4], str(model_dir.parent / "nope")], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: model directory not found")


def test_accepted_sockets_are_not_delayed_by_nagle():
    """Responses are two socket writes (headers, body); without TCP_NODELAY on accepted sockets each
    keep-alive request stalls ~40 ms on the client's delayed ACK. asyncio (under uvicorn) sets TCP_NODELAY only
    on sockets created as TCP: a connection accepted from `bind`'s socket must have it (no timing involved)."""
    import asyncio
    import socket

    from lensnet.core.http import bind

    async def check() -> int:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listening = bind("127.0.0.1", 0)
        server = await asyncio.start_server(handle, sock=listening)
        _, writer = await asyncio.open_connection(*listening.getsockname())
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        writer.close()
        server.close()
        await server.wait_closed()
        return seen[0]

    assert asyncio.run(check()) != 0


@pytest.mark.slow
def test_new_versions_are_picked_up_while_serving(tmp_path, model_dir):
    """As TF Serving polls its base path: a version exported while the server runs becomes the
    default within the poll interval, and a deleted one goes away."""
    import shutil
    import time

    from lensnet.serving.export import export_run
    from lensnet.serving.server import ModelServer, serve_in_thread

    served = tmp_path / "lenses"
    shutil.copytree(model_dir, served)
    batch = images(2, seed=9)

    def wait_for(versions: list[str], address: str) -> None:
        deadline = time.monotonic() + 30
        while [v["version"] for v in call(address)[1]["model_version_status"]] != versions:
            assert time.monotonic() < deadline, call(address)
            time.sleep(0.1)

    with serve_in_thread(ModelServer(served), poll_seconds=0.2) as base:
        address = f"{base}/v1/models/lenses"
        export_run(make_run(tmp_path / "run3", "cnn_small", seed=3), served)
        wait_for(["3", "2", "1"], address)
        status, body = call(f"{address}:predict", {"instances": batch.tolist()})
        assert status == 200
        np.testing.assert_allclose(body["predictions"], expected(served, 3, batch), atol=1e-6)
        shutil.rmtree(served / "1")
        wait_for(["3", "2"], address)
        assert call(f"{address}/versions/1:predict", {"instances": batch.tolist()})[0] == 404


@pytest.mark.slow
def test_image_outputs_are_served_as_nested_lists(tmp_path):
    from lensnet.serving.export import export_run
    from lensnet.serving.server import ModelServer, serve_in_thread

    run = make_image_run(tmp_path / "run", shape=SHAPE)
    export_run(run, tmp_path / "export" / "denoise")
    batch = (100.0 + 20.0 * np.random.default_rng(4).standard_normal((2, *SHAPE))).astype("float32")
    with serve_in_thread(ModelServer(tmp_path / "export" / "denoise"), poll_seconds=0) as base:
        status, body = call(f"{base}/v1/models/denoise:predict", {"instances": batch.tolist()})
        assert status == 200
        predictions = np.array(body["predictions"])
        assert predictions.shape == (2, *SHAPE)  # one (H, W, C) nested list per image
        reference = keras_outputs(run, batch)
        np.testing.assert_allclose(predictions, reference, atol=1e-4 * float(np.ptp(reference)))
        status, meta = call(f"{base}/v1/models/denoise/metadata")
        outputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
        assert [d["size"] for d in outputs["image"]["tensor_shape"]["dim"]] == ["-1", "16", "16", "1"]
