"""The paired decisions of the interleaved design in the report, and honest labels: a pair of mixers measured in
the same processes is decided by its paired interval (pairs.parquet), "tied" is a decision in a neutral style, a
busy pair or side is never green, and no interval is called 95% unless it reaches 95% (an n = 1 median has no CI).
Built from real run folders (tests/runfactory, bench.results.store.write_pairs)."""
from __future__ import annotations

import html as htmllib
import re

import numpy as np
import pandas as pd
import pytest

from bench.analysis.report import write_report
from bench.analysis.report import decision as dec
from bench.analysis.report import pairs as paired
from bench.analysis.report.data import load_runs, merge_runs
from bench.analysis.report.formatting import ci_label, level_text
from bench.analysis.report.html import _speedup_cell
from bench.analysis import summary
from bench.results.store import load_run, pairs_frame, write_pairs
from tests.runfactory import interleave, pair_row, report_row, write_fixture_run

CPU = "Fixture Xeon 8480 (CPU)"
RUN = "paired"


def _row(model: str, h: int, lat: float, *, wide: bool = False, **extra) -> dict:
    variant = model.split(":", 1)[1]
    level = "block" if model.startswith("block:") else "model"
    r = report_row(RUN, "box", model, variant, level, CPU, 1, h, h, lat=lat)
    if wide:  # CIs that overlap: the two-CI rule could not tell these apart
        r.update(latency_ms_ci_low=0.7 * lat, latency_ms_ci_high=1.4 * lat)
    r.update(latency_ms_ci_level=0.95, design="isolated", group_id="")
    r.update(extra)
    return r


def _run(tmp_path):
    """Block 512: four mixers interleaved (msla fastest, tied with relu-linear, faster than the rest by the paired
    intervals although the rows' CIs overlap). Block 1024: interleaved, its one pair measured on a busy machine.
    evit-b0 512: isolated, softmax measured on a busy machine; evit-b0 1024: isolated, clean. evit-b1 2048:
    isolated, softmax timed once (n = 1), msla's CI reaching 80% only."""
    b512 = {v: interleave(_row(f"block:{v}", 512, lat, wide=True)) for v, lat in
            (("msla", 1.0), ("relu-linear", 1.01), ("softmax", 1.6), ("large-kernel", 2.0))}
    b1024 = {v: interleave(_row(f"block:{v}", 1024, lat, wide=True)) for v, lat in (("msla", 4.0), ("softmax", 8.0))}
    rows = [*b512.values(), *b1024.values(),
            _row("evit-b0:msla", 512, 10.0), _row("evit-b0:softmax", 512, 14.0, noisy=True,
                                                   noisy_reason="other processes used 0.9 cores"),
            _row("evit-b0:msla", 1024, 20.0), _row("evit-b0:softmax", 1024, 40.0),
            _row("evit-b1:msla", 2048, 3000.0, latency_ms_ci_level=0.8, repeats=3),
            _row("evit-b1:softmax", 2048, 6000.0, n=1, latency_ms_ci_low=6000.0, latency_ms_ci_high=6000.0,
                 latency_ms_ci_level=0.0)]
    m, r, s, lk = (b512[v] for v in ("msla", "relu-linear", "softmax", "large-kernel"))
    pairs = [pair_row(m, r, 1.01, 0.995, 1.015, "tied", reason="interval inside 1 ± 0.02"),
             pair_row(m, s, 1.6, 1.5, 1.7, "faster"), pair_row(m, lk, 2.0, 1.9, 2.1, "faster"),
             pair_row(r, s, 1.58, 1.5, 1.66, "faster", fastest="msla"),
             pair_row(r, lk, 1.98, 1.9, 2.05, "faster", fastest="msla"),
             pair_row(s, lk, 1.25, 0.98, 1.4, "not resolved", fastest="msla", reason="interval spans 1 + tie"),
             pair_row(b1024["msla"], b1024["softmax"], 2.0, 1.9, 2.1, "faster", noisy=True,
                      noisy_reason="other processes used 1.2 cores")]
    for p in pairs:
        p["against_fastest"] = "msla" in (p["fast"], p["slow"])
        p["group_verdict"] = "resolved"
    d = write_fixture_run(tmp_path / RUN, rows, meta=dict(run_id=RUN))
    write_pairs(d, pairs_frame(pairs))
    return d


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paired")
    run = _run(tmp)
    out = write_report([run], tmp / "out" / "r.html")
    return run, out.read_text(), out.with_suffix(".md").read_text()


