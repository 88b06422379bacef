"""The report in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium.

Loads the report from a file:// URL and checks: no console errors, every image decodes, the table filter, status
filter and sorting work, no injected element or alert from crafted names. Saves screenshots (viewport and full
page) and the report itself to $ARTIFACTS_DIR/report-browser/ (default ci-artifacts/report-browser/): look at them.

Skips (with the reason) where Chromium, chromedriver or selenium are absent; CI installs them.
"""
from __future__ import annotations

import base64
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the fixture runs (runfactory) and report (test_report)

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install -y chromium chromium-driver)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver (apt-get install -y chromium-driver)"),
]


def artifacts_dir() -> Path:
    d = Path(os.environ.get("ARTIFACTS_DIR") or ROOT / "ci-artifacts") / "report-browser"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download anything
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1440,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.set_capability("unhandledPromptBehavior", "ignore")  # an injected alert() must stay visible to the test
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"an alert() ran in the report: {text!r}")


def _visible_rows(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#cases tbody tr')).filter(r => !r.hidden)"
        ".map(r => r.textContent);")


def _screenshot(driver, path: Path, full: bool) -> None:
    if not full:
        driver.save_screenshot(str(path))
        return
    m = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = m.get("cssContentSize") or m["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


def test_report_in_chromium(browser, tmp_path_factory):
    from test_report import fixture_report

    out, _ = fixture_report(tmp_path_factory.mktemp("report"))  # rendered once per session
    art = artifacts_dir()
    shutil.copy(out, art / "report.html")
    shutil.copy(out.with_suffix(".md"), art / "report.md")

    d = browser
    d.get(out.as_uri())
    _no_alert(d)
    assert d.title.startswith("Token-mixer benchmark")

    # every image decodes
    imgs = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.decode().then(() => [i.alt, i.naturalWidth],"
        "  () => [i.alt, 0]))).then(done);")
    assert len(imgs) >= 5, imgs
    assert all(w > 0 for _, w in imgs), imgs

    _screenshot(d, art / "report.png", full=False)
    _screenshot(d, art / "report-full.png", full=True)

    # the filter box: type, the visible rows change and all contain the words
    rows0 = _visible_rows(d)
    assert len(rows0) > 20
    box = d.find_element("id", "case-filter")
    box.send_keys("softmax 2048")
    rows1 = _visible_rows(d)
    assert 0 < len(rows1) < len(rows0)
    assert all("softmax" in r and "2048" in r for r in rows1)
    assert d.find_element("id", "row-count").text == f"{len(rows1)} of {len(rows0)} rows"
    box.clear()
    box.send_keys("timeout")
    rows2 = _visible_rows(d)
    assert rows2 and all("timeout" in r for r in rows2)
    box.clear()
    box.send_keys("x")  # clear() sends no input event in every driver: type and delete
    box.send_keys("\b")
    assert len(_visible_rows(d)) == len(rows0)

    # the status filter: not ok rows only
    from selenium.webdriver.support.ui import Select
    Select(d.find_element("id", "status-filter")).select_by_value("!ok")
    bad = _visible_rows(d)
    assert bad and len(bad) < len(rows0)
    Select(d.find_element("id", "status-filter")).select_by_value("")

    # sorting by median latency: ascending, blanks last
    d.find_element("css selector", "#cases th[data-col='latency_ms_median']").click()
    vals = d.execute_script(
        "const i = Array.from(document.querySelectorAll('#cases thead th')).findIndex("
        "  h => h.dataset.col === 'latency_ms_median');"
        "return Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.cells[i].dataset.v);")
    nums = [float(v) for v in vals if v]
    assert nums == sorted(nums) and all(v == "" for v in vals[len(nums):])

    assert _severe(d) == []


def test_crafted_names_inject_nothing(browser, tmp_path):
    from runfactory import crafted_run

    from bench.analysis.report import write_report

    out = write_report([crafted_run(tmp_path)], tmp_path / "crafted.html")
    d = browser
    d.get(out.as_uri())
    _no_alert(d)
    # no element made from the crafted text: our two scripts, only our data-URI images
    assert d.execute_script("return document.scripts.length") == 2
    srcs = d.execute_script("return Array.from(document.images).map(i => i.getAttribute('src').slice(0, 22))")
    assert all(s.startswith("data:image/png;base64") for s in srcs), srcs
    assert d.execute_script("return document.querySelectorAll('[onerror], img[src=\"x\"]').length") == 0
    # the crafted text is shown as text
    body = d.find_element("tag name", "body").text
    assert "<script>alert(1)</script>" in body and '"><img src=x onerror=alert(1)>' in body
    d.find_element("id", "case-filter").send_keys("evil")
    assert len(_visible_rows(d)) == 1
    _no_alert(d)
    assert _severe(d) == []
