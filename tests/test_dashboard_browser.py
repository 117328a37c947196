"""The dashboard in a real browser: headless Chromium (Debian's /usr/bin/chromium + chromedriver, driven by
Selenium; nothing is downloaded) loads the page, sorts by score, filters, opens a candidate, toggles the
overlay, marks it, exports the CSV and checks its content, moves the truth threshold, and saves a screenshot
under tests/artifacts/ (git-ignored; LENSNET_TEST_ARTIFACTS overrides). Then: vetting by keyboard (grades,
next/previous, undo, progress, a second grader and the agreement table), the orientation of the cutout (a
marked north-east corner is drawn top left, with N/E arrows), and a page on another origin that tries to
change a mark (refused; marks.json untouched).

CI (`CI` set) never skips this test: a missing Chromium fails it. `.ci/run` installs Chromium with apt.
Locally, without Chromium, it skips with the reason; install with `apt-get install -y chromium chromium-driver`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, make_results

CHROMIUM = os.environ.get("LENSNET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LENSNET_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser(download_dir: Path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() or shutil.which(p))]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (requirements.txt)")
    if missing:
        reason = f"browser test needs {', '.join(missing)} (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def finished_download(folder: Path) -> Path | None:
    """The downloaded CSV once Chromium has finished it: while a download runs, Chromium keeps an empty
    placeholder under the final name next to a .crdownload file, so a bare glob can read nothing."""
    if list(folder.glob("*.crdownload")):
        return None
    done = [p for p in folder.glob("*.csv") if p.stat().st_size > 0]
    return done[0] if done else None


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception:  # noqa: BLE001  (the page is still changing)
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the page")
        time.sleep(0.1)


def test_dashboard_in_headless_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from lensnet.core.http import app_in_thread
    from lensnet.survey.dashboard import Results, create_app

    results = make_results(tmp_path / "results", n=30)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    artifacts = Path(os.environ.get("LENSNET_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    driver = browser(downloads)
    try:
        with app_in_thread(create_app(Results(results))) as base:
            driver.get(base + "/")
            count = driver.find_element(By.ID, "count")
            wait_for(lambda: count.text.startswith("30 of 30"))

            def first_ids(n: int = 3) -> list[str]:
                return [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, ".card")[:n]]

            # Sort by finder score, high first, then low first.
            Select(driver.find_element(By.ID, "sort-column")).select_by_value("finder_score")
            Select(driver.find_element(By.ID, "sort-dir")).select_by_value("desc")
            wait_for(lambda: first_ids() == ["c00029", "c00028", "c00027"])
            Select(driver.find_element(By.ID, "sort-dir")).select_by_value("asc")
            wait_for(lambda: first_ids() == ["c00000", "c00001", "c00002"])
            # Filter: finder score >= 0.5 leaves the top half.
            Select(driver.find_element(By.ID, "filter-column")).select_by_value("finder_score")
            driver.find_element(By.ID, "filter-min").send_keys("0.5")
            wait_for(lambda: count.text.startswith("15 of 30") and first_ids(1) == ["c00015"])
            # Overlay on and off.
            image = lambda: driver.find_element(By.CSS_SELECTOR, ".card img").get_attribute("src")  # noqa: E731
            assert "/files/thumbs/c00015.png" in image()
            driver.find_element(By.ID, "overlay-toggle").click()
            wait_for(lambda: "/files/overlays/c00015.gradcam.png" in image())
            # Open the candidate: full-size image, its maps, its sky position.
            driver.find_element(By.CSS_SELECTOR, '.card[data-id="c00015"]').click()
            detail = driver.find_element(By.ID, "detail")
            wait_for(lambda: detail.is_displayed())
            assert "RA 150.015000" in driver.find_element(By.ID, "detail-sky").text
            assert driver.find_elements(By.CSS_SELECTOR, "#detail-images img.detail-map")
            # the images load after the panel shows: wait for them (a loaded machine takes a while)
            wait_for(lambda: driver.execute_script(
                "return [...document.querySelectorAll('#detail-images img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"))
            # Mark it as a lens: saved on disk at once.
            driver.find_element(By.CSS_SELECTOR, '.mark-btn[data-mark="lens"]').click()
            wait_for(lambda: driver.find_element(By.ID, "detail-mark").text == "marked: lens")
            assert json.loads((results / "marks.json").read_text())["graders"]["default"]["c00015"]["mark"] == "lens"
            driver.save_screenshot(str(artifacts / "dashboard-detail.png"))
            driver.find_element(By.ID, "detail-close").click()
            wait_for(lambda: not detail.is_displayed())
            wait_for(lambda: "mark-lens" in driver.find_element(By.CSS_SELECTOR, '.card[data-id="c00015"]')
                     .get_attribute("class"))
            # Export the filtered list: the link the page built, and the file the browser downloads.
            link = driver.find_element(By.ID, "export-filtered")
            with urllib.request.urlopen(link.get_attribute("href")) as response:
                rows = list(csv.DictReader(io.StringIO(response.read().decode())))
            assert [r["id"] for r in rows] == [f"c{k:05d}" for k in range(15, 30)]
            assert rows[0]["mark"] == "lens" and all(float(r["finder_score"]) >= 0.5 for r in rows)
            link.click()
            saved = wait_for(lambda: finished_download(downloads), timeout=20)
            downloaded = list(csv.DictReader(io.StringIO(saved.read_text())))
            assert [r["id"] for r in downloaded] == [r["id"] for r in rows]
            driver.save_screenshot(str(artifacts / "dashboard.png"))
            # Truth metrics: the confusion matrix follows the threshold.
            driver.find_element(By.ID, "tab-metrics").click()
            Select(driver.find_element(By.ID, "metric-column")).select_by_value("finder_score")
            driver.execute_script("const t = document.getElementById('threshold'); t.value = '0.9';"
                                  "t.dispatchEvent(new Event('input'));")
            table = Results(results).rows
            above = [r for r in table if float(r["finder_score"]) >= 0.9]
            tp = sum(r["label"] == "1" for r in above)
            wait_for(lambda: driver.find_element(By.ID, "cm-tp").text == str(tp))
            assert driver.find_element(By.ID, "cm-fp").text == str(len(above) - tp)
            assert driver.find_element(By.ID, "auc").text.startswith("AUC ")
            driver.save_screenshot(str(artifacts / "dashboard-metrics.png"))
    finally:
        driver.quit()
    assert (artifacts / "dashboard.png").read_bytes()[:4] == b"\x89PNG"


def _artifacts() -> Path:
    artifacts = Path(os.environ.get("LENSNET_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def _cutouts(results: Path, n: int, corner: bool = False) -> None:
    """Raw g, r, i cutouts (16 px, noise) with a standard WCS (east -x, north +y, 0.2"/px); with `corner`,
    candidate 0 has a bright red source in its north-east corner: array row 15 (north), column 0 (east)."""
    import numpy as np

    rng = np.random.default_rng(1)
    (results / "cutouts").mkdir(exist_ok=True)
    for k in range(n):
        pixels = rng.normal(0, 1, (16, 16, 3)).astype("float32")
        if corner and k == 0:
            pixels[13:16, 0:3] = [5.0, 20.0, 60.0]  # g, r, i: red
        np.save(results / "cutouts" / f"c{k:05d}.npy", pixels)
        (results / "cutouts" / f"c{k:05d}.json").write_text(json.dumps(
            {"bands": ["g", "r", "i"], "cd_arcsec": [[-0.2, 0.0], [0.0, 0.2]]}))


def test_keyboard_vetting_orientation_and_graders(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from lensnet.core.http import app_in_thread
    from lensnet.survey.dashboard import Results, create_app

    results = make_results(tmp_path / "results", n=6)
    _cutouts(results, 6, corner=True)
    driver = browser(tmp_path)
    marks = lambda grader="default": json.loads((results / "marks.json").read_text())["graders"].get(grader, {})  # noqa: E731
    try:
        with app_in_thread(create_app(Results(results))) as base:
            driver.get(base + "/")
            wait_for(lambda: driver.find_element(By.ID, "count").text.startswith("6 of 6"))
            Select(driver.find_element(By.ID, "sort-dir")).select_by_value("asc")
            progress = driver.find_element(By.ID, "progress")
            wait_for(lambda: progress.text == "default: 0 of 6 graded")
            body = driver.find_element(By.TAG_NAME, "body")
            body.send_keys(Keys.ARROW_RIGHT)  # opens the first candidate
            title = driver.find_element(By.ID, "detail-title")
            wait_for(lambda: title.text.startswith("c00000"))
            # Orientation: the north-east corner is top left, red (i -> R), with the compass drawn.
            wait_for(lambda: driver.find_element(By.ID, "detail-caption").text.endswith("north up, east left"))
            corners = driver.execute_script("""
                const c = document.getElementById('detail-canvas'), g = c.getContext('2d'), s = 24;
                const at = (x, y) => Array.from(g.getImageData(x, y, 1, 1).data).slice(0, 3);
                return {tl: at(s, s), tr: at(c.width - s, s), bl: at(s, c.height - 40),
                        br: at(c.width - 60, c.height - 60), size: [c.width, c.height]};""")
            assert corners["size"] == [384, 384]
            red, green, blue = corners["tl"]
            assert red > 200 and red > green > blue, corners
            for other in ("tr", "bl", "br"):
                assert sum(corners[other]) < sum(corners["tl"]) / 2, corners
            driver.save_screenshot(str(_artifacts() / "dashboard-vetting.png"))
            # Keyboard: grade, next, grade, previous, undo.
            body.send_keys("1")
            wait_for(lambda: marks().get("c00000", {}).get("mark") == "lens")
            body.send_keys(Keys.ARROW_RIGHT)
            wait_for(lambda: title.text.startswith("c00001"))
            body.send_keys("4")
            wait_for(lambda: marks().get("c00001", {}).get("mark") == "not_lens")
            body.send_keys("j", "2")
            wait_for(lambda: marks().get("c00002", {}).get("mark") == "probable")
            wait_for(lambda: progress.text == "default: 3 of 6 graded")
            body.send_keys("u")
            wait_for(lambda: "c00002" not in marks())
            wait_for(lambda: progress.text == "default: 2 of 6 graded")
            body.send_keys(Keys.ARROW_LEFT)
            wait_for(lambda: title.text.startswith("c00001"))
            body.send_keys("3")
            wait_for(lambda: marks().get("c00001", {}).get("mark") == "unsure")
            body.send_keys("u")
            wait_for(lambda: marks().get("c00001", {}).get("mark") == "not_lens")  # undo restores the old grade
            body.send_keys(Keys.ESCAPE)
            # A second grader: own marks, and the agreement table.
            grader = driver.find_element(By.ID, "grader")
            grader.clear()
            grader.send_keys("bob", Keys.ENTER)
            driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", grader)
            wait_for(lambda: progress.text == "bob: 0 of 6 graded")
            body.send_keys(Keys.ARROW_RIGHT)  # reopens the candidate last seen
            wait_for(lambda: title.text.startswith("c00001") and driver.find_element(By.ID, "detail").is_displayed())
            body.send_keys("1", "k", "1")
            wait_for(lambda: marks("bob") and len(marks("bob")) == 2)
            assert marks()["c00001"]["mark"] == "not_lens" and marks("bob")["c00001"]["mark"] == "lens"
            body.send_keys(Keys.ESCAPE)
            # Typing a filter then clicking a card opens it (the grid is not rebuilt under the click).
            driver.find_element(By.ID, "filter-text").send_keys("c00004")
            driver.find_element(By.CSS_SELECTOR, '.card[data-id="c00004"]').click()
            wait_for(lambda: title.text.startswith("c00004") and driver.find_element(By.ID, "detail").is_displayed())
            driver.find_element(By.ID, "detail-close").click()
            assert not [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
            driver.find_element(By.ID, "tab-metrics").click()
            table = driver.find_element(By.ID, "agreement")
            wait_for(lambda: "bob · default" in table.text)
            assert "2" in table.text and "50.0%" in table.text
    finally:
        driver.quit()


def test_a_page_on_another_origin_cannot_change_marks(tmp_path):
    """The attack of the issue, from a real page: text/plain POSTs (no CORS preflight) from another origin,
    even one that somehow knows the token and puts it in the query, and a fetch with the token header."""
    import functools
    import http.server
    import threading

    from selenium.webdriver.common.by import By

    from lensnet.core.http import Access, app_in_thread
    from lensnet.survey.dashboard import Results, create_app

    results = make_results(tmp_path / "results", n=3)
    access = Access("127.0.0.1", 0)
    driver = browser(tmp_path)
    evil = tmp_path / "evil"
    evil.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with app_in_thread(create_app(Results(results), access=access)) as base:
            target = base + "/api/marks"
            body = json.dumps({"id": "c00001", "mark": "lens"})
            (evil / "index.html").write_text(f"""<!doctype html><title>evil</title><body>
<form id="f" method="POST" action="{target}?token={access.token}" enctype="text/plain" target="sink">
<input name='{body[:-1]}, "x": "' value='"}}'></form><iframe name="sink"></iframe>
<script>
const results = [];
fetch("{target}?token={access.token}", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: '{body}'}}).then(() => results.push("no-cors sent"), (e) => results.push("no-cors " + e));
fetch("{target}", {{method: "POST",
  headers: {{"Content-Type": "application/json", "X-Lensnet-Token": "{access.token}"}}, body: '{body}'}})
  .then((r) => results.push("cors " + r.status), (e) => results.push("cors blocked"));
