"""Runs killed with a real signal leave a valid partial run, and --resume finishes it without redoing cases."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from bench.cases import case_key
from bench.cli import main
from bench.schema import COLUMN_NAMES
from bench.results.store import load_run

REPO = Path(__file__).resolve().parent.parent
BASE = [sys.executable, str(REPO / "run_bench.py"), "--models", "block:msla,block:relu-linear", "--level", "block",
        "--res", "64,96,128", "--threads", "1", "--min-time", "0.02", "--max-time", "0.1", "--no-report",
        "--no-calibrate", "-q"]
ISOLATED = ["--design", "isolated"]


def _rows(run_dir: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(run_dir / "results.parquet")
    except Exception:
        return pd.DataFrame()


def test_resume_after_kill(tmp_path, capsys):
    out = tmp_path / "results"
    env = dict(os.environ, DENSEBENCH_FAULT="hang@block:relu-linear")  # slow cases so the kill lands mid-run
    p = subprocess.Popen(BASE + ["--out", str(out), "--timeout", "4"], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 150
    run_dir = None
    while time.time() < deadline:
        runs = list(out.glob("*/results.parquet")) if out.exists() else []
        if runs:
            run_dir = runs[0].parent
            if len(_rows(run_dir)) >= 2:
                break
        assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    else:
        p.kill()
        raise AssertionError("run did not store two cases in time")
    os.kill(p.pid, signal.SIGKILL)  # no handler, no cleanup: the hardest kill
    p.wait()
    # a valid partial run
    partial = load_run(run_dir)
    n_done = len(partial.results)
    assert 2 <= n_done < 6
    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta["cases"]) == 6
    before = partial.results.set_index("case_id")["started_at"].to_dict()
    time.sleep(1.1)  # started_at has 1 s resolution
    assert main(["--resume", run_dir.name, "--out", str(out), "-q", "--no-report"]) == 0, capsys.readouterr().err
    final = load_run(run_dir)
    res = final.results
    assert len(res) == 6 and res["case_id"].is_unique
    assert set(res["case_id"]) == {case_key(c) for c in meta["cases"]}
    # finished cases were not redone: same rows, same start times
    after = res.set_index("case_id")["started_at"].to_dict()
    for cid, t in before.items():
        assert after[cid] == t
    # before the kill relu-linear hung (timeout rows, kept); the resumed run has no fault: the rest is ok
    status = res.set_index("case_id")["status"]
    model = res.set_index("case_id")["model"]
    for cid in status.index:
        want = "timeout" if cid in before and model[cid] == "block:relu-linear" else "ok"
        assert status[cid] == want, (cid, status[cid])
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "complete"
    # samples of every ok case, once
    s = final.samples
    ok_ids = set(res.loc[res["status"] == "ok", "case_id"])
    assert set(s["case_id"]) == ok_ids
    assert not s.duplicated(["case_id", "iter"]).any()
    assert list(res.columns) == list(COLUMN_NAMES)


def test_rows_decided_before_any_child(tmp_path):
    """Skipped (would not fit / absent device) and unsupported cases are rows with reasons, no child started."""
    from bench.cases import expand
    from bench.results.lifecycle import RunState
    from bench.runner import Runner

    # onnxruntime: an ONNX export (opset 18) materialises the N^2 scores (eager SDPA would take the flash kernel)
    cases = expand(["block:softmax", "block:msla"], [(16384, 16384)], [("cpu", "test-cpu"), ("cuda:3", "absent")],
                   ["onnxruntime"], {"cpu": ["fp32", "tf32"], "cuda": ["fp16"]}, [1], [1])
    cases = [c for c in cases if not (c.model == "block:msla" and c.precision == "fp32" and c.device == "cpu")]
    state = RunState(run_dir=tmp_path / "run", meta={"run_id": "t", "host": "h", "cases": []})
    state.run_dir.mkdir()
    Runner(state, cases, allow_missing={"cuda:3"}, calibrate=False).run()
    res = load_run(state.run_dir).results.set_index("model")
    got = {(r.Index, r.device, r.precision): (r.status, r.reason) for r in res.itertuples()}
    st, why = got[("block:softmax", "cpu", "fp32")]
    assert st == "skipped" and "would not fit" in why and "GiB" in why
    assert got[("block:softmax", "cpu", "tf32")][0] == "unsupported"
    assert got[("block:msla", "cpu", "tf32")][0] == "unsupported"
    assert all(v[0] == "skipped" and "not present" in v[1] for k, v in got.items() if k[1] == "cuda:3")
    assert state.meta.get("worker_server_start_s", 0) == 0  # the fork server was never started


def test_cuda_cases_leave_a_server_that_loaded_cuda(tmp_path):
    """Children forked after the CUDA driver is loaded cannot use CUDA: such cases get a fresh interpreter."""
    from bench.cases import expand
    from bench.launch.isolation import ForkServer, Spawner
    from bench.results.lifecycle import RunState
    from bench.runner import Runner

    fs = ForkServer(tmp_path)
    fs.start = lambda: None  # no process: only the routing is under test
    cpu, cuda = expand(["block:msla"], [(64, 64)], [("cpu", "C"), ("cuda:0", "G")], ["eager"],
                       {"cpu": ["fp32"], "cuda": ["fp16"]}, [1], [1])
    runner = Runner(RunState(run_dir=tmp_path, meta={"run_id": "t"}), [])
    assert runner._isolation_for(fs, cuda) is fs and runner._isolation_for(fs, cpu) is fs
    fs.cuda_touched = True
    assert isinstance(runner._isolation_for(fs, cuda), Spawner)
    assert runner._isolation_for(fs, cpu) is fs
    assert "spawn" in runner.state.meta["isolation_cuda"]


def test_repeats_pool_processes_and_resume_adds_the_missing_ones(tmp_path, capsys):
    import numpy as np

    from bench.results.store import write_results, write_samples

    out = tmp_path / "results"
    args = BASE[2:] + ISOLATED + ["--res", "64", "--repeats", "3", "--out", str(out), "--run-id", "rep"]
    assert main(args) == 0, capsys.readouterr().err  # in this process: no kill here, no interpreter to start
    run_dir = out / "rep"
    run = load_run(run_dir)
    res, s = run.results.set_index("case_id"), run.samples
    assert len(res) == 2 and (res["status"] == "ok").all() and (res["repeats"] == 3).all()
    assert json.loads((run_dir / "meta.json").read_text())["config"]["repeats"] == 3
    assert not s.duplicated(["case_id", "repeat", "iter"]).any()
    for cid, row in res.iterrows():
        mine = s[s["case_id"] == cid]
        assert sorted(mine["repeat"].unique()) == [0, 1, 2]
        assert row["n"] == len(mine)
        assert row["latency_ms_median"] == np.median(mine["latency_ms"])
        assert row["latency_ms_ci_low"] <= row["latency_ms_median"] <= row["latency_ms_ci_high"]
        meds = mine.groupby("repeat")["latency_ms"].median()
        assert row["latency_ms_repeat_cv"] == meds.std(ddof=1) / meds.mean() * 100

    # a run killed after the second pass: one case has two processes stored, the other three
    cut = res.index[0]
    rows = run.results.copy()
    kept = s[~((s["case_id"] == cut) & (s["repeat"] == 2))].reset_index(drop=True)
    rows.loc[rows["case_id"] == cut, ["repeats", "n"]] = [2, int((kept["case_id"] == cut).sum())]  # as committed
    write_results(run_dir, rows)
    write_samples(run_dir, kept)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["status"] = "interrupted"
    (run_dir / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["--resume", "rep", "--out", str(out), "-q", "--no-report"]) == 0, capsys.readouterr().err
    assert "measured again" not in capsys.readouterr().err  # the two stored processes are kept, not redone
    final = load_run(run_dir)
    fres, fs = final.results.set_index("case_id"), final.samples
    other = res.index[1]
    assert fres.loc[other, "wall_s"] == res.loc[other, "wall_s"]  # complete case untouched
    assert (fs[fs["case_id"] == other]["latency_ms"].to_numpy() == s[s["case_id"] == other]["latency_ms"]).all()
    assert fres.loc[cut, "repeats"] == 3 and fres.loc[cut, "wall_s"] > res.loc[cut, "wall_s"]  # stored + new
    mine = fs[fs["case_id"] == cut]
    assert (mine[mine["repeat"] < 2]["latency_ms"].to_numpy() == kept[kept["case_id"] == cut]["latency_ms"]).all()
    assert sorted(fs[fs["case_id"] == cut]["repeat"].unique()) == [0, 1, 2]
    assert fres.loc[cut, "n"] == (fs["case_id"] == cut).sum()
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "complete"
