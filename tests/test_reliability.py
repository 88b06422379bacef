"""Nothing measured is lost: one writer per run folder, one commit per case, every file checked on load.

Each test reproduces a fault of issue 12 for real (a second writer while a run is live, kill -9, a write that
fails between two files, a file-size limit hit mid-run, hand-damaged files, another machine) and asserts what
the suite promises: one line and exit 2 for what it refuses, and every stored case kept.
"""
import contextlib
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.results import store
from bench.results.lifecycle import create_run, open_run
from bench.results.lock import RunLock, RunLocked
from tests import runfactory as rf

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "run_bench.py")]
# block:msla at 64 (ok), block:relu-linear at 64 (hangs until --timeout with the fault below), then the rest
MATRIX = ["--models", "block:msla,block:relu-linear", "--level", "block", "--res", "64,96", "--threads", "1",
          "--min-time", "0.3", "--max-time", "0.5", "--no-report", "--no-calibrate", "-q"]
HANG = "hang@block:relu-linear"
# The runs a test kills or fills up are about storage (the lock, kill -9, SIGTERM, a full disk), not the design: each
# case in its own processes, so the first row is committed before the hang (interleaved, each resolution's group
# would first time out as a whole, then measure its cases one by one; tests/test_runner.py keeps that path)
ISOLATED = ["--design", "isolated"]


