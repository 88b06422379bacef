"""The history store, its step detection, the confirming A/B and bisect (bench.history, `run_bench.py history`).

The end-to-end part builds a real git repository: a copy of this suite's `models` package committed six times,
where one commit makes block:relu-linear compute its linear attention twice (a real slowdown of the code). Stored
series are the input under test (the detector and the confirmation), so they are written here; every verdict about
the code comes from a same-process A/B of the two commits' worktrees. ~90 s on 2 cores.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from bench.history import gitlog, steps, store
from bench.history.bisect import bisect
from bench.history.confirm import confirm
from bench.history.page import write_page
from bench.history.record import history_rows
from tools.bench_history import CASE, chain as build_chain

ROOT = Path(__file__).resolve().parents[1]
AB = dict(max_time=60.0, checkpoints="8", process_time=0.3)


def _rows(commit: gitlog.CommitInfo, value: float, metric: str = "wall_ms", machine: str = "m1") -> pd.DataFrame:
    return store.typed([{"commit": commit.commit, "parent": commit.parent, "committed_at": commit.committed_at,
                         "subject": commit.subject, "recorded_at": "2026-12-03T00:00:00Z", "machine": machine,
                         "cpu": "cpu", "run_id": "r", "case_id": "block:relu-linear|64x64|t1", "model": CASE.model,
                         "level": "block", "height": 64, "width": 64, "threads": 1, "backend": "eager",
                         "precision": "fp32", "metric": metric, "value": value, "spread": 0.01, "n": 1,
                         "status": "ok", "reason": ""}])


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, list[str]]:
    """Six commits of a copy of `models`; commit 3 (0-based) makes relu-linear's attention run three times."""
    repo = tmp_path_factory.mktemp("chain")
    return repo, build_chain(repo, 6, slow_at=3)


def test_store_is_append_only_and_checked(tmp_path, chain):
    repo, commits = chain
    st = store.Store(tmp_path / "s")
    info = gitlog.info(repo, commits[1])
    assert info.parent == commits[0] and info.subject == "commit 1"
    path = store.write_commit(st, _rows(info, 1.0))
    assert path == tmp_path / "s" / "m1" / f"{commits[1]}.parquet"
    with pytest.raises(store.AlreadyRecorded):
        store.write_commit(st, _rows(info, 2.0))
    assert store.load(st)["value"].tolist() == [1.0]  # the first file stands
    # concurrent writers of one commit: exactly one publishes, the other is told
    other = gitlog.info(repo, commits[2])
    outcomes = []

    def write(v: float) -> None:
        try:
            store.write_commit(st, _rows(other, v))
            outcomes.append("ok")
        except store.AlreadyRecorded:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(v,)) for v in (1.0, 2.0, 3.0, 4.0)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    assert not [p for p in (tmp_path / "s" / "m1").iterdir() if p.name.startswith(".")]  # no temporary left


def test_bad_files_are_one_line(tmp_path, chain):
    repo, commits = chain
    st = store.Store(tmp_path / "s")
    folder = tmp_path / "s" / "m1"
    folder.mkdir(parents=True)
    (folder / f"{commits[0]}.parquet").write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(store.HistoryError, match="unreadable history file"):
        store.load(st)
    (folder / f"{commits[0]}.parquet").unlink()
    _rows(gitlog.info(repo, commits[1]), 1.0).to_parquet(folder / f"{commits[0]}.parquet")  # misnamed
    with pytest.raises(store.HistoryError, match="another commit"):
        store.load(st)
    with pytest.raises(store.HistoryError, match="40-hex"):
        st.file("m1", "HEAD")
    with pytest.raises(store.HistoryError, match="machine"):
        st.file("../x", commits[0])


def test_steps_of_a_deterministic_series_are_exact(tmp_path, chain):
    """instructions-like values (no noise): a 6% and a 3% step over 30 points are found at their commits; a flat
    series of 30 gives none."""
    repo, commits = chain
    infos = [gitlog.CommitInfo(f"{i:040x}", f"{i - 1:040x}" if i else "", f"2026-01-{1 + i // 24:02d}T"
                               f"{i % 24:02d}:00:00Z", f"c{i}") for i in range(30)]
    levels = [1e9 * (1.06 if i >= 10 else 1.0) * (1.03 if i >= 20 else 1.0) for i in range(30)]
    frame = pd.concat([_rows(c, v, "instructions") for c, v in zip(infos, levels)]
                      + [_rows(c, 5e8, "instructions", machine="flat") for c in infos], ignore_index=True)
    order = steps.order_commits(frame)
    assert order == [c.commit for c in infos]
    found = steps.detect(frame, order)
    assert [(s.machine, s.before, s.after) for s in found] == [("m1", infos[9].commit, infos[10].commit),
                                                               ("m1", infos[19].commit, infos[20].commit)]
    assert [round(s.ratio, 4) for s in found] == [1.06, 1.03]


