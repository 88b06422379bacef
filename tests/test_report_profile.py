"""The report's "Where the time goes" section (issue 13) on real profiler output.

The profiled run (tests/runfactory.profiled_run) holds what bench.profiling measured on real registry models (block
mixers and evit-b0 at 128x128, 1 CPU thread), so every expected value here is computed in the test from that
run's profile.parquet, never typed in: which kind a sentence names, which rate it quotes, whether a roof exists.
Times vary run to run; the assertions compare the report with the table it was made from, never with a number.
"""
from __future__ import annotations

import html as htmllib
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.report import data as rdata
from bench.analysis.report import write_report
from bench.analysis.report.formatting import fnum
from bench.analysis.report.plots_profile import TABLE_COLORS, kind_colors
from bench.analysis.report.profile_data import depthwise_rates, kind_rates, kinds, profile_table
from bench.analysis.report.profile_view import PROFILE_FIGURES, pct, section, setting_sentences, signed_pct
from bench.profiling.opkinds import OP_KINDS, is_depthwise
from bench.results.store import load_run
from bench.text import md_escape

sys.path.insert(0, str(Path(__file__).parent))
import test_report_browser as tb  # noqa: E402
from runfactory import NOT_PROFILED_REASON, XSS_SCRIPT, cpu_run, profiled_run  # noqa: E402
from test_report_browser import browser  # noqa: E402,F401  (the Chromium fixture)

KEYS = [k for k, *_ in PROFILE_FIGURES]
HOSTILE = f"{XSS_SCRIPT}a$x_1_2$b"  # markup for the page, mathtext for the figures