def _one_line(stderr: str, *needles: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _start(out: Path, *extra: str, fault: str = HANG, timeout: str = "20") -> subprocess.Popen:
    env = dict(os.environ, DENSEBENCH_FAULT=fault)
    return subprocess.Popen(RUN + MATRIX + ISOLATED + ["--out", str(out), "--timeout", timeout, *extra], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_rows(p: subprocess.Popen, out: Path, n: int, limit_s: float = 150) -> Path:
    """The run folder once it has committed n rows (the process must still be running)."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        for f in out.glob("*/results.parquet") if out.exists() else []:
            try:
                if len(pd.read_parquet(f)) >= n:
                    return f.parent
            except Exception:
                pass
        assert p.poll() is None, p.communicate()
        time.sleep(0.1)
    p.kill()
    raise AssertionError(f"the run did not commit {n} rows in {limit_s} s")


def _cli(*argv: str) -> subprocess.CompletedProcess:
    """run_bench.py ARGV through the CLI's main in this process: its exit status and what it printed, as the
    script's process would give them, without an interpreter and torch to start each time (the runs a test kills
    or fills up are processes of their own)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return subprocess.CompletedProcess(["run_bench.py", *argv], rc, out.getvalue(), err.getvalue())


def _resume(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("--resume", str(run_dir), "-q", "--no-report", *extra)


def _started(run_dir: Path) -> dict:
    return store.load_run(run_dir).results.set_index("case_id")["started_at"].to_dict()


# -- one writer -----------------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_kill_9_loses_nothing(tmp_path):
    """The concurrent resume of issue 12: a live run is not resumed by a second process; after kill -9 of the
    first, the resume keeps every committed case and measures the rest."""
    out = tmp_path / "results"
    p = _start(out)
    run_dir = _wait_rows(p, out, 1)  # then block:relu-linear hangs: the run is live for ~20 s
    second = _resume(run_dir)
    assert second.returncode == 2
    _one_line(second.stderr, "is being written by process", str(p.pid), "--resume")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = _started(run_dir)
    assert len(before) >= 1
    time.sleep(1.1)  # started_at has 1 s resolution
    third = _resume(run_dir)
    assert third.returncode == 0, third.stderr
    run = store.load_run(run_dir)
    assert len(run.results) == 4 and run.results["status"].eq("ok").all()
    after = run.results.set_index("case_id")["started_at"].to_dict()
    assert all(after[c] == t for c, t in before.items())  # 0 committed cases lost or redone
    assert set(run.samples["case_id"]) == set(run.results["case_id"])


def test_sigterm_saves_the_run_as_interrupted_and_resume_finishes_it(tmp_path):
    out = tmp_path / "results"
    p = _start(out)
    run_dir = _wait_rows(p, out, 1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "--resume" in err, err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    before = _started(run_dir)
    again = _resume(run_dir)
    assert again.returncode == 0, again.stderr
    after = _started(run_dir)
    assert len(after) == 4 and all(after[c] == t for c, t in before.items())


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
                               "from bench.results.lock import RunLock; RunLock(sys.argv[1]).acquire();"
                               "print('held', flush=True); time.sleep(60)", str(tmp_path), str(REPO)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"process {holder.pid} on "):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path) as lock:  # the kernel released it with the holder
        assert lock.held
    assert not lock.held


# -- one commit per case ----------------------------------------------------------------------------------------
def _stored_run(tmp_path: Path, n: int = 3):
    """A run folder with n ok cases committed through the lifecycle (rows and samples as the runner makes them)."""
    from bench.cases import expand

    cases = expand([f"block:{m}" for m in ("msla", "softmax", "relu-linear")][:n], [(64, 64)], [("cpu", "cpu")],
                   ["eager"], {"cpu": ["fp32"]}, [1], [1])
    state = create_run(tmp_path, cases, {"repeats": 1}, run_id="r")
    for i, c in enumerate(cases):
        lat = rf.noise(i, n=40)
        row = rf.case(c.model, 64, 64, samples=lat)
        row.pop("_samples")
        state.rows.append({**row, **c.as_row(), "run_id": "r", "repeats": 1})
        state.samples += [{"run_id": "r", "case_id": c.case_id, "repeat": 0, "iter": j, "latency_ms": v}
                          for j, v in enumerate(lat)]
    state.save()
    state.close()
    return state.run_dir, cases


def test_samples_committed_without_their_row_are_dropped_on_load(tmp_path):
    """A crash after samples.parquet (a second process of case 0, and a new case) but before results.parquet."""
    run_dir, cases = _stored_run(tmp_path, 2)
    s = pd.read_parquet(run_dir / "samples.parquet")
    extra = pd.DataFrame({"run_id": "r", "case_id": [cases[0].case_id] * 5 + ["not-a-row"] * 5,
                          "repeat": [1] * 5 + [0] * 5, "iter": list(range(5)) * 2, "latency_ms": 1.0})
    store.write_samples(run_dir, pd.concat([s, extra], ignore_index=True))
    run = store.load_run(run_dir)
    assert len(run.samples) == len(s) and run.unfinished == []
    state = open_run(run_dir)
    assert len(state.rows) == 2 and state.redo == [] and len(state.samples) == len(s)
    state.close()


def test_a_row_whose_samples_are_missing_is_not_finished(tmp_path):
    """The defect of the old commit order (results before samples): an ok row whose raw samples are gone is
    measured again by --resume, the other rows are kept."""
    run_dir, cases = _stored_run(tmp_path, 3)
    s = pd.read_parquet(run_dir / "samples.parquet")
    store.write_samples(run_dir, s[s["case_id"] != cases[1].case_id])  # as if its samples write never happened
    run = store.load_run(run_dir)
    assert run.unfinished == [cases[1].case_id] and len(run.results) == 3
    state = open_run(run_dir)
    assert state.redo == [cases[1].case_id]
    assert {r["case_id"] for r in state.rows} == {cases[0].case_id, cases[2].case_id}
    state.close()
    (run_dir / "samples.parquet").unlink()  # no samples file at all: every ok row is unfinished
    state = open_run(run_dir)
    assert state.rows == [] and sorted(state.redo) == sorted(c.case_id for c in cases)
    state.close()


def test_a_resume_measures_the_row_that_lost_its_samples(tmp_path):
    out = tmp_path / "results"
    r = _cli(*MATRIX, "--out", str(out), "--run-id", "full")
    assert r.returncode == 0, r.stderr
    run_dir = out / "full"
    before = _started(run_dir)
    lost = sorted(before)[0]
    s = pd.read_parquet(run_dir / "samples.parquet")
    store.write_samples(run_dir, s[s["case_id"] != lost])
    time.sleep(1.1)
    again = _resume(run_dir)
    assert again.returncode == 0, again.stderr
    assert "1 stored case(s) without all their samples" in again.stderr
    run = store.load_run(run_dir)
    after = run.results.set_index("case_id")["started_at"].to_dict()
    assert after[lost] != before[lost] and all(after[c] == before[c] for c in before if c != lost)
    assert run.unfinished == [] and lost in set(run.samples["case_id"])
    assert json.loads((run_dir / "meta.json").read_text())["resumed"][-1]["redo"] == [lost]


def test_a_full_disk_mid_run_stops_cleanly_and_resume_finishes(tmp_path):
    """A file-size limit (RLIMIT_FSIZE, the kernel's EFBIG: what a full disk does to a write) put on the live run
    while a case hangs: the next commit fails, the run stops with one line and exit 2, the committed rows stay
    readable, and --resume completes the run."""
    out = tmp_path / "results"
    p = _start(out, timeout="6")
    run_dir = _wait_rows(p, out, 1)
    limit = (run_dir / "samples.parquet").stat().st_size + 256  # the next case's samples will not fit
    resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (limit, limit))
    _, err = p.communicate(timeout=200)
    assert p.returncode == 2, err
    line = _one_line(err, "cannot write", "--resume")
    kept = store.load_run(run_dir)
    assert len(kept.results) >= 1 and kept.unfinished == []
    said = re.search(r"keep their last commit \((\d+) cases\)", line)
    assert said and int(said.group(1)) == len(kept.results), line  # not the row it failed to write
    before = kept.results.set_index("case_id")["started_at"].to_dict()
    again = _resume(run_dir)
    assert again.returncode == 0, again.stderr
    run = store.load_run(run_dir)
    assert len(run.results) == 4
    after = run.results.set_index("case_id")["started_at"].to_dict()
    assert all(after[c] == t for c, t in before.items())


