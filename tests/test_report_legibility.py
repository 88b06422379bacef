"""Legibility of the HTML report (issue 14): environment values formatted with their units, the case table's column
chooser, merged reports whose header counts agree with their rows, and the A/B view of a case measured in two runs.

Real reports (write_report) of synthetic runs written with tests/runfactory.py. The case table goes through
bench.analysis.report.case_table.case_view (html.case_table's rows plus default columns, counts and the A/B view);
until `_context` calls it, the fixture puts it in html.case_table's place (harmless once it does).
"""
from __future__ import annotations

import html as htmllib
import re
import sys
from pathlib import Path

import pytest

from bench.analysis.report import case_table, write_report
from bench.analysis.report import data as rdata
from bench.analysis.report import html as rhtml
from bench.analysis.report.methodology import format_value
from bench.results.store import load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runfactory import cpu_run, gpu_run, report_row, write_fixture_run  # noqa: E402
from test_report_browser import CHROMEDRIVER, CHROMIUM, browser  # noqa: E402,F401  (the browser fixture)

CPU = "Fixture Xeon 8480 (CPU)"
SLOWER = 1.10  # run B's latencies over run A's, for the A/B rows


def _text(page: str) -> str:
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _section(page: str, start: str, end: str) -> str:
    i = page.index(start)
    return page[i:page.index(end, i)]


@pytest.fixture(scope="module")
def case_view_in_report():
    with pytest.MonkeyPatch.context() as mp:
        if rhtml.case_table is not case_table.case_view:
            mp.setattr(rhtml, "case_table", case_table.case_view)
        yield


def slower_run(root: Path, run_id: str = "fixture-cpu-b") -> Path:
    """Some of cpu_run's cases again on the same box, SLOWER times slower, and one of them now timing out."""
    rows = []
    for base, level in (("evit-b0", "model"), ("block", "block")):
        for mixer in ("msla", "softmax"):
            for s in (512, 1024):
                a = report_row("x", "cpu-box", f"{base}:{mixer}", mixer, level, CPU, 1, s, s)
                rows.append(report_row(run_id, "cpu-box", f"{base}:{mixer}", mixer, level, CPU, 1, s, s,
                                       lat=a["latency_ms_median"] * SLOWER))
    rows.append(report_row(run_id, "cpu-box", "evit-b1:msla", "msla", "model", CPU, 1, 512, 512, status="timeout",
                           reason="case exceeded its 120 s timeout"))
    meta = dict(run_id=run_id, host="cpu-box", started_at="2025-11-28T07:00:00Z",
                env=dict(ram_total_gb=23.54, ram_available_gb=22.0, cpu_governor=None, cuda_available=False,
                         load_avg=[0.91796875, 0.5458984375, 0.23828125], cpu_physical_cores=2,
                         command=["run_bench.py", "--devices", "cpu", "--res", "512,1024"],
                         gpus=[dict(name="Fixture H100", memory_total_mb=81559.0, sm_clock_mhz=1980,
                                    power_limit_w=700.0, persistence_mode=True, temperature_c=41)],
                         packages=dict(torch="2.5.1", numpy="2.1.0"), free_memory_bytes=17179869184,
                         note='{"kind": "json text", "ok": true}'),
                health=dict(summary=dict(drift=0.0011, others_cores_max=0.092)),
                per_case_overhead_s=dict(median=0.0711, n=4), wall_s=8.12)
    return write_fixture_run(root / run_id, rows, meta, seed=3)


@pytest.fixture(scope="module")
def merged(tmp_path_factory, case_view_in_report):
    """cpu_run, the slower re-run of part of it, and gpu_run, merged into one report."""
    root = tmp_path_factory.mktemp("legibility")
    runs = [cpu_run(root), slower_run(root), gpu_run(root)]
    out = write_report(runs, root / "out" / "merged.html")
    return out, out.read_text(), rdata.merge_runs([load_run(p) for p in runs])


# ---------------------------------------------------------------------------------------------------------------
# environment values


