"""The dashboard in a real browser: headless Chromium (Debian's /usr/bin/chromium + chromedriver, driven by
Selenium; nothing is downloaded) loads the page, sorts by score, filters, opens a candidate, toggles the
overlay, marks it, exports the CSV and checks its content, moves the truth threshold, and saves a screenshot
under tests/artifacts/ (git-ignored; LENSNET_TEST_ARTIFACTS overrides).

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
            assert json.loads((results / "marks.json").read_text())["marks"]["c00015"]["mark"] == "lens"
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
            saved = wait_for(lambda: [p for p in downloads.glob("*.csv")], timeout=20)
            downloaded = list(csv.DictReader(io.StringIO(saved[0].read_text())))
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
