"""Machine health (bench.health, bench.results.noise): the bounds on synthetic figures, the guard's probe schedule, the words in the
summary and the report, the child's CPU seconds through both isolations, and a real CPU hog flagging a run."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench
from bench import health
from bench.analysis.summary import format_summary
from bench.health import CpuMark, Guard, process_health
from bench.results.noise import Bounds, ProcessHealth, judge, noisy_sentence, verdict
from bench.launch.isolation import ForkServer, Spawner
from bench.results.store import load_run
from tests.runfactory import XSS_SCRIPT, case, make_run

B = Bounds(others_cores=0.25, steal_frac=0.05, drift=0.30)
PROBES = [{"gmacs_per_s": 40.0}, {"gmacs_per_s": 40.0 * 1.29}, {"gmacs_per_s": 40.0 * 1.31}]


def ph(others=0.0, steal=0.0, before=0, after=None, repeat=0) -> ProcessHealth:
    return ProcessHealth(repeat=repeat, wall_s=1.0, others_cores=others, steal_frac=steal, load_avg=1.0,
                         probe_before=before, probe_after=after)


@pytest.mark.parametrize("h, kinds", [
    (ph(others=0.24), []), (ph(others=0.26), ["others"]),
    (ph(steal=0.049), []), (ph(steal=0.051), ["steal"]),
    (ph(before=0, after=1), []), (ph(before=0, after=2), ["drift"]),
    (ph(before=2, after=0), ["drift"]),  # a speed-up drifts as much as a slow-down
    (ph(others=None), []),  # the child's CPU time unknown: not judged rather than guessed
    (ph(before=0, after=None), []),  # no probe after the case yet: drift not judged until there is one
    (ph(others=0.9, steal=0.2, before=0, after=2), ["others", "steal", "drift"]),
])
def test_bounds_flag_and_unflag_exactly(h, kinds):
    got, reason = judge(h, PROBES, B)
    assert got == kinds
    assert bool(reason) == bool(kinds)


def test_reason_names_the_violated_figure_first_with_its_bound():
    _, reason = judge(ph(others=0.9, before=0, after=1), PROBES, B)
    assert reason.startswith("other processes used 0.90 cores during the case (bound 0.25 cores)")
    assert "steal 0%" in reason and "drifted 29%" in reason and "load average 1.0" in reason
    _, reason = judge(ph(others=0.1, before=0, after=2), PROBES, B)
    assert reason.startswith("speed probe drifted 31% around the case (40.0 -> 52.4 GMAC/s; bound 30%)")


def test_process_health_subtracts_the_child_and_the_parent():
    before = CpuMark(wall=10.0, busy_s=100.0, steal_s=5.0, self_s=1.0)
    after = CpuMark(wall=12.0, busy_s=104.0, steal_s=5.2, self_s=1.5)  # 4 busy s: 2 child + 0.5 parent + 1.5 other
    h = process_health(before, after, child_cpu_s=2.0, cores=2, repeat=1, probe_before=3)
    assert h.others_cores == pytest.approx(0.75) and h.steal_frac == pytest.approx(0.05)
    assert (h.repeat, h.probe_before, h.probe_after) == (1, 3, None)
    assert process_health(before, after, None, 2, 0, None).others_cores is None


def test_verdict_of_a_row_measured_in_several_processes():
    recs = [vars(ph(repeat=0)), vars(ph(others=0.5, repeat=1)), vars(ph(repeat=2))]
    noisy, reason = verdict(recs, PROBES, repeats=3, bounds=B)
    assert noisy and reason.startswith("process 2 of 3: other processes used 0.50 cores")
    assert verdict([vars(ph())], PROBES, 1, B) == (False, "")
    assert verdict([], PROBES, 1, B) == (False, "")


def test_guard_schedule_and_drift_judged_when_the_next_probe_comes():
    rates = iter([40.0, 60.0, 61.0])
    meta: dict = {}
    g = Guard(meta, lambda: {"gmacs_per_s": next(rates), "n": 5}, cores=2, bounds=B, every_s=3600.0)
    assert g.due(0) == "start"
    g.run_probe("start", 0)
    assert g.due(0) is None and g.due(1) == "before pass 2"
    quiet = CpuMark(0.0, 0.0, 0.0, 0.0)
    g.record("a", 0, quiet, CpuMark(1.0, 1.0, 0.0, 0.0), child_cpu_s=1.0)
    assert g.verdict("a") == (False, "")  # drift not known yet
    assert g.run_probe("before pass 2", 1) == {"a"}
    noisy, reason = g.verdict("a")
    assert noisy and "speed probe drifted 50% around the case (40.0 -> 60.0 GMAC/s" in reason
    g.record("b", 1, quiet, CpuMark(1.0, 1.0, 0.0, 0.0), child_cpu_s=1.0)
    assert g.run_probe("end") == {"b"} and g.verdict("b") == (False, "")
    s = g.summarize()
    assert s["noisy"] == 1 and s["causes"] == {"drift": 1} and s["drift"] == pytest.approx(0.525, abs=1e-3)
    assert meta["health"]["bounds"] == {"others_cores": 0.25, "steal_frac": 0.05, "drift": 0.30}
    assert [p["when"] for p in meta["health"]["probes"]] == ["start", "before pass 2", "end"]
    assert Guard(meta, lambda: {}, every_s=0.0).due(0) == "start"  # a resumed session probes afresh


def test_sentence_is_computed_from_the_counts_and_figures():
    s = {"causes": {"others": 3}, "others_cores_max": 0.93, "drift": 0.22, "steal_frac_max": 0.0}
    assert noisy_sentence(3, 24, s) == ("3 of 24 cases were measured on a busy machine (other processes used up to "
                                        "0.9 cores; speed probe drifted 22%): their figures are not comparable; "
                                        "see noisy_reason")
    assert "a drifting machine" in noisy_sentence(1, 2, {"causes": {"drift": 1}, "drift": 0.4})
    assert noisy_sentence(0, 24, s) == ""
    assert noisy_sentence(2, 5) == ("2 of 5 cases were measured on a busy machine: their figures are not "
                                    "comparable; see noisy_reason")


def _results(noisy: list[bool]) -> pd.DataFrame:
    from bench.results.store import results_frame

    rows = [case(f"block:m{i}", samples=[1.0, 1.1, 1.2]) for i in range(len(noisy))]
    for r, n in zip(rows, noisy):
        r.pop("_samples")
        r.update(noisy=n, noisy_reason="other processes used 0.90 cores during the case" if n else "")
    return results_frame(rows)


def test_summary_prints_the_line_only_when_a_case_is_noisy():
    h = {"summary": {"causes": {"others": 1}, "others_cores_max": 0.9, "drift": 0.05}}
    out = format_summary(_results([True, False, False]), h)
    assert out.rstrip().splitlines()[-1] == ("warning: 1 of 3 cases were measured on a busy machine (other processes "
                                              "used up to 0.9 cores; speed probe drifted 5%): their figures are not "
                                              "comparable; see noisy_reason")
    assert "busy machine" not in format_summary(_results([False, False]), h)


def test_report_warns_at_the_top_marks_rows_and_escapes(tmp_path):
    rows = [case("block:msla", samples=np.array([1.0, 1.1, 1.2]), noisy=True, noisy_reason=f"odd {XSS_SCRIPT}"),
            case("block:softmax", samples=np.array([2.0, 2.1, 2.2]), noisy=False, noisy_reason="")]
    d = make_run(tmp_path, "r1", rows)
    meta = json.loads((d / "meta.json").read_text())
    meta["health"] = {"summary": {"causes": {"others": 1}, "others_cores_max": 0.93, "drift": 0.12}}
    (d / "meta.json").write_text(json.dumps(meta))
    out = bench.report([d], tmp_path / "rep" / "r.html")
    html, md = out.read_text(), out.with_suffix(".md").read_text()
    sentence = ("1 of 2 cases were measured on a busy machine (other processes used up to 0.9 cores; speed probe "
                "drifted 12%): their figures are not comparable; see noisy_reason")
    assert html.index('id="health-warning"') < html.index('id="headline"') and sentence in html
    assert html.count('noisy"><td') == 1  # the one noisy row of the case table is marked
    assert XSS_SCRIPT not in html and "&lt;script&gt;" in html
    assert sentence.replace("_", "\\_") in md and "## Cases measured on a busy machine (1)" in md
    assert XSS_SCRIPT not in md


def test_child_cpu_seconds_come_back_through_both_isolations(tmp_path):
    spec = {"kind": "health", "seconds": 0.3}
    fork = ForkServer(tmp_path)
    try:
        out = fork.run(spec, 120.0)
    finally:
        fork.close()
    spawned = Spawner(tmp_path).run(spec, 120.0)
    for o in (out, spawned):
        assert o.result and o.result.health["gmacs_per_s"] > 0 and o.result.health["n"] >= 5
        # it spun 0.3 s of wall time on one thread: ~0.3 s of CPU on a quiet machine, 0.16 s measured with four
        # other test processes on 2 cores; a child whose CPU time was lost would give ~0
        assert 0.05 <= o.cpu_s <= o.wall_s * 2 + 0.1


def _hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_a_real_cpu_hog_flags_the_run(tmp_path):
    hogs = _hogs(2)
    try:
        time.sleep(0.5)
        run = bench.run(["block:msla"], level="block", res=[64, 96], devices="cpu,cuda:7", allow_missing=True,
                        threads=1, min_time=0.2, max_time=0.5, calibrate=False, out=tmp_path, report=False)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    res = run.results.set_index("device")
    measured, skipped = res.loc[["cpu"]], res.loc[["cuda:7"]]
    assert len(measured) == 2 and measured["noisy"].all()
    assert measured["noisy_reason"].str.startswith("other processes used").all()
    assert (~skipped["noisy"].astype(bool)).all() and (skipped["noisy_reason"] == "").all()
    recs = [r for rs in run.meta["health"]["cases"].values() for r in rs]
    assert len(recs) == 2 and all(r["others_cores"] >= 0.8 for r in recs)  # two spinning processes: >= 1 core
    h = run.meta["health"]
    assert [p["when"] for p in h["probes"]] == ["start", "end"] and all(p["gmacs_per_s"] for p in h["probes"])
    assert h["summary"]["noisy"] == 2 and h["summary"]["causes"]["others"] == 2
    assert "2 of 4 cases were measured on a busy machine" in format_summary(run.results, h)
    assert load_run(Path(run.path)).results["noisy"].sum() == 2  # stored, not only in memory