@pytest.mark.parametrize("key, value, shown", [
    ("env.ram_total_gb", 23.54, "23.54 GiB"), ("gpus.0.memory_total_mb", 81559.0, "79.65 GiB"),
    ("free_memory_bytes", 2 ** 34, "16 GiB"), ("gpus.0.sm_clock_mhz", 1980, "1980 MHz"),
    ("cpu.freq_khz", 2_000_000, "2000 MHz"), ("gpu.power_limit_w", 700.0, "700 W"),
    ("gpu.temperature_c", 41, "41 °C"), ("wall_s", 8.12, "8.12 s"), ("per_case_overhead_s.median", 0.0711, "0.0711 s"),
    ("calibration.cpu|fp32|t1.gmacs_per_s", 48.84, "48.84 GMAC/s"), ("health.summary.drift", 0.0011, "0.11%"),
    ("health.summary.others_cores_max", 0.092, "0.092 cores"), ("env.cpu_physical_cores", 2, "2 cores"),
    ("gpu.persistence_mode", True, "yes"), ("env.cuda_available", False, "no"),
    ("env.cpu_governor", None, "not recorded"), ("env.gpus", [], "none"),
    ("config.models", ["evit-b1:msla", "block:msla"], "evit-b1:msla, block:msla"),
    ("env.command", ["run_bench.py", "--res", "512, 1024"], "run_bench.py --res '512, 1024'"),
    ("env.load_avg", [0.91796875, 0.5458984375, 0.23828125], "0.92, 0.55, 0.24 (1, 5, 15 min)"),
    ("note", '{"kind": "json text", "ok": true}', "kind: json text; ok: yes"),
    ("x", {"a": 1, "b": {"c": False}}, "a: 1; b: c: no"),
])
def test_environment_value_formats(key, value, shown):
    assert format_value(key, value) == shown


def test_environment_section_formatted_with_units(merged):
    _, page, _ = merged
    env = _text(_section(page, '<section id="methodology">', "</section>"))
    for shown in ("23.54 GiB", "79.65 GiB", "16 GiB", "1980 MHz", "700 W", "41 °C", "8.12 s", "0.11%",
                  "0.0711 s", "persistence_mode yes", "cuda_available no", "cpu_governor not recorded",
                  "0.92, 0.55, 0.24 (1, 5, 15 min)", "run_bench.py --devices cpu --res 512,1024",
                  "2000 MHz", "10 iterations", "40 samples", "kind: json text; ok: yes"):
        assert shown in env, shown
    for raw in ("{'", '{"', "['", "True", "False", "None", "0.91796875", "81559"):  # no dict, list or repr dumps
        assert raw not in env, raw
    # every number of a key that names its unit is shown with it
    for key, value in re.findall(r"<dt>([^<]*_(?:gb|mb|bytes|mhz|w|s|c))</dt><dd>([^<]*)</dd>",
                                 _section(page, '<section id="methodology">', "</section>")):
        assert re.search(r"(GiB|MHz|W|s|°C)$", htmllib.unescape(value)), (key, value)


# ---------------------------------------------------------------------------------------------------------------
# the column chooser


def _headers(page: str) -> list[tuple[str, bool]]:
    """(data-col, hidden) of each header of the case table."""
    head = _section(page, '<table id="cases">', "</thead>")
    tags = re.findall(r"<th ([^>]*)>", head)
    return [(re.search(r'data-col="([^"]+)"', t).group(1), re.search(r'(^| )hidden( |$)', t) is not None)
            for t in tags]


