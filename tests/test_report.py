"""Tests of the HTML/Markdown report (bench/report).

The runs here are FIXTURES of the report's inputs (tests/runfactory.py): results/samples/meta written with
bench.results.store from synthetic rows (latencies linear in pixels for msla, quadratic for softmax), not
measurements. One test renders
a report of a real `run_bench.py --quick` run when the engine is there.
"""
from __future__ import annotations

import argparse
import html as htmllib
import json
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.report import default_out, write_report
from bench.commands.report import add_report_arguments, cmd_report
from bench.analysis.report import data as rdata
from bench.analysis.report import scaling
from bench.results.store import load_run
from bench.text import md_escape

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from runfactory import XSS_SCRIPT, cpu_run, crafted_run, gpu_run, report_row, write_fixture_run  # noqa: E402


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text.append(data)


def _parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    return c


# --------------------------------------------------------------------------------------------------------------
# tests

_RENDERED: dict[str, tuple[Path, list[Path]]] = {}


def fixture_report(tmp_root: Path) -> tuple[Path, list[Path]]:
    """The CPU + GPU fixture runs and their merged report, rendered once per test session (the browser test
    loads the same page)."""
    if "merged" not in _RENDERED or not _RENDERED["merged"][0].exists():
        runs = [cpu_run(tmp_root), gpu_run(tmp_root)]
        _RENDERED["merged"] = (write_report(runs, tmp_root / "out" / "merged.html"), runs)
    return _RENDERED["merged"]


@pytest.fixture(scope="module")
def merged_report(tmp_path_factory):
    return fixture_report(tmp_path_factory.mktemp("report"))


def test_writes_html_markdown_and_figures(merged_report):
    out, _ = merged_report
    assert out.exists() and out.with_suffix(".md").exists()
    figs = out.parent / "merged_figures"
    pngs, svgs = sorted(figs.glob("*.png")), sorted(figs.glob("*.svg"))
    assert len(pngs) == 7 and len(svgs) == 7, (pngs, svgs)
    page = out.read_text()
    c = _parse(page)
    imgs = [a for t, a in c.tags if t == "img"]
    assert len(imgs) == 7
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    # self-contained: nothing fetched from anywhere
    for t, a in c.tags:
        for k in ("src", "href"):
            v = a.get(k) or ""
            assert not re.match(r"(https?:)?//", v), (t, a)
    assert "Not shown:" not in page  # every figure has data in this fixture


def test_headline_speedups_and_exponents(merged_report):
    _, runs = merged_report
    m = rdata.merge_runs([load_run(p) for p in runs])
    sp, notes = rdata.speedups(m)
    # msla vs softmax on the GPU at 1024 for evit-b0, batch 1: exact from the synthetic model
    r = sp[(sp["config"].str.contains("H100")) & (sp["base"] == "evit-b0") & (sp["baseline"] == "softmax")
           & (sp["resolution"] == "1024x1024") & sp["config"].str.endswith(" b1")]
    assert len(r) == 1
    mp = 1024 * 1024 / 1e6
    expect = (2 + 25 * mp + 30 * mp * mp) / (2 + 40 * mp)  # evit-b0: size 1
    assert r["speedup"].iloc[0] == pytest.approx(expect, rel=1e-9)
    assert r["ci_low"].iloc[0] < r["speedup"].iloc[0] * 1.05 and r["ci_method"].iloc[0] == "bootstrap"
    # the timed-out softmax cases are reported as missing points
    assert any("timeout" in n and "no speedup at this point" in n for n in notes)
    ex, _ = scaling.scaling_exponents(m)
    blk = ex[(ex["model"] == "block:softmax") & ex["config"].str.contains("H100")].iloc[0]
    lin = ex[(ex["model"] == "block:msla") & ex["config"].str.contains("H100")].iloc[0]
    assert blk["exponent"] > lin["exponent"]
    assert 0.5 < lin["exponent"] < 1.05 and np.isfinite(lin["se"]) and lin["ci_low"] < lin["exponent"] < lin["ci_high"]


def test_same_device_on_two_hosts_is_kept_apart(tmp_path):
    rows = {h: [report_row(h, h, f"block:{mx}", mx, "block", "Fixture H100 (GPU)", 0, s, s) for mx in ("msla", "softmax")
                for s in (512, 1024)] for h in ("box-a", "box-b")}
    runs = [write_fixture_run(tmp_path / h, r, meta=dict(run_id=h), samples=False) for h, r in rows.items()]
    m = rdata.merge_runs([load_run(p) for p in runs])
    assert len(m.ok) == 8 and not m.notes  # nothing deduplicated away
    assert m.ok["config"].nunique() == 2 and all(" @ box-" in c for c in m.ok["config"])
    sp, _ = rdata.speedups(m)
    assert len(sp) == 4 and (sp["ci_method"] == "bounds").all()  # no samples: the CI from the medians' CIs


