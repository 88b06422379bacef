"""The terminal and the files of a run: start message, progress label, learned ETA, end summary, --list, where the
report goes (--report-dir and its default), compare by run id, `models --help`. Real CLI runs (a pty for stderr
where the progress bar needs a terminal); no time is asserted in absolute terms."""
from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import runfactory as rf
from bench import api
from bench.analysis.summary import duration, format_summary
from bench.cli import build_parser, main
from bench.commands.listing import rough_estimates
from bench.terminal import Progress, learned_eta, learned_ratio
from bench.plan import make_plan
from bench.results.store import results_frame
from models.registry import FAMILIES

REPO = Path(__file__).resolve().parent.parent
TINY = ["--models", "block:msla,block:softmax", "--level", "block", "--res", "64", "--min-time", "0.05",
        "--max-time", "0.2", "--no-calibrate", "--design", "isolated"]


def _main(*args: str, cwd: Path, monkeypatch, capfd) -> subprocess.CompletedProcess:
    """`run_bench.py ARGS` run from `cwd`, through the CLI's main in this process: its exit status and output,
    without an interpreter and torch to start each time (the script's own process: tiny_run, tests/test_cli.py).
    capfd: what its children print to the inherited stdout/stderr counts too, as it would in the script's."""
    monkeypatch.chdir(cwd)
    capfd.readouterr()
    rc = main(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["run_bench.py", *args], rc, out, err)


def _cli_tty(*args: str, cwd: Path) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as a user sees it: the progress bar is on); rc, stdout, stderr."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, str(REPO / "run_bench.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                b = os.read(master, 4096)
            except OSError:  # EIO once the child's side is closed
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    out, _ = p.communicate(timeout=300)
    t.join(10)
    os.close(master)
    return p.returncode, out, b"".join(chunks).decode(errors="replace")