# -- every file checked on load ---------------------------------------------------------------------------------
def _damage_meta(run_dir: Path, edit) -> None:
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps(edit(meta)))


def _damage_results(run_dir: Path, col: str, value) -> None:
    df = pd.read_parquet(run_dir / "results.parquet").astype({col: object})
    df.loc[0, col] = value
    (run_dir / "results.parquet").unlink()
    df.to_csv(run_dir / "results.csv", index=False)


DAMAGE = {
    "meta is a list": lambda d: _damage_meta(d, lambda m: [m]),
    "cases is a string": lambda d: _damage_meta(d, lambda m: {**m, "cases": "all"}),
    "a case of the wrong shape": lambda d: _damage_meta(d, lambda m: {**m, "cases": [{"model": 3}]}),
    "calibration is a list": lambda d: _damage_meta(d, lambda m: {**m, "calibration": [1]}),
    "status unknown": lambda d: _damage_meta(d, lambda m: {**m, "status": "bored"}),
    "threads = 1.5": lambda d: _damage_results(d, "threads", 1.5),
    "channels_last = maybe": lambda d: _damage_results(d, "channels_last", "maybe"),
    "height = 1e400": lambda d: _damage_results(d, "height", "1e400"),
    "latency is text": lambda d: _damage_results(d, "latency_ms_median", "fast"),
    "status unknown in a row": lambda d: _damage_results(d, "status", "great"),
    "samples of another schema": lambda d: pd.DataFrame({"x": [1.0]}).to_parquet(d / "samples.parquet"),
    "samples repeat is text": lambda d: pd.DataFrame({"case_id": ["a"], "repeat": ["one"], "iter": [0],
                                                      "latency_ms": [1.0]}).to_parquet(d / "samples.parquet"),
    "results not parquet": lambda d: (d / "results.parquet").write_bytes(b"PAR1 nonsense"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["resume", "report", "compare"])
def test_damaged_files_are_one_line_and_exit_2(tmp_path, capsys, damage, command):
    run_dir, _ = _stored_run(tmp_path, 2)
    other, _ = _stored_run(tmp_path / "other", 2)
    DAMAGE[damage](run_dir)
    argv = {"resume": ["--resume", str(run_dir), "--no-report", "-q"],
            "report": ["report", str(run_dir), "--out", str(tmp_path / "r.html")],
            "compare": ["compare", str(other), str(run_dir)]}[command]
    assert main(argv) == 2
    _one_line(capsys.readouterr().err, "error:")


def test_resume_on_another_machine_is_refused(tmp_path, capsys):
    run_dir, _ = _stored_run(tmp_path, 1)
    _damage_meta(run_dir, lambda m: {**m, "host": "elsewhere"})
    assert main(["--resume", str(run_dir), "-q", "--no-report"]) == 2
    _one_line(capsys.readouterr().err, "was measured on elsewhere", "start a new run here")


# -- failed cases, on request ---------------------------------------------------------------------------------
def test_retry_failed_measures_the_failed_cases_again(tmp_path, capsys, monkeypatch):
    out = tmp_path / "results"
    monkeypatch.setenv("DENSEBENCH_FAULT", "error@block:relu-linear")
    r = _cli(*MATRIX, "--out", str(out), "--run-id", "f")
    monkeypatch.delenv("DENSEBENCH_FAULT")  # the resumes run without the fault
    assert r.returncode == 1, r.stderr  # a case ended in error
    status = store.load_run(out / "f").results.set_index("model")["status"]
    assert (status["block:relu-linear"] == "error").all()
    plain = _resume(out / "f")  # without the flag, failed rows are complete
    assert plain.returncode == 1 and (store.load_run(out / "f").results["status"] == "error").sum() == 2
    assert main(["--resume", "f", "--out", str(out), "--retry-failed", "nope"]) == 2
    _one_line(capsys.readouterr().err, "--retry-failed", "accepted")
    again = _resume(out / "f", "--retry-failed")
    assert again.returncode == 0, again.stderr
    run = store.load_run(out / "f")
    assert run.results["status"].eq("ok").all() and len(run.results) == 4
    assert len(run.meta["resumed"][-1]["retried"]) == 2


def test_retry_failed_needs_resume(tmp_path, capsys):
    assert main(["--retry-failed", "--out", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "--retry-failed: only with --resume")
