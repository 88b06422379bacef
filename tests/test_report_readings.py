"""Readings are computed from the data and carry their uncertainty (issue 14): a caption can come out either way,
an uncertain exponent is inconclusive, a ratio without a CI is never a win."""
from __future__ import annotations

import html as htmllib
import math
import re

import numpy as np
import pytest

from bench.analysis.report import readings, write_report
from bench.analysis.report.scaling import fit_exponent
from bench.analysis.report.html import _speedup_cell
from bench.analysis.report.figures import FIGURES
from tests.runfactory import report_row, write_fixture_run

CPU = "Fixture Xeon 8480 (CPU)"
FIXED_CONCLUSIONS = ("do not predict", "predict latency well", "sub-linear", "quadratic in", "msla is faster than", "msla wins",
                     "inconclusive")


def _run(tmp, name: str, latency) -> "Path":
    """evit-b0 and evit-b1 with all four mixers at three sizes; latency(row) gives each case's median."""
    rows = []
    for base in ("evit-b0", "evit-b1"):
        for mixer in ("msla", "relu-linear", "softmax", "large-kernel"):
            for s in (512, 1024, 2048):
                r = report_row(name, "h", f"{base}:{mixer}", mixer, "model", CPU, 1, s, s)
                med = float(latency(r))
                r.update(latency_ms_median=med, latency_ms_ci_low=med * 0.99, latency_ms_ci_high=med * 1.01)
                rows.append(r)
    return write_fixture_run(tmp / name, rows, meta=dict(run_id=name))


def _captions(page: str) -> dict[str, str]:
    return {k: htmllib.unescape(re.sub(r"<[^>]+>", "", c))
            for k, c in re.findall(r'<figure[^>]*id="fig-([a-z_]+)".*?<figcaption>(.*?)</figcaption>', page, re.S)}


def test_no_caption_template_types_a_conclusion():
    for key, _title, caption, _build in FIGURES:
        assert not any(w in caption for w in FIXED_CONCLUSIONS), key


def test_macs_caption_says_what_the_data_says(tmp_path):
    """Latency proportional to MACs: 'MACs predict latency well'; latency unrelated to MACs: 'do not predict'."""
    rng = np.random.default_rng(3)
    good = _run(tmp_path, "macs-good", lambda r: r["macs"] / 1e9 * 0.8 * rng.lognormal(0, 0.02))
    bad = _run(tmp_path, "macs-bad", lambda r: rng.uniform(5, 500))
    said = {}
    for run in (good, bad):
        page = write_report([run], tmp_path / "out" / f"{run.name}.html").read_text()
        said[run.name] = _captions(page)["macs_vs_latency"]
    assert "MACs predict latency well" in said["macs-good"], said["macs-good"]
    assert "MACs do not predict latency" in said["macs-bad"], said["macs-bad"]
    assert re.search(r"R² 0\.9\d|R² 1\.00", said["macs-good"])


def test_noisy_run_reads_inconclusive(tmp_path):
    """Latency that does not scale with pixels at all: the exponents' CIs are wide, R² low: inconclusive."""
    rng = np.random.default_rng(5)
    page = write_report([_run(tmp_path, "noisy", lambda r: rng.uniform(10, 100))],
                        tmp_path / "out" / "noisy.html").read_text()
    cap = _captions(page)["latency_vs_resolution"]
    assert "inconclusive" in cap and "near linear" not in cap and "sub-linear" not in cap, cap
    head = page[page.index('id="headline"'):page.index('id="figures"')]
    assert "inconclusive" in head


def test_clean_scaling_reads_its_band(tmp_path):
    page = write_report([_run(tmp_path, "clean", lambda r: 1e-5 * r["height"] * r["width"])],
                        tmp_path / "out" / "clean.html").read_text()
    cap = _captions(page)["latency_vs_resolution"]
    assert "near linear" in cap and "inconclusive" not in cap, cap


@pytest.mark.parametrize("k, lo, hi, r2, word", [
    (1.0, 0.95, 1.05, 0.999, "near linear"),
    (0.5, 0.4, 0.6, 0.99, "sub-linear"),
    (1.9, 1.8, 2.0, 0.99, "near quadratic"),
    (-0.1, -3.8, 3.6, 0.1, "inconclusive"),   # the example
    (1.25, 1.2, 1.4, 0.99, "inconclusive"),   # the CI crosses a band edge
    (1.0, 0.2, 1.9, 0.95, "inconclusive"),    # too wide
])
def test_exponent_reading_rule(k, lo, hi, r2, word):
    got = readings.exponent_reading(dict(exponent=k, ci_low=lo, ci_high=hi, r2=r2, n_sizes=3))
    assert got.startswith(word), got


def test_two_sizes_have_no_ci_and_are_inconclusive():
    f = fit_exponent([512 ** 2, 1024 ** 2], [1.0, 4.0])
    assert math.isnan(f["ci_low"]) and readings.exponent_reading(f).startswith("inconclusive")


def test_a_ratio_without_ci_is_never_green():
    x = dict(speedup=3.0, ci_low=float("nan"), ci_high=float("nan"), baseline="softmax", baseline_model="a",
             target_model="b", baseline_ms=3.0, target_ms=1.0, noisy=False)
    assert readings.speedup_verdict(3.0, float("nan"), float("nan")) == "no CI"
    assert "win" not in _speedup_cell(x)["cls"]
    x.update(ci_low=2.5, ci_high=3.5)
    assert _speedup_cell(x)["cls"] == "win"
    x.update(ci_low=0.9, ci_high=3.5)
    assert _speedup_cell(x)["cls"] == "tie"


def test_a_ratio_resting_on_few_samples_is_never_green():
    """evit-b1:softmax at 2048 gets one timed iteration on a 2-core VM: its bootstrap CI is not a verdict."""
    x = dict(speedup=4.6, ci_low=4.0, ci_high=4.8, baseline="softmax", baseline_model="a", target_model="b",
             baseline_ms=4.6, target_ms=1.0, noisy=False, n_min=1)
    cell = _speedup_cell(x)
    assert cell["cls"] == "na" and "few samples" in cell["title"]
    assert readings.speedup_verdict(4.6, 4.0, 4.8, readings.MIN_N) == "win"