document.getElementById("f").submit();
setTimeout(() => {{ document.title = "done"; window.results = results; }}, 1500);
</script></body>""")
            driver.get(f"http://127.0.0.1:{other.server_address[1]}/index.html")
            wait_for(lambda: driver.title == "done")
            outcome = driver.execute_script("return window.results")
            assert "cors blocked" in outcome  # the preflight of the token header is never answered
            assert not (results / "marks.json").exists()
            # The same request from the dashboard's own page goes through.
            driver.get(base + "/")
            wait_for(lambda: driver.find_element(By.ID, "count").text.startswith("3 of 3"))
            status = driver.execute_async_script(f"""
                const done = arguments[arguments.length - 1];
                fetch("/api/marks", {{method: "POST", headers: {{"Content-Type": "application/json",
                  "X-Lensnet-Token": document.querySelector('meta[name="lensnet-token"]').content}}, body: '{body}'}})
                  .then((r) => done(r.status));""")
            assert status == 200
            assert json.loads((results / "marks.json").read_text())["graders"]["default"]["c00001"]["mark"] == "lens"
    finally:
        driver.quit()
        other.shutdown()


def test_truth_metrics_count_missed_lenses_and_say_na(tmp_path):
    """With a truth catalogue, a lens no candidate holds is a false negative at every threshold; with one
    class empty the AUC is "n/a", not 0.000."""
    from selenium.webdriver.common.by import By

    from lensnet.core.http import app_in_thread
    from lensnet.survey.dashboard import Results, create_app

    results = make_results(tmp_path / "results", n=4)  # boxes x k..k+16, y 0..16 of tile.fits
    rows = (results / "candidates.csv").read_text().splitlines()
    header = rows[0].split(",")
    drop = header.index("label")
    (results / "candidates.csv").write_text("\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != drop)
                                                      for r in rows) + "\n")
    truth = tmp_path / "truth.csv"
    truth.write_text("id,kind,ra,dec,x,y,is_lens,theta_e_arcsec,file\n"
                     "l0,lens,1,2,3.5,8,1,1.2,tile.fits\n"  # held by candidates 0-3: all are lenses
                     "l1,lens,150.3,2.2,300,300,1,2.0,tile.fits\n")  # held by none: missed
    driver = browser(tmp_path)
    try:
        with app_in_thread(create_app(Results(results, truth))) as base:
            driver.get(base + "/")
            wait_for(lambda: driver.find_element(By.ID, "count").text.startswith("4 of 4"))
            driver.find_element(By.ID, "tab-metrics").click()
            wait_for(lambda: "1 of 2 lenses in a candidate" in driver.find_element(By.ID, "truth-summary").text)
            assert driver.find_element(By.ID, "auc").text.startswith("AUC n/a")
            driver.execute_script("const t = document.getElementById('threshold'); t.value = '0';"
                                  "t.dispatchEvent(new Event('input'));")
            wait_for(lambda: driver.find_element(By.ID, "cm-tp").text == "4")
            assert driver.find_element(By.ID, "cm-fn").text == "1"  # the missed lens
            assert "l1" in driver.find_element(By.ID, "missed").text
    finally:
        driver.quit()