def test_fit_exponent_exact_and_noisy():
    px = np.array([1e5, 1e6, 4e6, 1.6e7])
    f = scaling.fit_exponent(px, 3e-4 * px ** 2)
    assert f["exponent"] == pytest.approx(2.0) and f["se"] == pytest.approx(0.0, abs=1e-9)
    f2 = scaling.fit_exponent(px[:2], px[:2])
    assert f2["exponent"] == pytest.approx(1.0) and math.isnan(f2["se"])
    assert math.isnan(scaling.fit_exponent(px[:1], px[:1])["exponent"])
    rng = np.random.default_rng(0)
    f3 = scaling.fit_exponent(px, px ** 1.5 * rng.lognormal(0, 0.05, px.size))
    assert f3["ci_low"] < 1.5 < f3["ci_high"]


def test_page_content(merged_report):
    out, _ = merged_report
    page = out.read_text()
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", page))
    assert "mobile-class CPU proxy" in text
    assert "msla speedup over softmax" in text and "msla speedup over large-kernel" in text
    assert "Scaling exponent" in text
    assert "case exceeded its 120 s timeout" in text and "CUDA out of memory" in text
    assert page.count('id="not-ok-table"') == 1 and "Cases not ok (4)" in text
    assert "tensorrt needs a CUDA device" in text
    assert "governor" in text and "sm_mhz" in text  # clocks/power from meta.json
    assert "different hosts" in text  # merged from two hosts
    assert 'id="case-filter"' in page
    md = out.with_suffix(".md").read_text()
    assert "Speedup of msla over softmax" in md and "| evit-b0 |" in md
    assert "Cases not ok" in md and "timeout" in md


def test_xss_is_escaped_everywhere(tmp_path):
    out = write_report([crafted_run(tmp_path)], tmp_path / "x.html")
    page = out.read_text()
    c = _parse(page)
    scripts = [a for t, a in c.tags if t == "script"]
    assert len(scripts) == 2  # our JSON block and our inline script only
    assert not [a for t, a in c.tags if t == "img" and not a.get("src", "").startswith("data:image/png")]
    json_block, inline = c.script_text[0], "".join(c.script_text[1:])
    assert "<" not in json_block and json.loads(json_block)["runs"] == [
        "crafted</script><script>alert(3)</script><!--"]  # data, intact, inert
    assert "alert(" not in inline
    assert XSS_SCRIPT not in page and "<img src=x" not in page
    assert htmllib.escape(XSS_SCRIPT) in page
    for t, a in c.tags:
        assert not any(k.startswith("on") for k in a), (t, a)
    md = out.with_suffix(".md").read_text()
    assert "<script" not in md and "<img" not in md
    for svg in (tmp_path / "x_figures").glob("*.svg"):  # the figure files carry the names too
        t = svg.read_text()
        assert "<script" not in t and "<img" not in t, svg


def test_table_meta_json_cannot_close_the_script(tmp_path):
    """The JSON block the table script reads goes through jinja2's |tojson: nothing in a run id can end the
    <script> element early, open a comment or start an entity, and the data arrive intact."""
    run_id = "</script><script>alert(1)</script><!-- a&b 'q' \u2028"
    run = write_fixture_run(tmp_path / "r", [report_row("r", "h", "block:msla", "msla", "block", "Fixture H100 (GPU)", 0,
                                                  512, 512)], meta=dict(run_id=run_id))
    page = write_report([run], tmp_path / "r.html").read_text()
    block = _parse(page).script_text[0]
    for bad in ("</", "<!--", "<", ">", "&", "'", "\u2028"):
        assert bad not in block, bad
    assert json.loads(block)["runs"] == [run_id]
    assert md_escape("a|b <b>x</b>") == "a\\|b &lt;b&gt;x&lt;/b&gt;"


def test_single_case_and_failures_render(tmp_path):
    one = write_fixture_run(tmp_path / "one", [report_row("one", "h", "evit-b0:msla", "msla", "model",
                                                    "Fixture H100 (GPU)", 0, 512, 512)], meta=dict(run_id="one"))
    out = write_report([one], tmp_path / "one.html")
    page = htmllib.unescape(out.read_text())
    assert "no softmax rows: speedup over softmax not available" in page
    assert "single ok case" in page and "Not shown:" in page
    bad_rows = [report_row("bad", "h", "evit-b0:softmax", "softmax", "model", "Fixture H100 (GPU)", 0, 2048, 2048,
                     status="oom", reason="CUDA out of memory")]
    bad = write_fixture_run(tmp_path / "bad", bad_rows, meta=None, samples=False)
    out2 = write_report([bad], tmp_path / "bad.html")
    page2 = htmllib.unescape(out2.read_text())
    assert "no case finished ok" in page2 and "CUDA out of memory" in page2
    assert "No meta.json" in page2
    assert not list((tmp_path / "bad_figures").glob("*.png"))


