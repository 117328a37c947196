"""Only its user changes the marks, over real HTTP on 127.0.0.1: cross-origin, tokenless and Origin-less
POSTs are refused (403), a foreign Host header is refused (421, DNS rebinding) unless --allow-host names it, a
non-loopback bind needs the token on every request (the start-up URL's ?token= sets a cookie) and warns, a
body over the limit is 413, malformed bodies (invalid UTF-8, 100k-deep JSON, not an object) are one-line
400s, a damaged marks.json is one `error:` line at start, CSV cells that a spreadsheet would run are escaped,
and files follow the user's umask. lensnet.serve checks Host and warns on a non-loopback host too."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TOKEN, get, make_results, post, serve


def request(base: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """(status, headers, body) of a request sent exactly as given (Host included)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    sent = {"Host": f"{host}:{port}", **(headers or {})}
    if body or method == "POST":
        sent.setdefault("Content-Length", str(len(body)))
    for key, value in sent.items():
        if value is not None:
            connection.putheader(key, value)
    connection.endheaders()
    if body:
        connection.send(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def one_line_error(data: bytes) -> str:
    message = json.loads(data)["error"]
    assert "\n" not in message and message
    return message


def test_cross_origin_and_tokenless_posts_are_refused(tmp_path):
    results = make_results(tmp_path / "results", n=4)
    body = json.dumps({"id": "c00001", "mark": "lens"}).encode()
    with serve(results) as base:
        # The attack of the issue: a page on another origin posting text/plain (no CORS preflight).
        status, _, data = request(base, "POST", "/api/marks", body,
                                  {"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert status == 403 and "cross-origin" in one_line_error(data)
        assert post(base + "/api/marks", {"id": "c00001", "mark": "lens"}, {"Origin": "http://evil.example"})[0] == 403
        other_port = base.rsplit(":", 1)[0] + ":1"
        assert post(base + "/api/marks", {"id": "c00001", "mark": "lens"}, {"Origin": other_port})[0] == 403
        assert post(base + "/api/marks", {"id": "c00001", "mark": "lens"}, {"X-Lensnet-Token": None})[0] == 403
        assert post(base + "/api/marks", {"id": "c00001", "mark": "lens"}, {"X-Lensnet-Token": "guess"})[0] == 403
        status, _, data = request(base, "POST", "/api/marks", body,
                                  {"Content-Type": "application/json", "X-Lensnet-Token": TOKEN})
        assert status == 403 and "Origin" in one_line_error(data)  # no Origin, no Referer
        assert not (results / "marks.json").exists()
        # The page itself: same origin (or a Referer of it) and the token.
        assert post(base + "/api/marks", {"id": "c00001", "mark": "lens"}, {"Origin": None,
                                                                             "Referer": base + "/"})[0] == 200
        assert json.loads((results / "marks.json").read_text())["graders"]["default"]["c00001"]["mark"] == "lens"
        # The page carries this launch's token; reads need none on loopback.
        status, page = get(base + "/")
        assert status == 200 and TOKEN.encode() in page


def test_host_header_must_name_the_bound_address(tmp_path):
    results = make_results(tmp_path / "results", n=3)
    with serve(results) as base:
        for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
            status, _, data = request(base, "GET", "/api/results", headers={"Host": host})
            assert status == 421 and "--allow-host" in one_line_error(data)
        assert request(base, "GET", "/api/results", headers={"Host": None})[0] in (400, 421)  # h11 answers 400
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert request(base, "GET", "/api/results", headers={"Host": host})[0] == 200
    with serve(results, allow_hosts=["lens.lab.example"]) as base:
        assert request(base, "GET", "/api/results", headers={"Host": "lens.lab.example:8050"})[0] == 200
        assert request(base, "GET", "/api/results", headers={"Host": "evil.example"})[0] == 421


def test_non_loopback_bind_needs_the_token_on_every_request(tmp_path):
    """Served on 127.0.0.1 with the access rules of `--host 0.0.0.0`."""
    results = make_results(tmp_path / "results", n=3)
    with serve(results, host="0.0.0.0") as base:
        for path in ("/", "/api/results", "/files/thumbs/c00000.png", "/api/export.csv"):
            status, _, data = request(base, "GET", path)
            assert status == 403 and "token" in one_line_error(data)
        assert request(base, "GET", "/?token=wrong")[0] == 403
        status, headers, page = request(base, "GET", f"/?token={TOKEN}")
        cookie = headers["set-cookie"].split(";")[0]
        assert status == 200 and "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert request(base, "GET", "/api/results", headers={"Cookie": cookie})[0] == 200
        assert request(base, "GET", "/files/thumbs/c00000.png", headers={"Cookie": cookie})[0] == 200


def test_non_loopback_host_prints_a_token_url_and_warns(tmp_path):
    results = make_results(tmp_path / "results", n=3)
    proc = subprocess.Popen([sys.executable, "-m", "lensnet.dashboard", str(results), "--host", "0.0.0.0",
                             "--port", "0"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stderr.readline(), proc.stderr.readline()]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert lines[0].startswith("warning: the dashboard listens on 0.0.0.0")
    assert "?token=" in lines[1] and "http://127.0.0.1:" in lines[1]
    assert "tensorflow" not in lines[0] + lines[1]


def test_bodies_are_bounded_and_malformed_ones_are_one_line_400s(tmp_path):
    results = make_results(tmp_path / "results", n=3)
    with serve(results) as base:
        headers = {"Origin": base, "X-Lensnet-Token": TOKEN, "Content-Type": "application/json"}
        status, _, data = request(base, "POST", "/api/marks", b"x" * (200 << 10), headers)
        assert status == 413 and "limit" in one_line_error(data)
        cases = {
            b'{"id": "c00001", "mark": "l\xff\xfe"}': "malformed JSON",
            b"[" * 30_000 + b"]" * 30_000: "malformed JSON",  # deeper than Python's recursion limit
            b"[1, 2]": "JSON object",
            b'{"id": "c00001", "mark": NaN}': "malformed JSON",
            b'{"id": "c00001", "mark": "lens", "grader": "../../etc"}': "grader",
        }
        for body, expected in cases.items():
            status, _, data = request(base, "POST", "/api/marks", body, headers)
            assert status == 400 and expected in one_line_error(data), body[:40]
        status, _, data = request(base, "GET", "/api/marks")
        assert status == 405 and one_line_error(data)
        status, _, data = request(base, "GET", "/no/such/page")
        assert status == 404 and one_line_error(data)
        assert request(base, "GET", "/api/cutout/nope")[0] == 404


@pytest.mark.parametrize("content", ["{not json", '{"graders": {"ann": {"c00001": "lens"}}}', "[" * 100_000])
def test_damaged_marks_json_is_one_error_line(tmp_path, content):
    results = make_results(tmp_path / "results", n=3)
    (results / "marks.json").write_text(content)
    proc = subprocess.run([sys.executable, "-m", "lensnet.dashboard", str(results), "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "marks.json" in lines[0]


def test_csv_export_escapes_formulas(tmp_path):
    results = make_results(tmp_path / "results", n=3)
    table = (results / "candidates.csv").read_text().splitlines()
    rows = list(csv.reader(table))
    rows[1][1] = '=HYPERLINK("http://evil.example","x")'
    rows[2][1] = "@SUM(A1)"
    rows[3][1] = "-2+3"
    rows[3][9] = "-0.5"  # a number stays a number
    with open(results / "candidates.csv", "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    with serve(results) as base:
        exported = list(csv.DictReader(io.StringIO(get(base + "/api/export.csv")[1].decode())))
    assert [r["source"] for r in exported] == ["'=HYPERLINK(\"http://evil.example\",\"x\")", "'@SUM(A1)", "'-2+3"]
    assert exported[2]["finder_score"] == "-0.5"


def test_files_follow_the_umask(tmp_path):
    from lensnet.core.fileio import write_text

    results = make_results(tmp_path / "results", n=3)
    old = os.umask(0o002)
    try:
        write_text(tmp_path / "group.txt", "x")
        with serve(results) as base:
            assert post(base + "/api/marks", {"id": "c00001", "mark": "unsure", "grader": "ann"})[0] == 200
    finally:
        os.umask(old)
    assert (tmp_path / "group.txt").stat().st_mode & 0o777 == 0o664
    assert (results / "marks.json").stat().st_mode & 0o777 == 0o664


def test_serve_checks_host_and_warns_off_loopback(tmp_path):
    from lensnet.serving.export import export_run
    from lensnet.serving.server import ModelServer, serve_in_thread
    from lensnet.survey.synthetic import peak_finder_run

    old = os.umask(0o022)
    try:
        export_run(peak_finder_run(tmp_path / "run", 16), tmp_path / "export" / "peak")
    finally:
        os.umask(old)
    version = tmp_path / "export" / "peak" / "1"
    assert version.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700: a serving container can read it
    with serve_in_thread(ModelServer(tmp_path / "export" / "peak"), poll_seconds=0) as base:
        assert request(base, "GET", "/v1/models/peak")[0] == 200
        status, _, data = request(base, "GET", "/v1/models/peak", headers={"Host": "evil.example"})
        assert status == 421 and one_line_error(data)
    proc = subprocess.Popen([sys.executable, "-m", "lensnet.serve", "--model", str(tmp_path / "export" / "peak"),
                             "--host", "0.0.0.0", "--port", "0"], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        deadline, warned = time.monotonic() + 120, False
        while time.monotonic() < deadline and not warned:
            line = proc.stderr.readline()
            if not line:
                break
            warned = line.startswith("warning: lensnet.serve listens on 0.0.0.0")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert warned


def test_results_and_truth_metrics(tmp_path):
    """The truth catalogue: lenses a candidate holds are found, the rest are missed; candidates get labels."""
    results = make_results(tmp_path / "results", n=4)  # boxes x k..k+16, y 0..16 in tile.fits
    truth = tmp_path / "truth.csv"
    truth.write_text("id,kind,ra,dec,x,y,is_lens,theta_e_arcsec,file\n"
                     "l0,lens,1,2,3.5,8,1,1.2,tile.fits\n"  # in candidates 0-3
                     "l1,lens,1,2,300,300,1,2.0,tile.fits\n"  # in none
                     "g0,galaxy,1,2,19.5,4,0,,tile.fits\n")
    with serve(results, truth=truth) as base:
        data = json.loads(get(base + "/api/results")[1])
    assert data["truth"]["lenses"] == 2 and data["truth"]["found"] == 1
    assert [m["id"] for m in data["truth"]["missed"]] == ["l1"]
    assert Path(tmp_path / "results" / "candidates.csv").is_file()