def _group(page: str, title: str) -> str:
    start = page.index(f"<strong>{title}")
    return page[start:page.index('<div class="box decision-group"', start) if
                '<div class="box decision-group"' in page[start:] else page.index("</section>", start)]


def _pair_tr(group: str, lower: str, higher: str) -> str:
    rows = re.findall(r'<tr class="decision-pair"[^>]*>.*?</tr>', group, re.S)
    return next(r for r in rows if f"<td>{lower}</td><td>{higher}</td>" in r)


def _mixer_tr(group: str, variant: str) -> str:
    return next(r for r in re.findall(r'<tr class="decision-mixer">.*?</tr>', group, re.S)
                if f"<td>{variant}</td>" in r)


def _classes(tr: str) -> set[str]:
    """Every css class of the cells of a table row."""
    return {c for attr in re.findall(r'<td class="([^"]*)"', tr) for c in attr.split()}


def _plain(md: str) -> str:
    return md.replace("\\", "")


def test_merged_runs_carry_their_pairs(report):
    run, _, _ = report
    m = merge_runs(load_runs([run]))
    assert m.pairs is not None and len(m.pairs) == 7 and set(m.pairs["run_id"]) == {RUN}
    assert len(paired.index(m.pairs)) == 7


def test_interleaved_group_is_decided_by_its_paired_intervals(report):
    run, _, _ = report
    m = merge_runs(load_runs([run]))
    g = next(d for d in dec.decisions(m) if d["base"] == "block" and d["resolution"] == "512x512")
    by = {frozenset((p["faster"], p["slower"])): p for p in g["pairs"]}
    soft = by[frozenset(("msla", "softmax"))]
    # the rows' own CIs overlap: two CIs would say "not resolved"; the paired interval decides
    assert dec.compare_pair(g["rows"][0], next(r for r in g["rows"] if r["variant"] == "softmax"))["verdict"] \
        == "not resolved"
    assert soft["paired"] and soft["verdict"] == "faster" and soft["ratio"] == pytest.approx(1.6)
    assert (soft["ci_low"], soft["ci_high"], soft["ci_level"], soft["n_processes"]) == (1.5, 1.7, 0.9938, 12)
    assert by[frozenset(("msla", "relu-linear"))]["verdict"] == "tied"
    assert by[frozenset(("softmax", "large-kernel"))]["verdict"] == "not resolved"
    # every pair against msla is faster or tied: resolved, tied with relu-linear
    assert g["fastest"] == "msla" and g["verdict"] == "resolved" and g["tied"] == ["relu-linear"]
    assert g["design"] == "paired"


def test_paired_verdicts_render_in_html(report):
    _, page, _ = report
    g = _group(page, "block · 512x512")
    tied = _pair_tr(g, "msla", "relu-linear")
    assert 'data-verdict="tied"' in tied and "tied" in _classes(tied) and "win" not in _classes(tied)
    assert "[0.995, 1.01] 99.4%" in tied and "paired, 12 processes" in tied
    faster = _pair_tr(g, "msla", "softmax")
    assert 'data-verdict="faster"' in faster and "win" in _classes(faster)
    assert "[1.50, 1.70] 99.4%" in faster and "paired, 12 processes" in faster
    assert htmllib.escape("softmax is 1.60× slower than msla") in faster
    assert 'data-verdict="not resolved"' in _pair_tr(g, "softmax", "large-kernel")
    assert "msla is the fastest, tied with relu-linear" in g and 'data-verdict="resolved"' in g
    # a group measured apart is decided by two CIs, and says so
    iso = _group(page, "evit-b0 · 1024x1024")
    assert "two CIs" in _pair_tr(iso, "msla", "softmax") and "paired" not in _pair_tr(iso, "msla", "softmax")
    assert ".tied {" in page  # the neutral style exists


def test_paired_verdicts_render_in_markdown(report):
    _, _, md = report
    text = _plain(md)
    assert "softmax/msla 1.60× [1.50, 1.70] 99.4% (paired, 12 processes): softmax is 1.60× slower than msla" in text
    assert "relu-linear/msla 1.01× [0.995, 1.01] 99.4% (paired, 12 processes): msla and relu-linear tied " \
           "(within ±2%)" in text
    assert "(two CIs): softmax is 2.00× slower than msla" in text
    assert "pairs (slower/faster time ratio, interval, design: verdict)" in text
    assert "median ms [CI]" in text and "95% CI" not in text.split("## Within")[0]