def test_column_chooser_defaults_and_every_column(merged):
    _, page, m = merged
    chooser = _section(page, '<details id="column-chooser">', "</details>")
    boxes = re.findall(r'<input type="checkbox" data-col="([^"]+)" data-default="([01])"( checked)?>', chooser)
    all_cols = [c for c, *_ in rhtml.TABLE_COLUMNS]
    assert [c for c, _, _ in boxes] == all_cols  # every column can be shown
    defaults = [c for c, d, checked in boxes if d == "1"]
    assert defaults == [c for c, d, checked in boxes if checked]
    assert set(defaults) == set(case_table.default_columns(m)) == {"run_id", "host", *case_table.DEFAULT_COLUMNS}
    assert len(defaults) <= 16 < len(all_cols)
    heads = _headers(page)
    assert [c for c, _ in heads] == all_cols
    assert [c for c, hidden in heads if not hidden] == defaults
    n_rows = _section(page, '<table id="cases">', "</table>").count('<tr class="st-')
    assert n_rows == len(m.results) and page.count('data-col="reason"') == n_rows + 2  # header, checkbox, cells
    assert re.search(r"Columns \(<span id=\"column-count\">%d</span> of %d shown\)" % (len(defaults), len(all_cols)),
                     chooser)
    assert 'id="columns-all"' in chooser and 'id="columns-default"' in chooser


def test_one_run_leaves_the_run_column_out(tmp_path, case_view_in_report):
    run = write_fixture_run(tmp_path / "one", [report_row("one", "h", f"block:{x}", x, "block", CPU, 1, 512, 512)
                                               for x in ("msla", "softmax")], meta=dict(run_id="one"))
    page = write_report([run], tmp_path / "one.html").read_text()
    shown = [c for c, hidden in _headers(page) if not hidden]
    assert shown == [c for c in case_table.DEFAULT_COLUMNS]
    assert 'id="ab"' not in page  # nothing measured twice


# ---------------------------------------------------------------------------------------------------------------
# merged header counts


def test_merged_header_counts_agree_with_the_rows(merged):
    _, page, m = merged
    header = _section(page, '<div class="sub" id="header-counts">', "</div>")
    num = {k: int(re.search(r'id="header-%s">(\d+)<' % k, header).group(1)) for k in ("rows", "ok", "distinct",
                                                                                         "used")}
    table = _section(page, '<table id="cases">', "</table>")
    statuses = re.findall(r'<td class="[^"]*" data-col="status"[^>]*>([^<]*)</td>', table)
    assert num["rows"] == table.count('<tr class="st-') == len(statuses) == len(m.results)
    assert num["ok"] == statuses.count("ok") == int((m.results["status"] == "ok").sum())
    pills = {s: int(n) for s, n in re.findall(r'<span class="pill" data-status="([^"]+)">[^<]*: (\d+)</span>', header)}
    assert sum(pills.values()) == num["rows"] and pills["ok"] == num["ok"]
    assert pills == {s: statuses.count(s) for s in set(statuses)}
    assert num["distinct"] == len(m.results.drop_duplicates(list(rdata.CASE_KEY)))
    assert num["used"] == len(m.ok) == num["ok"] - len(m.ab[m.ab["status_a"].eq("ok") & m.ab["status_b"].eq("ok")])
    # the status filter offers the same counts
    for s, n in pills.items():
        assert f'<option value="{s}">{s} ({n})</option>' in page


# ---------------------------------------------------------------------------------------------------------------
# A/B


def test_two_runs_of_a_case_are_side_by_side(merged):
    _, page, m = merged
    ab = m.ab
    assert len(ab) == 9 and set(ab["run_a"]) == {"fixture-cpu"} and set(ab["run_b"]) == {"fixture-cpu-b"}
    ok = ab[ab["status_b"] == "ok"]
    assert len(ok) == 8
    assert (ok["b_ms"] / ok["a_ms"]).round(9).eq(SLOWER).all() and ok["ratio"].round(9).eq(SLOWER).all()
    # the CI bootstraps the fixture's samples (drawn around each stored median, 2% spread): clear of 1, near 1.10
    assert (ok["ci_method"] == "bootstrap").all() and (ok["ci_low"] > 1.05).all() and (ok["ci_high"] < 1.15).all()
    timed_out = ab[ab["status_b"] == "timeout"].iloc[0]
    assert timed_out["model"] == "evit-b1:msla" and timed_out["status_a"] == "ok" and timed_out["ratio"] != \
        timed_out["ratio"]  # nan: no ratio
    sec = _section(page, '<h3 id="ab">', "</table>")
    rows = re.findall(r"<tr class=\"ab-[^\"]*\">(.*?)</tr>", sec, re.S)
    assert len(rows) == 9
    r = next(_text(x) for x in rows if "block:msla" in x and "512x512" in x)
    a = ok[(ok["model"] == "block:msla") & (ok["resolution"] == "512x512")].iloc[0]
    for shown in (f"{rhtml.fnum(a['a_ms'])} ms", f"{rhtml.fnum(a['b_ms'])} ms", "1.10×",
                  f"[{rhtml.fnum(a['ci_low'])}, {rhtml.fnum(a['ci_high'])}]",
                  f"[{rhtml.fnum(a['a_ci_low'])}, {rhtml.fnum(a['a_ci_high'])}] ms", "B slower by 10.0%",
                  "fixture-cpu", "fixture-cpu-b"):
        assert shown in r, (shown, r)
    assert "no ratio (A: ok, B: timeout)" in _text(sec)
    assert 'href="#ab"' in page
    assert any("A/B table" in n for n in m.notes)