def test_history_rows_of_a_run(chain):
    repo, commits = chain
    results = pd.DataFrame([{"case_id": "c1", "model": "block:msla", "level": "block", "height": 64, "width": 64,
                             "threads": 1, "backend": "eager", "precision": "fp32", "status": "ok",
                             "latency_ms_median": 2.0, "latency_ms_ci_low": 1.9, "latency_ms_ci_high": 2.1,
                             "repeats": 1, "instructions": 1e8, "instructions_spread_pct": 0.05, "reason": None},
                            {"case_id": "c2", "model": "block:msla", "level": "block", "height": 128, "width": 128,
                             "threads": 1, "backend": "eager", "precision": "fp32", "status": "timeout",
                             "latency_ms_median": None, "reason": "over 900 s"}])
    rows = store.typed(history_rows(results, gitlog.info(repo, commits[0]), "m1", "run"))
    assert list(zip(rows["case_id"], rows["metric"], rows["status"])) == [
        ("c1", "wall_ms", "ok"), ("c1", "instructions", "ok"), ("c2", "wall_ms", "timeout")]
    assert rows["spread"].iloc[0] == pytest.approx(0.1) and rows["reason"].iloc[2] == "over 900 s"


def test_confirmation_rejects_a_stored_only_step_and_confirms_the_real_one(tmp_path, chain):
    """Stored: a 1.5x step between commits 1 and 2 (identical code) and one between 2 and 3 (attention computed
    three times). The A/B of each step's commits rejects the first and confirms the second; the page shows both."""
    repo, commits = chain
    st = store.Store(tmp_path / "s")
    for i, c in enumerate(commits):
        store.write_commit(st, _rows(gitlog.info(repo, c), 1.0 if i < 2 else 1.5 if i == 2 else 2.25))
    frame = store.load(st)
    order = steps.order_commits(frame, gitlog.first_parent_chain(repo))
    assert order == commits
    found = steps.detect(frame, order)
    assert [(s.before, s.after) for s in found] == [(commits[1], commits[2]), (commits[2], commits[3])]
    confirm(found, {s.case_id: CASE for s in found}, repo, out=tmp_path / "ab", **AB)
    assert [s.confirmed for s in found] == ["unchanged", "slower"], [(s.confirmed, s.ab_ratio) for s in found]
    page = write_page(tmp_path / "h.html", frame, order, found).read_text()
    assert "rejected (A/B: unchanged)" in page and "confirmed" in page
    assert "&lt;b&gt;attention thrice&lt;/b&gt;" in page and "<b>attention" not in page  # subjects escaped


def test_bisect_names_the_slow_commit(tmp_path, chain):
    repo, commits = chain
    res = bisect(repo, commits[0], commits[5], CASE, out=tmp_path / "ab", threshold=0.1, **AB)
    assert res.first_slow == commits[3], {c[:8]: (v.verdict, round(v.ratio, 3)) for c, v in res.looks.items()}
    assert res.commits == commits[1:]


def test_cli_bad_input_is_one_line(tmp_path, chain):
    repo, commits = chain
    run = [sys.executable, str(ROOT / "run_bench.py"), "history"]
    for args, needle in ((["show", "--store", str(tmp_path / "none"), "--repo", str(repo)], "holds no recorded"),
                         (["bisect", commits[3], commits[0], "--model", CASE.model, "--repo", str(repo)],
                          "not an ancestor"),
                         (["bisect", "nope", commits[0], "--model", CASE.model, "--repo", str(repo)],
                          "unknown revision"),
                         (["record", "--store", str(tmp_path / "s"), "--repo", str(tmp_path)],
                          "not in a git repository")):
        p = subprocess.run(run + args, capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "ab", "--a", "block:msla", "--b", "block:msla",
                        "--b-rev", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--b-rev: only with --a-rev" in p.stderr, p.stderr


def test_the_steps_benchmark_edit_is_a_real_slower_path_with_the_same_outputs(tmp_path):
    """tools.bench_history --part steps slows block:* by an edit of models/efficientvit.py: it must still apply to
    today's file, and the edited block must compute what the original does, plus the sized matmul."""
    import importlib

    import torch

    from bench.ab.child import models_from
    from models.registry import build_model
    from tools.bench_history import slowed_blocks

    shutil.copytree(ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns("__pycache__"))
    slowed_blocks(24)(tmp_path)
    torch.manual_seed(0)
    ours = build_model("block:msla").eval()
    x = torch.randn(1, 128, 16, 16)
    with models_from(str(tmp_path)):
        torch.manual_seed(0)
        edited = importlib.import_module("models.registry").build_model("block:msla").eval()
        with torch.no_grad():
            same = torch.equal(edited(x), ours(x))
        assert same and tuple(edited.extra_out.shape) == (24, 24)
        assert torch.allclose(edited.extra_out, edited.extra_a @ edited.extra_a, rtol=1e-4, atol=1e-3)
