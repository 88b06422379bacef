"""The design-review answer (issue 14): the decision table over every pair of mixers, the latency-budget view, the
run's warnings at the top, the reference table's counts and the links to the profile. Built from real run folders
(tests/runfactory) and checked against values recomputed here from the rows."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest

from bench.analysis.report import DEFAULT_BUDGETS, parse_budgets, write_report
from bench.analysis.report import decision as dec
from bench.analysis.report.data import load_runs, merge_runs
from tests.runfactory import cpu_run, profiled_run, report_row, write_fixture_run

CPU = "Fixture Xeon 8480 (CPU)"


def _merged(*paths):
    return merge_runs(load_runs(list(paths)))


def _row(variant: str, median: float, lo: float, hi: float, n: int = 40, noisy: bool = False) -> dict:
    return dict(variant=variant, model=f"block:{variant}", latency_ms_median=median, latency_ms_ci_low=lo,
                latency_ms_ci_high=hi, n=n, noisy=noisy)


def test_every_pair_of_mixers_is_compared(tmp_path):
    """All six pairs of four mixers, relu-linear against msla included, with slower / faster medians as ratio."""
    m = _merged(cpu_run(tmp_path))
    groups = dec.decisions(m)
    block = [g for g in groups if g["level"] == "block" and g["resolution"] == "2048x2048"]
    assert block, [g["resolution"] for g in groups]
    for g in block:
        mixers = [r["variant"] for r in g["rows"]]
        assert sorted(mixers) == ["large-kernel", "msla", "relu-linear", "softmax"]
        assert {frozenset((p["faster"], p["slower"])) for p in g["pairs"]} == \
            {frozenset(c) for c in itertools.combinations(mixers, 2)}
        by = {r["variant"]: r["latency_ms_median"] for r in g["rows"]}
        for p in g["pairs"]:
            assert by[p["faster"]] <= by[p["slower"]]
            assert p["ratio"] == pytest.approx(by[p["slower"]] / by[p["faster"]])
            assert p["ci_low"] <= p["ratio"] <= p["ci_high"]
        # the fixture's synthetic model makes relu-linear the fastest block, 40/36 ahead of msla
        assert g["fastest"] == "relu-linear"
        pair = next(p for p in g["pairs"] if {p["faster"], p["slower"]} == {"relu-linear", "msla"})
        assert pair["faster"] == "relu-linear" and pair["verdict"] == "faster"


def test_a_pair_is_a_win_only_with_apart_cis_and_trustworthy_sides():
    apart = dec.compare_pair(_row("a", 10, 9.9, 10.1), _row("b", 12, 11.9, 12.1))
    assert apart["verdict"] == "faster" and apart["ci_low"] == pytest.approx(11.9 / 10.1)
    overlap = dec.compare_pair(_row("a", 10, 9.0, 11.5), _row("b", 11, 10.2, 12.0))
    assert overlap["verdict"] == "not resolved" and overlap["ci_low"] < 1 < overlap["ci_high"]
    one = dec.compare_pair(_row("a", 10, float("nan"), float("nan"), n=1), _row("b", 30, 29, 31))
    assert one["verdict"] == "flagged" and "n=1" in one["why"] and "no CI" in one["why"]
    busy = dec.compare_pair(_row("a", 10, 9.9, 10.1, noisy=True), _row("b", 30, 29, 31))
    assert busy["verdict"] == "flagged" and "busy machine" in busy["why"]
    group = dec.decide_group(pd.DataFrame([_row("a", 10, 9.0, 11.5), _row("b", 11, 10.2, 12.0),
                                           _row("c", 30, 29, 31)]))
    assert group["fastest"] == "a" and group["verdict"] == "not resolved" and group["open"] == ["b"]


def test_budget_view_lists_what_fits_with_its_margin(tmp_path):
    m = _merged(cpu_run(tmp_path))
    models = m.ok[m.ok["level"] == "model"]
    budgets = (5.0, float(models["latency_ms_median"].median()), 1e6)
    for b, got in zip(budgets, dec.budget_fits(m, budgets)):
        want = models[models["latency_ms_median"] <= b]
        assert len(got["fits"]) == len(want) and got["over"] == len(models) - len(want)
        for x in got["fits"]:
            assert x["margin"] == pytest.approx(b - x["median"]) and x["margin"] >= 0
            assert x["ci_fits"] == (x["ci_high"] <= b)
    assert not dec.budget_fits(m, (0.001,))[0]["fits"] and dec.budget_fits(m, (1e6,))[0]["over"] == 0


@pytest.mark.parametrize("bad", ["", "abc", "0", "-5", "inf", "33,,100", "nan"])
def test_bad_budgets_are_one_line(bad):
    with pytest.raises(ValueError) as e:
        parse_budgets(bad)
    assert "\n" not in str(e.value) and "--budgets" in str(e.value)


def test_budgets_parse_in_order_once():
    assert parse_budgets("100, 33,100") == (100.0, 33.0)
    assert parse_budgets(DEFAULT_BUDGETS) == DEFAULT_BUDGETS


def test_report_cli_refuses_bad_budgets(tmp_path, capfd):
    from bench.cli import main

    run = cpu_run(tmp_path)
    rc = main(["report", str(run), "--budgets", "fast", "--out", str(tmp_path / "r.html")])  # the CLI, in-process
    err = capfd.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--budgets" in err
    assert not (tmp_path / "r.html").exists()


def test_page_shows_decision_budgets_and_warnings_first(tmp_path):
    """Warnings about the run (unconverged, few samples, failed cases) stand above the decision; the decision
    and budget sections carry the values of the rows."""
    extra = [report_row("fixture-cpu", "cpu-box", "evit-b0:msla", "msla", "model", CPU, 2, 640, 640),
             report_row("fixture-cpu", "cpu-box", "evit-b0:softmax", "softmax", "model", CPU, 2, 640, 640)]
    extra[0].update(converged=False)
    extra[1].update(n=3)
    run = cpu_run(tmp_path, extra=extra)
    page = write_report([run], tmp_path / "out" / "r.html", budgets=(33, 100)).read_text()
    warn, decision, budgets = (page.index(s) for s in ('id="run-warnings"', 'id="decision"', 'id="budgets"'))
    assert warn < decision < budgets < page.index('id="headline"')
    box = page[warn:decision]
    assert "1 ok case(s) did not converge" in box and "fewer than 6 samples" in box and "timeout" in box
    assert re.search(r"Within 33 ms: \d+ cases? fit, \d+ do not", page)
    m = _merged(run)
    fits = dec.budget_fits(m, (33.0,))[0]
    assert f"Within 33 ms: {len(fits['fits'])} case" in page
    assert page.count('class="decision-pair"') == sum(len(g["pairs"]) for g in dec.decisions(m))
    md = (tmp_path / "out" / "r.md").read_text()
    assert "## Decision: which mixer (level block)" in md and "## Within 100 ms:" in md


def test_decision_rows_link_to_their_profile(tmp_path):
    run = profiled_run(tmp_path, models=(("block:msla", 128, 128), ("block:large-kernel", 128, 128)),
                       not_profiled=False)
    page = write_report([run], tmp_path / "out" / "r.html").read_text()
    links = re.findall(r'class="profile-link" href="#(prof-[0-9a-f]+)"', page)
    assert len(links) == 2
    for anchor in links:
        assert f'id="{anchor}"' in page


def test_reference_table_counts_every_row_and_labels_published_latency(tmp_path):
    """'ours' params and MACs are computed for every reference model, measured in the run or not (models.zoo),
    and each published latency names the hardware and how it was measured."""
    from models.registry import get_model_info, list_models
    from models.zoo import zoo_frame

    rows = [report_row("ref", "h", "efficientvit-seg-b1-ade20k", "msla", "model", CPU, 1, 512, 512)]
    run = write_fixture_run(tmp_path / "ref", rows, meta=dict(run_id="ref"))
    page = write_report([run], tmp_path / "out" / "r.html").read_text()
    refs = [n for n in list_models() if get_model_info(n).published is not None]
    zoo = zoo_frame(names=refs).set_index("model")
    body = page[page.index('id="reference"'):page.index('id="cases-section"')]
    trs = re.findall(r"<tr>\s*<td>([^<]+)</td>(.*?)</tr>", body, flags=re.S)
    assert [n for n, _ in trs] == refs
    from bench.analysis.report.formatting import fnum

    for name, tr in trs:
        assert f"{fnum(zoo.loc[name, 'params_m'])}M" in tr and f"{fnum(zoo.loc[name, 'macs_g'])}G" in tr, name
    b1 = dict(trs)["efficientvit-seg-b1-ade20k"]
    assert "4 ms on Jetson AGX Orin (TensorRT fp16)" in b1 and "110 ms on Jetson Nano (TensorRT fp16)" in b1
    assert "ms [" in b1 and "on Fixture Xeon 8480 (CPU)" in b1  # our latency at 512x512 with its CI
    assert "not measured in these runs" in dict(trs)["segformer-b0-cityscapes"]
