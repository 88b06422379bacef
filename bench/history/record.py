"""`history record`: measure the small matrix at the checked-out commit and add it to the store.

The matrix is measured by the engine (bench.run: isolated processes, the health guard, the interleaved design) into
a scratch run folder; each ok case gives one row per metric: wall_ms (the median latency, spread = the CI's width
relative to it) and, with `instructions`, instructions per forward (valgrind, deterministic; spread = the forwards'
spread). A case that failed is kept as a row with its status and reason, so a gap in a series says why.

The commit is the repository's HEAD; a tree with uncommitted changes to tracked files is refused (its numbers would
be filed under a commit that is not the code measured). The machine is named by `--machine` or, by default, by the
CPU model and the usable CPU count, so that series of different machine kinds are never mixed.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

import bench
from bench.env.machine import cpu_name, now_iso, usable_cpus
from bench.history import gitlog
from bench.history.store import HistoryError, Store, check_machine, typed, write_commit

DEFAULT_MODELS = "block:msla,block:relu-linear"
DEFAULT_RES = "256"


def default_machine() -> str:
    """CPU model and usable CPUs as a store folder name, e.g. 'AMD-EPYC-7B13-2cpu'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", cpu_name()).strip("-._")[:80] or "cpu"
    return f"{slug}-{usable_cpus()}cpu"


def _num(row: dict, key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None or pd.isna(v) else float(v)


def history_rows(results: pd.DataFrame, commit: gitlog.CommitInfo, machine: str, run_id: str) -> list[dict]:
    """The store's rows of one run's results: per case, wall_ms and (where counted) instructions."""
    base = {"commit": commit.commit, "parent": commit.parent, "committed_at": commit.committed_at,
            "subject": commit.subject[:200], "recorded_at": now_iso(), "machine": machine, "cpu": cpu_name(),
            "run_id": run_id}
    rows = []
    for r in results.to_dict("records"):
        case = {k: r.get(k) for k in ("case_id", "model", "level", "height", "width", "threads", "backend",
                                      "precision")}
        ok = r.get("status") == "ok"
        median = _num(r, "latency_ms_median")
        width = _num(r, "latency_ms_ci_high") - _num(r, "latency_ms_ci_low")
        repeats = _num(r, "repeats")
        rows.append({**base, **case, "metric": "wall_ms", "value": median if ok else float("nan"),
                     "spread": width / median if ok and median > 0 else float("nan"),
                     "n": int(repeats) if ok and repeats == repeats else 0, "status": r.get("status"),
                     "reason": "" if pd.isna(r.get("reason")) else str(r.get("reason"))})
        counted = r.get("instructions")
        if ok and counted is not None and not pd.isna(counted):
            rows.append({**base, **case, "metric": "instructions", "value": float(counted),
                         "spread": float(r.get("instructions_spread_pct") or 0.0) / 100.0, "n": 1,
                         "status": "ok", "reason": ""})
    return rows


def record(store: str | Path, *, repo: str | Path, models: str = DEFAULT_MODELS, res: str = DEFAULT_RES,
           threads: str = "1", instructions: bool = False, machine: str | None = None,
           log: Any = None, **options: Any) -> Path:
    """Measure the matrix at `repo`'s HEAD and publish it as the store's file for (machine, commit); returns its
    path. HistoryError (one line) for a dirty tree, a commit recorded already or a bad store."""
    repo = Path(repo)
    machine = check_machine(machine or default_machine())
    commit = gitlog.info(repo, "HEAD")
    if gitlog.is_dirty(repo):
        raise HistoryError(f"{repo}: tracked files have uncommitted changes; accepted: a clean checkout (a history "
                           f"row names the commit it measured, {commit.commit[:10]})")
    st = Store(Path(store))
    if st.file(machine, commit.commit).exists():
        raise HistoryError(f"{st.file(machine, commit.commit)}: commit {commit.commit[:10]} is recorded for "
                           f"{machine} already (the store is append-only)")
    scratch = Path(tempfile.mkdtemp(prefix="densebench-history-"))
    try:
        run = bench.run(models, res=res, threads=threads, out=scratch, report=False, log=log,
                        metric="instructions" if instructions else "time", **options)
        rows = history_rows(run.results, commit, machine, run.path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not rows:
        raise HistoryError("the matrix measured no case; accepted: --models and --res that name cases")
    return write_commit(st, typed(rows))
