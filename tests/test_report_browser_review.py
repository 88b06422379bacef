"""The design-review sections over a real run, in headless Chromium (issue 14): the four mixers alone measured and
profiled here, then the report loaded from a file:// URL. Checks that the decision table and the budget view
render with the run's values, that a decision row's "profile" link opens that case's entry, that every image
decodes and the console stays clean. Screenshots go to $ARTIFACTS_DIR/report-browser/review*.png."""
from __future__ import annotations

import shutil

import pytest

from bench.analysis.report import decision as dec
from bench.analysis.report import write_report
from bench.analysis.report.data import load_runs, merge_runs
from tests.test_report_browser import _no_alert, _screenshot, _severe, artifacts_dir, browser  # noqa: F401
from tests.test_report_browser import pytestmark  # noqa: F401 - the same skips without Chromium

MIXERS = "block:msla,block:relu-linear,block:softmax,block:large-kernel,evit-b0:msla"  # + a model for the budgets


@pytest.fixture(scope="module")
def review_report(tmp_path_factory):
    import bench

    root = tmp_path_factory.mktemp("review")
    # budget: the page renders whatever the groups decided ("not resolved" included), so the groups need a few
    # processes each, not the default 480 s; 20 s leaves the second group its first process (~5 s each, the
    # profiled one) on a slow machine (a group refused before its first process would be measured case by case,
    # without pairs: the 12 pairs below would be missing)
    run = bench.run(MIXERS, level="both", res="64,128", min_time=0.05, max_time=0.3, calibrate=False,
                    profile=True, budget=20, out=root / "results", report=False)
    out = write_report([run.path], root / "reports" / "review.html", budgets=(1, 33))
    return run, out


def test_review_sections_in_chromium(browser, review_report):  # noqa: F811
    run, out = review_report
    art = artifacts_dir()
    shutil.copy(out, art / "review.html")
    d = browser
    d.get(out.as_uri())
    _no_alert(d)
    m = merge_runs(load_runs([run.path]))
    groups = dec.decisions(m)
    assert len(groups) == 2  # one per resolution: the four blocks side by side

    mixer_rows = d.execute_script(
        "return Array.from(document.querySelectorAll('#decision .decision-mixer')).map("
        "  r => Array.from(r.cells).map(c => c.textContent.trim()));")
    assert len(mixer_rows) == 8 and all(r[2] and r[3].startswith("[") for r in mixer_rows), mixer_rows
    pairs = d.find_elements("css selector", "#decision .decision-pair")
    assert len(pairs) == 12 and all(p.get_attribute("data-verdict") in ("faster", "tied", "not resolved", "flagged")
                                    for p in pairs)
    heads = [h.text for h in d.find_elements("css selector", "#budgets h3.budget")]
    fits = dec.budget_fits(m, (1.0, 33.0))
    assert sum(len(b["fits"]) + b["over"] for b in fits) == 4  # the model at two sizes, two budgets
    assert heads == [f"Within {b['budget']:g} ms: {len(b['fits'])} case{'s' if len(b['fits']) != 1 else ''} fit, "
                     f"{b['over']} do not" for b in fits]
    _screenshot(d, art / "review.png", full=False)

    links = d.find_elements("css selector", "#decision a.profile-link")
    assert len(links) == 8
    target = links[0].get_attribute("href").split("#", 1)[1]
    d.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", links[0])
    assert d.execute_script("const e = document.getElementById(arguments[0]); return !!e && e.open;", target)

    imgs = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.decode().then(() => [i.alt, i.naturalWidth],"
        "  () => [i.alt, 0]))).then(done);")
    assert imgs and all(w > 0 for _, w in imgs), imgs
    d.get(out.as_uri())
    _screenshot(d, art / "review-full.png", full=True)
    assert _severe(d) == []
