"""The history store: append-only, one Parquet file per commit and machine, so no writer ever rewrites another's.

    STORE/<machine>/<commit>.parquet     one row per case x metric of the small matrix measured at that commit

A file is published by a hard link from a temporary file (`os.link` fails when the name exists): two writers of
the same commit cannot overwrite each other, and a reader never sees half a file, also under kill -9 (a leftover
temporary file starts with '.' and is never read). Recording a commit again is refused with one line. Every file
read is checked (bench.bounded_read: size, cells; here: the columns, their types, the metric names, the commit's
hex form), because a store is shared between CI runs and machines.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from bench import bounded_read
from bench.errors import BenchInputError

METRICS = ("wall_ms", "instructions")  # wall_ms: the median latency (noisy); instructions: per forward (deterministic)
COMMIT = re.compile(r"[0-9a-f]{40}")
MACHINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# column -> pandas dtype: what every file of the store holds (the tidy long format: one row per case x metric)
COLUMNS: dict[str, str] = {
    "commit": "string", "parent": "string", "committed_at": "string", "subject": "string",
    "recorded_at": "string", "machine": "string", "cpu": "string", "run_id": "string",
    "case_id": "string", "model": "string", "level": "string", "height": "int64", "width": "int64",
    "threads": "int64", "backend": "string", "precision": "string",
    "metric": "string", "value": "float64", "spread": "float64", "n": "int64", "status": "string", "reason": "string",
}


class HistoryError(BenchInputError):
    """A store, a file of it or an argument that cannot be used: one line, exit 2."""


class AlreadyRecorded(HistoryError):
    """The commit has a file for this machine already: the store is append-only."""


@dataclass(frozen=True)
class Store:
    """A history store's folder; `machine` narrows reads and names writes."""

    root: Path

    def file(self, machine: str, commit: str) -> Path:
        return self.root / check_machine(machine) / f"{check_commit(commit)}.parquet"

    def files(self, machine: str | None = None) -> list[Path]:
        if not self.root.is_dir():
            return []
        folders = [self.root / check_machine(machine)] if machine else sorted(p for p in self.root.iterdir()
                                                                            if p.is_dir())
        return sorted(f for d in folders if d.is_dir() for f in d.glob("*.parquet") if not f.name.startswith("."))


def check_commit(commit: str) -> str:
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        raise HistoryError(f"commit {str(commit)[:60]!r} is not accepted; accepted: a full 40-hex git commit id")
    return commit


def check_machine(machine: str) -> str:
    if not isinstance(machine, str) or not MACHINE.fullmatch(machine):
        raise HistoryError(f"machine {str(machine)[:60]!r} is not accepted; accepted: letters, digits, '.', '_', "
                           "'-' (not first), up to 100 characters")
    return machine


def typed(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as the store's frame: every column, in order, with its dtype (missing cells are NA)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return frame.astype(COLUMNS)


def write_commit(store: Store, frame: pd.DataFrame) -> Path:
    """Publish one commit's rows (one machine, one commit) as its file; AlreadyRecorded when it exists."""
    frame = typed(frame.to_dict("records"))
    machines, commits = set(frame["machine"]), set(frame["commit"])
    if len(machines) != 1 or len(commits) != 1:
        raise HistoryError(f"one commit and one machine per file; got {len(commits)} commits, {len(machines)} "
                           "machines")
    final = store.file(machines.pop(), commits.pop())
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # atomic and never clobbers: the append-only guarantee
        except FileExistsError:
            raise AlreadyRecorded(f"{final}: this commit is recorded for this machine already (the store is "
                                  "append-only)") from None
    finally:
        os.unlink(tmp)
    return final


def read_file(path: Path) -> pd.DataFrame:
    """One file of the store, checked: the columns and their types, the metrics, the commit named like the file."""
    df = bounded_read.read_table(path, kind="history", error=HistoryError)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise HistoryError(f"{path}: not a history file (missing columns: {', '.join(missing[:5])}); accepted: "
                           "files written by `run_bench.py history record`")
    try:
        df = df[list(COLUMNS)].astype(COLUMNS)
    except (ValueError, TypeError) as e:
        raise HistoryError(f"{path}: a column has the wrong type ({str(e).splitlines()[0][:160]})") from None
    bad = sorted(set(df["metric"].dropna()) - set(METRICS))
    if bad:
        raise HistoryError(f"{path}: unknown metric {bad[0]!r}; accepted: {', '.join(METRICS)}")
    if set(df["commit"].dropna()) != {path.stem}:
        raise HistoryError(f"{path}: holds rows of another commit than its name; accepted: one commit per file")
    return df


def load(store: Store, machine: str | None = None) -> pd.DataFrame:
    """Every file of the store (of `machine`), one frame; empty with the columns when there is none."""
    frames = [read_file(p) for p in store.files(machine)]
    return pd.concat(frames, ignore_index=True) if frames else typed([])