def _one_line_error(stderr: str, *needles: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """One real two-case run in a fresh working folder, stderr on a pty; the default report location."""
    cwd = tmp_path_factory.mktemp("work")
    rc, out, err = _cli_tty(*TINY, "--out", "runs", cwd=cwd)
    assert rc == 0, err
    (run_dir,) = list((cwd / "runs").iterdir())
    return {"cwd": cwd, "run_dir": run_dir, "out": out, "err": err}


# -- the ETA and the progress label ----------------------------------------------------------------------------

def test_learned_eta_scales_what_is_left_by_measured_over_estimated():
    est = [1.0, 2.0, 3.0, 4.0]
    assert learned_eta(est, 0, 0.0) == pytest.approx(10.0)  # nothing done: the estimates as they are
    assert learned_eta(est, 2, 6.0) == pytest.approx(2.0 * 7.0)  # 6 s for 3 estimated: twice as slow
    assert learned_eta(est, 2, 1.5) == pytest.approx(0.5 * 7.0)
    assert learned_eta(est, 4, 20.0) == 0.0
    assert learned_ratio(est, 1, 1e6) == 20.0 and learned_ratio(est, 1, 1e-9) == 0.05  # bounded
    p = Progress(enabled=False)
    p.set_estimates(est)
    p._t0 = 100.0
    assert p.eta_s(2, 4, now=103.0) == pytest.approx(1.0 * 7.0)


def test_progress_label_has_no_stray_separator():
    plan = make_plan("block:msla,block:softmax", level="block", res="64", calibrate=False)
    buf = io.StringIO()
    p = Progress(enabled=True, file=buf)
    p.set_estimates([1.0] * len(plan.cases))
    for i, c in enumerate(plan.cases):
        p(c, i, len(plan.cases))
    p.close()
    text = buf.getvalue()
    assert plan.cases[1].label() in text and "2/2" not in text and "1/2" in text
    assert ", " not in text and ",]" not in text and "[," not in text, repr(text)


def test_start_message_names_calibration_when_it_runs(tmp_path):
    from bench.commands.run import _starting

    plan = make_plan("block:msla", level="block", res="64", threads="1")
    state = api.start(plan, tmp_path / "results", run_id="s")
    try:
        assert _starting(state, plan) == "starting the worker and calibrating cpu|fp32|t1 ..."
    finally:
        state.close()


# -- a real run: start message, bar, summary, report -------------------------------------------------------------

def test_run_prints_start_message_progress_and_summary(tiny_run):
    err, out = tiny_run["err"], tiny_run["out"]
    assert "starting the worker ..." in err
    assert err.index("starting the worker") < err.index("block:msla 64x64")  # before the first case
    assert re.search(r"\d/2: .*block:\S+ 64x64 cpu eager fp32 b1 t\d+ \[\d\d:\d\d<\d\d:\d\d\]", err), err
    bars = [seg for seg in re.split(r"[\r\n]", err) if re.match(r"\d/2: ", seg)]
    assert bars and not any(", " in seg for seg in bars), bars
    meta = json.loads((tiny_run["run_dir"] / "meta.json").read_text())
    assert meta["wall_s"] > 0
    assert f"wall time {duration(meta['wall_s'])}" in out
    assert re.search(r"\d+\.\d+ ms \[\d+\.\d+, \d+\.\d+\]", out), out  # median and its 95% CI, with the unit
    # the CI's level is 95% unless a case has too few samples for it (a busy machine): the header says which
    assert "median [95% CI]" in out or "median [CI, 95% unless shown]" in out, out
    assert re.search(r"2 cases, [012] of 2 ok converged", out), out


def test_report_goes_beside_the_results_folder_named(tiny_run):
    run_dir, cwd = tiny_run["run_dir"], tiny_run["cwd"]
    assert (cwd / "reports" / f"{run_dir.name}.html").is_file()
    assert f"report: reports/{run_dir.name}.html" in tiny_run["out"]


def test_report_dir_is_used(tiny_run, tmp_path, monkeypatch, capfd):
    run_dir = tiny_run["run_dir"]
    r = _main("--resume", run_dir.name, "--out", "runs", "--report-dir", str(tmp_path / "rd"), cwd=tiny_run["cwd"],
              monkeypatch=monkeypatch, capfd=capfd)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rd" / f"{run_dir.name}.html").is_file()
    assert f"report: {tmp_path / 'rd' / run_dir.name}.html" in r.stdout


@pytest.mark.parametrize("run_dir,report_dir,expected", [
    ("results/abc", None, "reports/abc.html"),  # one-part OUT: reports/ in the working folder
    ("abc", None, "reports/abc.html"),  # OUT '.': inside it, not in the folder above
    ("../abc", None, "../reports/abc.html"),  # OUT '..': inside it, not two levels up
    ("/data/x/results/abc", None, "/data/x/reports/abc.html"),
    ("/tmp/abc", None, "/tmp/reports/abc.html"),  # OUT at the root: OUT/reports, never /reports
    ("results/abc", "elsewhere", "elsewhere/abc.html"),
])
def test_report_path_rule(run_dir, report_dir, expected):
    assert api.report_path(Path(run_dir), report_dir) == Path(expected)


def test_bad_report_dir_is_one_line(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert main([*TINY, "--out", str(tmp_path / "r"), "--report-dir", str(f / "reports")]) == 2
    _one_line_error(capsys.readouterr().err, "--report-dir", "not a folder")
    assert main([*TINY, "--out", str(tmp_path / "r"), "--report-dir", " "]) == 2
    _one_line_error(capsys.readouterr().err, "--report-dir", "empty")
    assert not (tmp_path / "r").exists()


def test_summary_marks_unconverged_cases():
    rows = [rf.case("block:msla", samples=rf.noise(1)), rf.case("block:softmax", samples=rf.noise(2),
                                                                converged=False)]
    for r in rows:
        r.pop("_samples")
    text = format_summary(results_frame(rows), None, wall_s=222.0)
    assert "wall time 3 min 42 s" in text and "2 cases, 1 of 2 ok converged" in text
    assert re.search(r"block:softmax +\d+\.\d+ ms \[[\d.]+, [\d.]+\]\*", text), text
    assert "wall time" not in format_summary(results_frame(rows))  # older runs have no wall time


# -- compare by run id ------------------------------------------------------------------------------------------

def test_compare_accepts_run_ids(tmp_path, monkeypatch, capfd):
    cases = [rf.case("block:msla", samples=rf.noise(1)), rf.case("block:softmax", samples=rf.noise(2))]
    rf.make_run(tmp_path / "results", "base", cases)
    rf.make_run(tmp_path / "results", "cur", cases)
    r = _main("compare", "base", "cur", cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd)  # default --out
    assert r.returncode == 0, r.stderr
    assert "block:msla" in r.stdout
    r = _main("compare", "base", str(tmp_path / "results" / "cur" / "results.parquet"), "--out",
              str(tmp_path / "results"), cwd=REPO, monkeypatch=monkeypatch, capfd=capfd)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,needles", [
    (["compare", "base", "nope"], ["CURRENT", "no run 'nope'", "accepted: a run id"]),
    (["compare", "", "base"], ["BASELINE", "empty"]),
    (["compare", "base", "results"], ["CURRENT", "not a run folder"]),
    (["--baseline", "nope", *TINY], ["--baseline", "no run 'nope'"]),
])
def test_compare_bad_run_is_one_line(tmp_path, args, needles, monkeypatch, capfd):
    rf.make_run(tmp_path / "results", "base", [rf.case("block:msla", samples=rf.noise(1))])
    r = _main(*args, cwd=tmp_path, monkeypatch=monkeypatch, capfd=capfd)
    assert r.returncode == 2 and r.stdout == ""
    _one_line_error(r.stderr, *needles)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["base"]  # nothing measured


# -- --list and models --help -----------------------------------------------------------------------------------

def test_list_shows_estimates_and_total(tmp_path, capsys):
    assert main(["--list", "--design", "isolated", "--models", "block:msla,block:softmax", "--level", "block", "--res", "64,2048",
                 "--out", str(tmp_path / "r")]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == 4 and all(re.fullmatch(r"block:[^\t]+\t~\d+\.\d s", ln) for ln in lines), lines
    assert re.search(r"^4 cases, about .+ in all \(rough", cap.err, re.M), cap.err
    assert not (tmp_path / "r").exists()
    plan = make_plan("block:softmax", level="block", res="64,2048")
    small, big = rough_estimates(plan.cases)
    assert 0 < small < big  # 4096x more tokens cost more time
    assert sum(rough_estimates(plan.cases, 3)) > sum(rough_estimates(plan.cases))  # --repeats adds processes


def test_models_help_documents_every_option_and_family(capsys):
    with pytest.raises(SystemExit) as e:
        main(["models", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in FAMILIES:
        assert re.search(rf"\b{re.escape(f)}\b +\d+ model", text), f
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["models"]
    for action in sub._actions:
        assert action.help, action.option_strings
        for opt in action.option_strings:
            assert opt in text