def _text(page: str) -> str:
    """The page's visible text, entities decoded, whitespace collapsed."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _section(page: str) -> str:
    i = page.find('<section id="profile">')
    return page[i:page.index("</section>", i)] if i >= 0 else ""


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """The profiled run and its report (rendered once)."""
    root = tmp_path_factory.mktemp("profiled")
    run = profiled_run(root)
    return run, write_report([run], root / "out" / "r.html")


def _kind_rows(run: Path) -> pd.DataFrame:
    p = load_run(run).profile
    return p[p["breakdown"] == "op_kind"]


def test_section_and_figures_when_a_profile_exists(profiled):
    run, out = profiled
    page = out.read_text()
    sec = _section(page)
    assert sec and 'href="#profile"' in page
    imgs = re.findall(r'<figure id="fig-(profile_[a-z_]+)">\s*<h3>[^<]*</h3>\s*<img src="data:image/png;base64,', sec)
    assert imgs == KEYS
    for key in KEYS:
        assert (out.parent / "r_figures" / f"{key}.png").stat().st_size > 0
        assert (out.parent / "r_figures" / f"{key}.svg").exists()
    assert "Not shown:" not in sec and "figure failed" not in page
    text = _text(sec)
    for h in ("Top ops per case", "Module breakdown", "Profiler overhead", "Cases without a profile (1)"):
        assert h in text, h
    md = out.with_suffix(".md").read_text()
    assert "## Where the time goes" in md and "Profiled pass against the timed median" in md


def test_no_section_without_a_profile_and_its_figures_go(tmp_path, profiled):
    run, _ = profiled
    out = tmp_path / "out" / "r.html"
    write_report([run], out)
    assert (out.parent / "r_figures" / "profile_roofline.png").exists()
    write_report([cpu_run(tmp_path)], out)  # the same report again, of a run without a profile
    page = out.read_text()
    assert 'id="profile"' not in page and 'href="#profile"' not in page and "Where the time goes" not in page
    assert "Where the time goes" not in out.with_suffix(".md").read_text()
    assert not list((out.parent / "r_figures").glob("profile_*"))  # the previous report's are removed


def test_case_sentences_name_the_kind_the_table_gives(profiled):
    run, out = profiled
    text = _text(_section(out.read_text()))
    k = _kind_rows(run)
    results = load_run(run).results.set_index("case_id")
    n = 0
    for case_id, g in k.groupby("case_id"):
        g = g[g["macs"] > 0]
        gap = g["time_share"] - g["mac_share"]
        top = g.loc[gap.idxmax()]
        r = results.loc[case_id]
        m = re.search(rf"In {re.escape(str(r['model']))} {r['height']}x{r['width']}, (\S+) takes (\S+) of the time "
                      r"for (\S+) of the MACs", text)
        if not gap.max() > 0:  # no kind takes more of the time than of the work: nothing to say
            assert m is None, case_id
            continue
        assert m, case_id
        assert m.group(1) == top["op_kind"]
        assert (m.group(2), m.group(3)) == (pct(top["time_share"]), pct(top["mac_share"]))
        dw = g[g["op_kind"].map(is_depthwise)]
        if len(dw) >= 2:
            assert (f"the {len(dw)} depthwise conv kinds together take {pct(dw['time_share'].sum())} of the time "
                    f"for {pct(dw['mac_share'].sum())} of the MACs") in text
        n += 1
    assert n >= 1 and k["case_id"].nunique() == 3


def test_depthwise_rate_sentence_is_computed_from_the_table(profiled):
    run, out = profiled
    text = _text(_section(out.read_text()))
    k = _kind_rows(run)
    k = k[(k["macs"] > 0) & (k["time_ms"] > 0)]
    sums = k.groupby("op_kind")[["macs", "time_ms"]].sum()
    pooled = sums["macs"] / sums["time_ms"] / 1e6  # GMAC/s: MACs per ms / 1e6
    dw = pooled[[is_depthwise(x) for x in pooled.index]]
    dw_k = k[k["op_kind"].map(is_depthwise)]
    dw_rate = dw_k["macs"].sum() / dw_k["time_ms"].sum() / 1e6
    one = pooled["conv-1x1"]
    assert f"depthwise convs ({len(dw)} kinds) reach {fnum(dw_rate)} GMAC/s together" in text
    assert f"the slowest ({dw.idxmin()}) {fnum(dw.min())} GMAC/s" in text
    assert f"1x1 convs {fnum(one)} GMAC/s ({fnum(one / dw_rate, 2)}× the depthwise rate)" in text
    assert f"matmuls {fnum(pooled['matmul'])} GMAC/s ({fnum(pooled['matmul'] / dw_rate, 2)}×)" in text


def test_no_sentence_for_an_absent_kind(profiled):
    run, _ = profiled
    m = rdata.merge_runs([load_run(run)])
    k = kinds(profile_table(m))
    assert setting_sentences(depthwise_rates(kind_rates(k)))  # all kinds there: a sentence
    no_dw = k[~k["op_kind"].map(is_depthwise)]
    assert setting_sentences(depthwise_rates(kind_rates(no_dw))) == []
    no_ref = k[~k["op_kind"].isin(["conv-1x1", "matmul"])]
    assert setting_sentences(depthwise_rates(kind_rates(no_ref))) == []
    only_1x1 = k[k["op_kind"] != "matmul"]
    (s,) = setting_sentences(depthwise_rates(kind_rates(only_1x1)))
    assert "1x1 convs" in s["text"] and "matmul" not in s["text"]


def test_tables_top_ops_modules_and_overhead(profiled, tmp_path):
    run, _ = profiled
    r = load_run(run)
    view, _ = section(rdata.merge_runs([r]), tmp_path)
    ops = r.profile[r.profile["breakdown"] == "op"]
    for c in view["top_ops"]:
        case_id = r.results.loc[(r.results["model"] + " 128x128") == c["case"], "case_id"].iloc[0]
        mine = ops[ops["case_id"] == case_id].sort_values("rank").sort_values("time_ms", ascending=False,
                                                                              kind="stable")
        assert len(c["rows"]) == min(10, len(mine)) > 0
        assert [x["op_kind"] for x in c["rows"]] == list(mine["op_kind"][:len(c["rows"])])
    evit = next(c for c in view["modules"] if c["case"].startswith("evit-b0"))
    assert evit["mixer"] not in ("", "–") and evit["ffn"] not in ("", "–") and len(evit["stages"]) > 3
    block = next(c for c in view["modules"] if c["case"].startswith("block:msla"))
    assert block["ffn"] == "–"  # a block has a mixer and no FFN
    prof = r.results[r.results["profile_source"].notna()].set_index("model")
    assert sorted(x["case"].split()[0] for x in view["overhead"]["rows"]) == sorted(prof.index)
    for row in view["overhead"]["rows"]:
        p = prof.loc[row["case"].split()[0]]
        assert row["overhead"] == signed_pct(p["profiled_ms"] / p["latency_ms_median"] - 1)
        assert row["source"] == "torch"
    (no,) = view["overhead"]["without"]
    assert no["case"] == "block:softmax 128x128" and no["why"] == NOT_PROFILED_REASON


def test_roofline_skips_the_roof_without_calibration(tmp_path, profiled):
    run, out = profiled
    fig = re.search(r'<figure id="fig-profile_roofline">.*?</figure>', out.read_text(), re.S).group(0)
    assert "No roof drawn" not in fig
    assert "peak 100 GMAC/s" in (out.parent / "r_figures" / "profile_roofline.svg").read_text()
    bare = profiled_run(tmp_path, "fixture-uncalibrated", calibrated=False)
    assert load_run(bare).profile["peak_gmacs_per_s"].isna().all()
    out2 = write_report([bare], tmp_path / "out" / "u.html")
    fig2 = _text(re.search(r'<figure id="fig-profile_roofline">.*?</figure>', out2.read_text(), re.S).group(0))
    assert "No roof drawn for Test CPU @ 2.0GHz fp32 t1" in fig2 and "Not shown" not in fig2
    svg = (tmp_path / "out" / "u_figures" / "profile_roofline.svg").read_text()
    assert "GMAC/s" in svg and "peak " not in svg and "GB/s" not in svg  # the points, not the roof


def test_hostile_model_name_is_escaped_and_drawn(tmp_path):
    run = profiled_run(tmp_path, "fixture-hostile", models=(("block:large-kernel", 128, 128),),
                       rename={"block:large-kernel": HOSTILE}, not_profiled=False)
    out = write_report([run], tmp_path / "out" / "h.html")
    page = out.read_text()
    assert XSS_SCRIPT not in page and htmllib.escape(XSS_SCRIPT) in _section(page)
    assert f"In {HOSTILE} 128x128, " in _text(_section(page)) and "figure failed" not in page
    for key in ("profile_time_share",):
        svg = (tmp_path / "out" / "h_figures" / f"{key}.svg").read_text()
        assert "<script" not in svg and "a$x_1_2$b" in svg, key
    md = out.with_suffix(".md").read_text()
    assert "<script" not in md and not re.search(r"(?<!\\)\$x", md)
    assert md_escape(f"In {HOSTILE} 128x128, ") in md


def test_merged_settings_name_their_setting(tmp_path, profiled):
    """Two hosts with the same CPU model are two settings: each sentence says which; a run without a profile
    merged beside them lists none of its cases as 'without a profile'."""
    run, _ = profiled
    other = profiled_run(tmp_path, "fixture-profile-b", host="box-b", not_profiled=False)
    out = write_report([run, other, cpu_run(tmp_path)], tmp_path / "out" / "m.html")
    text = _text(_section(out.read_text()))
    for host in ("profile-box", "box-b"):
        assert re.search(rf"In block:msla 128x128 on Test CPU @ 2\.0GHz @ {host} eager fp32 b1 t1, \S+ takes", text)
        assert f"On Test CPU @ 2.0GHz @ {host} fp32 t1, depthwise convs" in text
    assert "Cases without a profile (1)" in text


def test_op_kind_colours_are_fixed():
    every = kind_colors(list(OP_KINDS))
    assert len({tuple(np.atleast_1d(c)) if not isinstance(c, str) else c for c in every.values()}) == len(OP_KINDS)
    some = kind_colors(["dw5", "conv-1x1", "dw9"])
    assert some["dw5"] == TABLE_COLORS["dw5"] == every["dw5"] and some["conv-1x1"] == every["conv-1x1"]
    assert list(some) == ["conv-1x1", "dw5", "dw9"]  # kind order, the untabled size after the table's dw kinds


@pytest.mark.skipif(tb.CHROMIUM is None or tb.CHROMEDRIVER is None,
                    reason="no Chromium or chromedriver (apt-get install -y chromium chromium-driver)")
def test_profile_section_in_chromium(browser, tmp_path):
    """The section with a hostile model name in a real browser (tests/test_report_browser.py's driver): nothing
    runs, every image decodes, the name is shown as text, the one case's top-op table is open."""
    run = profiled_run(tmp_path, "fixture-hostile-browser", models=(("block:large-kernel", 128, 128),),
                       rename={"block:large-kernel": HOSTILE})
    out = write_report([run], tmp_path / "out" / "b.html")
    d = browser
    d.get(out.as_uri())
    tb._no_alert(d)
    assert d.execute_script("return document.scripts.length") == 2
    decoded = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const imgs = Array.from(document.querySelectorAll('#profile img'));"
        "Promise.all(imgs.map(i => i.decode().then(() => i.naturalWidth, () => 0))).then(done);")
    assert len(decoded) == len(KEYS) and all(w > 0 for w in decoded), decoded
    assert f"In {HOSTILE} 128x128," in d.find_element("id", "profile").text
    opened = d.execute_script("return Array.from(document.querySelectorAll('#profile details.profile-top'))"
                              ".map(x => x.open)")
    assert opened == [True]
    assert tb._severe(d) == []