def test_ab_of_same_samples_is_not_resolved(tmp_path):
    rows = [report_row("r", "h", "block:msla", "msla", "block", CPU, 1, 512, 512)]
    a = write_fixture_run(tmp_path / "a", [dict(rows[0], run_id="a")], meta=dict(run_id="a"), seed=5)
    b = write_fixture_run(tmp_path / "b", [dict(rows[0], run_id="b")], meta=dict(run_id="b"), seed=5)
    m = rdata.merge_runs([load_run(a), load_run(b)])
    assert len(m.ab) == 1 and m.ab["ratio"].iloc[0] == pytest.approx(1.0)
    from bench.analysis.report import two_runs

    v = two_runs.view(m)
    assert v["rows"][0]["reading"].startswith("no difference resolved") and v["summary"] == "1 not resolved"
    assert rdata.merge_runs([load_run(a)]).ab.empty


# ---------------------------------------------------------------------------------------------------------------
# in Chromium: the table at 1400 px


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="no Chromium or chromedriver (apt-get install -y chromium chromium-driver)")
def test_case_table_fits_1400px_and_columns_toggle(merged, browser):
    """At 1400 px the default columns fit (no sideways scrolling); a column ticked in the chooser is shown."""
    from test_report_browser import _severe, artifacts_dir

    out, page, _ = merged
    n_default = sum(not hidden for _, hidden in _headers(page))
    d = browser
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    try:
        d.get(out.as_uri())
        size = ("const w = document.getElementById('cases-wrap');"
                "return [w.scrollWidth, w.clientWidth, document.documentElement.scrollWidth, window.innerWidth];")
        sw, cw, page_w, vw = d.execute_script(size)
        assert vw == 1400 and sw <= cw and page_w <= vw, (sw, cw, page_w, vw)
        th = "return document.querySelector(\"#cases th[data-col='reason']\").offsetWidth"
        assert d.execute_script(th) == 0
        d.execute_script("document.getElementById('column-chooser').scrollIntoView()")
        d.find_element("css selector", "#column-chooser summary").click()
        d.find_element("css selector", "#column-chooser input[data-col='reason']").click()
        assert d.execute_script(th) > 0
        shown, rows = d.execute_script(
            "const i = Array.from(document.querySelectorAll('#cases thead th')).findIndex("
            "  h => h.dataset.col === 'reason');"
            "const rows = Array.from(document.querySelectorAll('#cases tbody tr'));"
            "return [rows.filter(r => !r.cells[i].hidden && r.cells[i].offsetWidth > 0).length, rows.length];")
        assert shown == rows > 0
        assert d.find_element("id", "column-count").text == str(n_default + 1)
        d.save_screenshot(str(artifacts_dir() / "cases-1400.png"))
        d.find_element("id", "columns-all").click()
        assert d.find_element("id", "column-count").text == str(len(rhtml.TABLE_COLUMNS))
        d.find_element("id", "columns-default").click()
        assert d.execute_script(th) == 0 and d.execute_script(size)[0] <= cw
        assert _severe(d) == []
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