def test_rows_with_missing_fields_still_render(tmp_path):
    """A results.csv from another tool: only the columns load_run requires (every row names its model and status,
    bench/results/validate.py), blanks and odd values elsewhere."""
    d = tmp_path / "foreign"
    d.mkdir()
    pd.DataFrame({"model": ["a:msla", "a:softmax", "c", "b"], "status": ["ok", "error", "ok", "ok"],
                  "latency_ms_median": [1.0, 2.0, float("nan"), 0.0]}).to_csv(d / "results.csv", index=False)
    out = write_report([d], tmp_path / "f.html")
    page = htmllib.unescape(out.read_text())
    assert "Cases not ok" in page and "figure failed" not in page
    empty = write_fixture_run(tmp_path / "empty", [], meta=dict(run_id="empty"))
    page = htmllib.unescape(write_report([empty], tmp_path / "e.html").read_text())
    assert "the runs have no rows at all" in page and "figure failed" not in page


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    p = argparse.ArgumentParser()
    add_report_arguments(p)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.parquet").write_bytes(b"not parquet")
    for target in (tmp_path / "nope", tmp_path / "broken"):
        rc = cmd_report(p.parse_args([str(target), "--out", str(tmp_path / "r.html")]))
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and err.startswith("report: error:")


def test_cli_default_out(tmp_path, monkeypatch):
    assert default_out([Path("results/abc")]) == Path("reports/abc.html")
    assert default_out([Path("results/a"), Path("results/b")]) == Path("reports/merged-a+b.html")
    long = default_out([Path(f"results/{'x' * 60}{i}") for i in range(3)])
    assert long.name.startswith("merged-") and len(long.name) < 120
    run = write_fixture_run(tmp_path / "r1", [report_row("r1", "h", "block:msla", "msla", "block", "Fixture H100 (GPU)",
                                                   0, s, s) for s in (512, 1024)], meta=dict(run_id="r1"))
    monkeypatch.chdir(tmp_path)
    p = argparse.ArgumentParser()
    add_report_arguments(p)
    assert cmd_report(p.parse_args([str(run)])) == 0
    assert (tmp_path / "reports" / "r1.html").exists() and (tmp_path / "reports" / "r1.md").exists()


def test_reference_models_guarded(merged_report):
    out, _ = merged_report
    page = out.read_text()
    # either the registry's published numbers (labelled) or a line saying why they are not shown
    assert "PUBLISHED" in page
    assert ('id="reference-table"' in page) or ("published numbers not shown" in page) or \
        ("has no published numbers" in page)


def _quick_run_available() -> str | None:
    if not (ROOT / "run_bench.py").exists() or not (ROOT / "bench" / "runner.py").exists():
        return "the engine (run_bench.py, bench/runner.py) is not there yet"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_quick_run_available() is not None, reason=str(_quick_run_available()))
def test_report_of_a_real_quick_run(tmp_path, capfd):
    """End to end: `run_bench.py --quick --repeats 2` measures real cases in two processes each and writes its
    report through write_report (speedup CIs from the bootstrap over processes)."""
    from bench.cli import main

    res = tmp_path / "results"
    rc = main(["--quick", "--design", "isolated", "--repeats", "2", "--out", str(res), "-q"])  # in this process
    out, err = capfd.readouterr()  # its children's output too, as the script's process would show it
    assert rc == 0, err[-2000:]
    runs = sorted(d for d in res.iterdir() if (d / "results.parquet").exists())
    assert len(runs) == 1, f"no run folder in {res}"
    html_path = tmp_path / "reports" / f"{runs[0].name}.html"
    assert html_path.exists(), out + err
    assert html_path.with_suffix(".md").exists()
    page = html_path.read_text()
    run = load_run(runs[0])
    assert page.count('<tr class="st-') == len(run.results) > 0
    c = _parse(page)
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in c.tags if t == "img")
    assert "figure failed" not in page
    assert (run.results.loc[run.results["status"] == "ok", "repeats"] == 2).all()
    assert "Processes per case</dt><dd>2 " in page
    # the CLI subcommand answers bad input with exit 2 and one line
    rc = main(["report", str(tmp_path / "nope")])
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------------------
# data-derived strings in the Markdown and the figures; a report that fails (issue 12)

DOLLAR = "a$x_1_2$b"  # mathtext would parse it (and fail: double subscript) if it were drawn as math
HOSTILE_MD = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a~~b~~c", "[l](javascript:x)",
              "`code`"]
