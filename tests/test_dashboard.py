"""lensnet.dashboard over real HTTP: results and files are served, path traversal is refused (404/400), marks
are saved atomically and survive a restart, CSV export of filtered and marked candidates, --run view, and a
missing or damaged results folder is one `error:` line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from helpers import ROOT, get, make_results, post, raw_get, serve


def test_pages_files_and_path_traversal(tmp_path):
    results = make_results(tmp_path / "results")
    (tmp_path / "secret.txt").write_text("outside")
    (results / "link").symlink_to(tmp_path / "secret.txt")
    with serve(results) as base:
        status, page = get(base + "/")
        assert status == 200 and b"/static/app.js" in page and b"http" not in page.replace(b"http-equiv", b"")
        assert get(base + "/static/app.js")[0] == 200
        assert get(base + "/static/../dashboard.py")[0] == 404
        status, body = get(base + "/api/results")
        data = json.loads(body)
        assert status == 200 and len(data["rows"]) == 30 and data["has_labels"]
        assert "finder_score" in data["numeric"] and "thumbnail" not in data["numeric"]
        status, png = get(base + "/files/" + data["rows"][0]["thumbnail"])
        assert status == 200 and png[:4] == b"\x89PNG"
        for path in ("/files/../secret.txt", "/files/..%2Fsecret.txt", "/files/%2e%2e/secret.txt",
                     "/files//etc/passwd", "/files/link", "/files/thumbs", "/files/nothing.png",
                     "/run/files/x", "/api/run"):
            assert raw_get(base, path) in (400, 404), path


def test_marks_survive_a_restart_and_export_csv(tmp_path):
    results = make_results(tmp_path / "results")
    with serve(results) as base:
        assert post(base + "/api/marks", {"id": "c00003", "mark": "lens"})[0] == 200
        assert post(base + "/api/marks", {"id": "c00005", "mark": "unsure"})[0] == 200
        assert post(base + "/api/marks", {"id": "c00005", "mark": None})[1]["marks"] == {"default": {"c00003": "lens"}}
        assert post(base + "/api/marks", {"id": "nope", "mark": "lens"})[0] == 400
        assert post(base + "/api/marks", {"id": "c00003", "mark": "maybe"})[0] == 400
    assert not list(results.glob(".marks.json*"))  # written through a temporary name, nothing left over
    with serve(results) as base:
        data = json.loads(get(base + "/api/results")[1])
        assert data["marks"] == {"default": {"c00003": "lens"}}
        status, body = get(base + "/api/export.csv?marked=1")
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert status == 200 and [(r["id"], r["mark"]) for r in rows] == [("c00003", "lens")]
        rows = list(csv.DictReader(io.StringIO(get(base + "/api/export.csv?ids=c00009,c00001")[1].decode())))
        assert [r["id"] for r in rows] == ["c00009", "c00001"] and rows[0]["finder_score"]


def test_run_view(tmp_path):
    results = make_results(tmp_path / "results")
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"auc": 0.93}}))
    (run / "run.json").write_text(json.dumps({"task": "lens_finding", "model": "cnn_small", "status": "finished"}))
    (run / "plots" / "roc.png").write_bytes((results / "thumbs" / "c00000.png").read_bytes())
    (run / "plots" / "sample_predictions.png").write_bytes((results / "thumbs" / "c00001.png").read_bytes())
    with serve(results, run) as base:
        data = json.loads(get(base + "/api/run")[1])
        assert data["metrics"]["test"]["auc"] == 0.93
        assert data["plots"] == ["plots/roc.png"] and data["samples"] == ["plots/sample_predictions.png"]
        assert get(base + "/run/files/plots/roc.png")[0] == 200
        assert get(base + "/run/files/run.json")[0] == 404  # only images: never checkpoints or configs
        assert raw_get(base, "/run/files/../results/candidates.csv") in (400, 404)


@pytest.mark.parametrize("damage", ["missing", "no_table", "bad_json", "short_row"])
def test_missing_or_damaged_results_is_one_error_line(tmp_path, damage):
    results = tmp_path / "results"
    if damage != "missing":
        make_results(results, n=3)
    if damage == "no_table":
        (results / "candidates.csv").unlink()
    elif damage == "bad_json":
        (results / "pipeline.json").write_text("{not json")
    elif damage == "short_row":
        with open(results / "candidates.csv", "a") as handle:
            handle.write("c9,only,three\n")
    proc = subprocess.run([sys.executable, "-m", "lensnet.dashboard", str(results), "--port", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