def test_a_busy_pair_or_side_is_flagged_never_green(report):
    run, page, md = report
    busy = _pair_tr(_group(page, "block · 1024x1024"), "msla", "softmax")
    assert 'data-verdict="flagged"' in busy and _classes(busy) >= {"flag"} and "win" not in _classes(busy)
    assert "busy machine: other processes used 1.2 cores" in busy
    side = _pair_tr(_group(page, "evit-b0 · 512x512"), "msla", "softmax")
    assert 'data-verdict="flagged"' in side and "win" not in _classes(side)
    # the headline cell msla vs softmax at evit-b0 512: its softmax side was measured on a busy machine
    head = page[page.index('id="headline"'):page.index('id="figures"')] if 'id="figures"' in page else \
        page[page.index('id="headline"'):]
    cells = re.findall(r'<td class="num ([^"]*)" title="[^"]*">([^<]*)<span class="ci">', head)
    flagged = [cls for cls, txt in cells if txt.endswith("!")]
    assert flagged and all("win" not in cls.split() and "flag" in cls.split() for cls in flagged), cells
    m = merge_runs(load_runs([run]))
    from bench.analysis.report.data import speedups
    from bench.analysis.report.readings import speedup_note

    sp, _ = speedups(m)
    note = speedup_note(sp[sp["baseline"] == "softmax"])
    # five matched points vs softmax: evit-b0 1024 (two CIs apart), block 512 (paired: 1.6 [1.5, 1.7]), evit-b0 512
    # (a busy side), block 1024 (a busy pair), evit-b1 2048 (one sample): the busy ones are not counted as faster
    assert "msla faster at 2 of 5 points" in note and "fewer than 6 samples at 1" in note
    assert "a side measured on a busy machine at 2 (no verdict)" in note
    b512 = sp[(sp["base"] == "block") & (sp["resolution"] == "512x512") & (sp["baseline"] == "softmax")].iloc[0]
    assert b512["ci_method"] == "paired" and (b512["speedup"], b512["ci_low"], b512["ci_high"]) == (1.6, 1.5, 1.7)
    assert "[1.50, 1.70] 99.4%" in head


def test_one_sample_has_no_ci_and_no_95_percent(report):
    _, page, md = report
    g = _group(page, "evit-b1 · 2048x2048")
    one = _mixer_tr(g, "softmax")
    assert "n=1, no CI" in one and "95%" not in one and "[6,000, 6,000]" not in one
    assert "6,000, 6,000" not in page
    low = _mixer_tr(g, "msla")
    assert re.search(r"\[[\d,.]+, [\d,.]+\] 80%", low) and "CI reaches 80% only" in low
    assert 'data-verdict="flagged"' in _pair_tr(g, "msla", "softmax")
    text = _plain(md)
    assert "softmax 6,000 n=1, no CI" in text and "6,000, 6,000" not in text
    assert re.search(r"msla 3,000 \[[\d,.]+, [\d,.]+\] 80%", text)
    # no header, cell or legend of the decision, headline or A/B tables calls an interval a 95% CI
    for start, end in (('id="decision"', 'id="budgets"'), ('id="headline"', "Scaling exponent")):
        part = page[page.index(start):page.index(end, page.index(start))]
        assert "95% CI" not in part, (start, re.findall(r".{60}95% CI.{20}", part))


def test_budget_fit_of_one_sample_is_not_a_ci():
    r = dict(level="model", latency_ms_median=6000.0, latency_ms_ci_high=6000.0, n=1, config="c", model="m",
             pixels=1.0, noisy=False, latency_ms_ci_low=6000.0)

    class M:
        ok = pd.DataFrame([r])

    assert dec.budget_fits(M(), (1e4,))[0]["fits"][0]["ci_fits"] is None