RAW_MD = ["<script", "<img", "~~", "$x", "](javascript", "`code`", "\n- item", "\n## - item"]


def _unescaped(text: str, raw: str) -> bool:
    """raw in text with no backslash before it: Markdown would give it its meaning."""
    return re.search(r"(?<!\\)" + re.escape(raw), text) is not None


def _small_run(tmp: Path, run_id: str, model: str = "evit-b0", dev: str = "Fixture Xeon 8480 (CPU)",
               host: str = "h", scale: float = 1.0, reason: str = "") -> Path:
    rows = [report_row(run_id, host, f"{model}:{mixer}", mixer, "model", dev, 1, s, s,
                       lat=scale * s / 100 * (4 if mixer == "softmax" else 1))
            for s in (512, 1024, 2048) for mixer in ("msla", "softmax")]
    if reason:
        rows.append(report_row(run_id, host, f"{model}:large-kernel", "large-kernel", "model", dev, 1, 512, 512,
                               status="error", reason=reason))
    return write_fixture_run(tmp / "runs" / re.sub(r"[^A-Za-z0-9]", "_", run_id), rows, meta=dict(run_id=run_id))


def test_report_markdown_escapes_every_data_string(tmp_path):
    """Run ids (title, runs line), device names (headings), model names and reasons (tables) of the .md."""
    name = "- item"
    run = _small_run(tmp_path, " ".join(HOSTILE_MD), model=DOLLAR, dev=name + " " + HOSTILE_MD[2],
                     host=HOSTILE_MD[1], reason=" ".join(HOSTILE_MD))
    md = write_report([run], tmp_path / "out" / "r.html").with_suffix(".md").read_text()
    assert "## \\- item a\\~\\~b\\~\\~c" in md and "Cases not ok (1)" in md
    for raw in RAW_MD:
        assert not _unescaped(md, raw), raw
    assert md_escape(DOLLAR) in md and "&lt;img src=x onerror=alert(1)&gt;" in md


def test_dollar_names_do_not_break_the_figures(tmp_path):
    """A name with `$...$` is drawn as itself in every figure, not parsed as mathtext."""
    out = write_report([_small_run(tmp_path, "r", model=DOLLAR)], tmp_path / "out" / "r.html")
    page = htmllib.unescape(out.read_text())
    assert "figure failed" not in page
    figs = tmp_path / "out" / "r_figures"
    for key in ("latency_vs_resolution", "speedup", "latency_distributions"):  # the figures that name models
        assert (figs / f"{key}.png").stat().st_size > 0 and DOLLAR in (figs / f"{key}.svg").read_text(), key
    assert (figs / "macs_vs_latency.png").stat().st_size > 0  # its points are labelled by resolution, not model


def test_figure_failure_reason_is_never_empty():
    from bench.analysis.report.figures import failure_reason

    assert failure_reason(ValueError("\n\\frac{b\n     ^\nParseSyntaxException: x")) == \
        "figure failed (ValueError: \\frac{b)"
    assert failure_reason(RuntimeError()) == "figure failed (RuntimeError)"
    assert failure_reason(KeyError("col")) == "figure failed (KeyError: 'col')"


def _tree(d: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def test_failed_report_keeps_the_previous_one_and_leaves_no_temporaries(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "out"
    write_report([_small_run(tmp_path, "first")], out / "r.html")
    (out / "r.md").unlink()
    (out / "r.md").mkdir()  # the summary cannot be written: the second report fails after drawing its figures
    before = _tree(out)
    assert any(k.startswith("r_figures/") for k in before)
    assert main(["report", str(_small_run(tmp_path, "second", scale=3.0)), "--out", str(out / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report: error: cannot write ") and "r.md" in err, err
    assert _tree(out) == before  # the previous page and figures, byte for byte; no temporary file or folder


def test_failed_first_report_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "r.md").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        write_report([_small_run(tmp_path, "first")], out / "r.html")
    assert [p.name for p in out.iterdir()] == ["r.md"]


def test_figures_folder_holds_this_reports_figures_only(tmp_path):
    out = tmp_path / "out"
    write_report([_small_run(tmp_path, "first")], out / "r.html")
    assert (out / "r_figures" / "speedup.png").exists()
    (out / "r_figures" / "notes.txt").write_text("mine")  # not ours: kept
    bad = write_fixture_run(tmp_path / "bad", [report_row("bad", "h", "evit-b0:msla", "msla", "model",
                                                          "Fixture H100 (GPU)", 0, 512, 512, status="oom")],
                            meta=dict(run_id="bad"))
    write_report([bad], out / "r.html")
    assert sorted(p.name for p in (out / "r_figures").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["r.html", "r.md", "r_figures"]