def test_group_verdict_rule_with_pairs():
    """Resolved when every pair against the fastest is faster or tied; not resolved otherwise; flagged with a
    busy pair."""
    rows = [dict(variant=v, model=f"block:{v}", latency_ms_median=lat, latency_ms_ci_low=lat * 0.5,
                 latency_ms_ci_high=lat * 2, n=40, noisy=False, run_id="r", case_id=v, design="interleaved")
            for v, lat in (("a", 1.0), ("b", 1.05), ("c", 1.5))]

    def idx(*ps):
        return paired.index(pairs_frame([dict(run_id="r", fast_case_id=f, slow_case_id=s, fast=f, slow=s,
                                              ratio=x, ci_low=x - 0.01, ci_high=x + 0.01, ci_level=0.99,
                                              n_processes=8, verdict=v, tie=0.02, fastest="a", noisy=n)
                                         for f, s, x, v, n in ps]))

    g = pd.DataFrame(rows)
    tied = dec.decide_group(g, idx(("a", "b", 1.01, "tied", False), ("a", "c", 1.5, "faster", False),
                                   ("b", "c", 1.4, "faster", False)))
    assert tied["verdict"] == "resolved" and tied["tied"] == ["b"] and tied["open"] == []
    open_ = dec.decide_group(g, idx(("a", "b", 1.05, "not resolved", False), ("a", "c", 1.5, "faster", False)))
    assert open_["verdict"] == "not resolved" and open_["open"] == ["b"]
    # b vs c has no pair row: decided by the rows' two CIs (which overlap)
    assert next(p for p in open_["pairs"] if {p["faster"], p["slower"]} == {"b", "c"})["paired"] is False
    busy = dec.decide_group(g, idx(("a", "b", 1.05, "faster", True), ("a", "c", 1.5, "faster", False)))
    assert busy["verdict"] == "flagged" and busy["pairs"][0]["verdict"] == "flagged"
    # rows measured isolated ignore a pair table
    iso = dec.decide_group(g.assign(design="isolated"), idx(("a", "b", 1.01, "tied", False)))
    assert not any(p["paired"] for p in iso["pairs"])


def test_interval_labels_say_the_level_they_reach():
    assert ci_label(1.0, 2.0, 0.95) == "[1.00, 2.00]"
    assert ci_label(1.0, 2.0, 0.8) == "[1.00, 2.00] 80%"
    assert ci_label(1.0, 2.0, 0.9938) == "[1.00, 2.00] 99.4%"
    assert ci_label(1.0, 2.0, 0.95 * 0.95, at_least=True) == "[1.00, 2.00] ≥90.2%"
    assert ci_label(6000.0, 6000.0, 0.0, n=1) == "n=1, no CI"
    assert ci_label(1.0, 2.0, float("nan")) == "[1.00, 2.00] (level not recorded)"
    assert ci_label(float("nan"), 2.0, 0.95) == "" and level_text(0.9375) == "93.8%"
    # two CIs: the interval covers at least the product of the two levels
    p = dec.compare_pair(dict(variant="a", latency_ms_median=1.0, latency_ms_ci_low=0.9, latency_ms_ci_high=1.1,
                              n=40, latency_ms_ci_level=0.95),
                         dict(variant="b", latency_ms_median=2.0, latency_ms_ci_low=1.9, latency_ms_ci_high=2.1,
                              n=40, latency_ms_ci_level=0.95))
    assert p["ci_level"] == pytest.approx(0.9025) and p["at_least"] and not p["paired"]


def test_a_noisy_headline_cell_is_never_green():
    x = dict(speedup=3.0, ci_low=2.5, ci_high=3.5, baseline="softmax", baseline_model="a", target_model="b",
             baseline_ms=3.0, target_ms=1.0, noisy=True, n_min=40, ci_level=0.95, ci_method="bootstrap")
    cell = _speedup_cell(x)
    assert "win" not in cell["cls"].split() and "flag" in cell["cls"].split() and cell["text"].endswith("!")
    assert _speedup_cell(dict(x, noisy=False))["cls"] == "win"


def test_terminal_summary_labels_levels():
    rows = [dict(status="ok", model="block:msla", latency_ms_median=6000.0, latency_ms_ci_low=6000.0,
                 latency_ms_ci_high=6000.0, n=1, converged=True, height=512, width=512, device_name=CPU,
                 device="cpu", backend="eager", precision="fp32", batch=1, threads=1, level="block", variant="msla"),
            dict(status="ok", model="block:softmax", latency_ms_median=4.6, latency_ms_ci_low=4.1,
                 latency_ms_ci_high=5.0, n=40, latency_ms_ci_level=0.8, converged=True, height=512, width=512,
                 device_name=CPU, device="cpu", backend="eager", precision="fp32", batch=1, threads=1,
                 level="block", variant="softmax")]
    out = summary.format_summary(pd.DataFrame(rows))
    assert "6000 ms n=1, no CI" in out and "[4.10, 5.00] 80%" in out
    assert "95% CI" not in out and "median [CI, 95% unless shown]" in out
    clean = pd.DataFrame([dict(rows[1], latency_ms_ci_level=0.95)])
    assert "median [95% CI]" in summary.format_summary(clean)


def test_loaded_pairs_are_typed(report):
    run, _, _ = report
    p = load_run(run).pairs
    assert p is not None and set(p["verdict"]) == {"tied", "faster", "not resolved"}
    assert np.isclose(p["ci_level"], 0.9938).all()
