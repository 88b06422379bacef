"""The life of a run folder: created -> running -> interrupted | complete, with its state in memory.

One lifecycle shared by `run`, `check`, the Python API and the tools: `create_run` makes the folder and its first
meta.json, `open_run` loads one back for `--resume`, `RunState.mark` records a status change, `RunState.save`
commits the files (bench.results.store). Whoever drives the measuring (bench.api) calls these; nothing here starts
a process.

Nothing measured is lost:
- one writer: create_run and open_run take the run folder's lock (bench.results.lock) and keep it until
  `RunState.close()` or the process's end; a second writer is refused with the holder's PID.
- one commit per case: `save` writes samples.parquet (and profile.parquet), then results.parquet (+ .csv), then
  meta.json, each atomically. A crash, kill -9 or full disk between two of them leaves samples without their row
  (dropped on load) but never a row without its samples; the loader (bench.results.validate.reconcile) makes them
  agree, and an ok row whose samples are not all there is measured again by --resume.
- a failed write (full disk, read-only folder) is one RunFolderError line; the files keep their last commit, and
  --resume finishes the run once the folder is writable.
- a run is resumed only on the machine that measured it: its rows and calibration are that machine's.
"""
from __future__ import annotations

import re
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.cases import Case
from bench.env import cpu_name, environment, now_iso
from bench.errors import BenchInputError
from bench.results.lock import RunLock, RunLocked

STATES = ("created", "running", "interrupted", "complete")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class RunFolderError(BenchInputError):
    """A run folder that cannot be created or resumed; the message is one line for users."""


class RunInterrupted(KeyboardInterrupt):
    """The measuring was interrupted (Ctrl-C, SIGTERM); the run is saved as 'interrupted' and can be resumed.
    Raised by whoever drives the measuring, on this machine (bench.api) or on a cluster (bench.fleet)."""

    def __init__(self, state: RunState):
        super().__init__(f"interrupted: {state.committed} cases stored in {state.run_dir}")
        self.state = state


@dataclass
class RunState:
    run_dir: Path
    meta: dict
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    profile: list[dict] = field(default_factory=list)  # profile.parquet rows (--profile)
    pairs: list[dict] = field(default_factory=list)  # pairs.parquet rows (interleaved groups' decisions)
    lock: RunLock | None = None
    redo: list[str] = field(default_factory=list)  # case_ids found unfinished on load (open_run)
    committed: int | None = None  # cases in results.parquet as last written (None: `rows` as given, from the files)

    def __post_init__(self) -> None:
        if self.committed is None:
            self.committed = self._done()

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    def cases(self) -> list[Case]:
        """The run's own matrix, as it was planned (meta.json `cases`)."""
        return [Case.from_spec(c) for c in self.meta.get("cases") or []]

    def mark(self, status: str, wall_s: float | None = None) -> None:
        """Record a status change (and, when the measuring ended, its wall time added to earlier sessions')."""
        if status not in STATES:
            raise ValueError(f"run status {status!r}; valid: {', '.join(STATES)}")
        self.meta["status"] = status
        self.meta["updated_at"] = now_iso()
        if status == "complete":
            self.meta["ended_at"] = self.meta["updated_at"]
        if wall_s is not None:
            self.meta["wall_s"] = round(float(self.meta.get("wall_s", 0)) + wall_s, 2)

    def save(self, results_only: bool = False) -> None:
        """Commit the run: samples, then results, then meta.json (the order the loader reconciles; see above).
        Raises RunFolderError when the folder cannot be written; the files then keep their previous commit."""
        from bench.results import store

        try:
            if not results_only:
                store.write_samples(self.run_dir, store.samples_frame(self.samples))
                if self.profile:
                    store.write_profile(self.run_dir, store.profile_frame(self.profile))
            if self.pairs:  # before results: the loader keeps only pairs whose rows are committed
                store.write_pairs(self.run_dir, store.pairs_frame(self.pairs))
            store.write_results(self.run_dir, store.results_frame(self.rows))
            self.committed = self._done()
            store.write_meta(self.run_dir, self.meta)
        except OSError as e:  # the count is what the files hold, not the row that failed to be written
            raise RunFolderError(f"cannot write {self.run_dir} ({e.strerror or e}); the files there keep their "
                                 f"last commit ({self.committed} cases); once it is writable: --resume "
                                 f"{self.run_id}") from None

    def _done(self) -> int:
        return sum(1 for r in self.rows if r.get("status"))

    def forget(self, statuses: Iterable[str]) -> list[str]:
        """Drop the rows with these statuses, and their samples, so that --resume measures them again."""
        statuses = set(statuses)
        gone = [r["case_id"] for r in self.rows if r.get("status") in statuses and r.get("case_id")]
        self.drop(gone)
        return gone

    def drop(self, case_ids: Iterable[str]) -> None:
        """Drop these cases' rows, samples, profile rows and pairs (measured again from scratch)."""
        ids = set(case_ids)
        self.rows = [r for r in self.rows if r.get("case_id") not in ids]
        self.samples = [s for s in self.samples if s.get("case_id") not in ids]
        self.profile = [p for p in self.profile if p.get("case_id") not in ids]
        self.pairs = [p for p in self.pairs if p.get("fast_case_id") not in ids and p.get("slow_case_id") not in ids]

    def close(self) -> None:
        """Give the run folder's lock back (the process's end does too)."""
        if self.lock is not None:
            self.lock.release()


def new_run_id(out_dir: Path, prefix: str = "") -> str:
    """date-time-random, not yet taken in out_dir."""
    while True:
        rid = prefix + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        if not (out_dir / rid).exists():
            return rid


def create_run(out_dir: Path, cases: Iterable[Case], config: dict[str, Any], *, run_id: str | None = None,
               argv: list[str] | None = None, kind: str = "run") -> RunState:
    """A new run folder out_dir/run_id (which must not exist) with its first meta.json: environment, configuration
    and the planned cases. Raises RunFolderError."""
    out_dir = Path(out_dir)
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise RunFolderError(f"run id {run_id!r} is not accepted; accepted: letters, digits, '.', '_', '-' "
                             "(starting with a letter or digit, at most 100)")
    run_id = run_id or new_run_id(out_dir)
    run_dir = out_dir / run_id
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise RunFolderError(f"{run_dir} already exists; accepted: a new run id") from None
    except OSError as e:
        raise RunFolderError(f"cannot create {run_dir}: {e.strerror}; accepted: a writable folder") from None
    env = environment(list(argv) if argv is not None else list(sys.argv))
    meta = {"run_id": run_id, "kind": kind, "started_at": now_iso(), "host": env["host"], "env": env,
            "config": dict(config), "cases": [c.to_spec() for c in cases], "calibration": {}, "status": "created"}
    state = RunState(run_dir=run_dir, meta=meta, lock=_lock(run_dir))
    state.save()
    return state


def _lock(run_dir: Path) -> RunLock:
    try:
        return RunLock(run_dir).acquire()
    except RunLocked as e:
        raise RunFolderError(str(e)) from None
    except OSError as e:
        raise RunFolderError(f"cannot lock {run_dir} ({e.strerror}); accepted: a writable run folder") from None


def open_run(run_dir: Path) -> RunState:
    """An existing run folder for --resume, locked, with rows, samples and meta as plain Python objects; rows
    whose samples are not all stored are dropped (`RunState.redo`: measured again). Raises RunFolderError
    (locked, another machine's run) and bench.results.store.RunFormatError (not a run of this engine)."""
    from bench.results import store

    run_dir = Path(run_dir)
    lock = _lock(run_dir)
    try:
        run = store.load_run(run_dir)
        if not run.meta.get("cases"):
            raise store.RunFormatError(f"{run_dir}/meta.json has no case list (not a run of this engine)")
        _check_same_machine(run.meta, run_dir)
    except BaseException:
        lock.release()
        raise
    rows = [{k: (None if isna(v) else v) for k, v in r.items()} for r in run.results.to_dict("records")]
    redo = list(run.unfinished)
    if not (run_dir / store.SAMPLES).exists():  # the engine always writes it: every measured row lost its samples
        redo = [r["case_id"] for r in rows if r.get("status") == "ok" and (r.get("n") or 0) > 0]
    profile = [] if run.profile is None else [{k: (None if isna(v) else v) for k, v in r.items()}
                                              for r in run.profile.to_dict("records")]
    pairs = [] if run.pairs is None else [{k: (None if isna(v) else v) for k, v in r.items()}
                                          for r in run.pairs.to_dict("records")]
    state = RunState(run_dir=run_dir, meta=dict(run.meta), rows=rows, samples=run.samples.to_dict("records"),
                     profile=profile, pairs=pairs, lock=lock)
    state.drop(redo)
    state.redo = redo
    return state


def _check_same_machine(meta: dict, run_dir: Path) -> None:
    """A run's rows, calibration and health bounds are one machine's: refuse to add another machine's rows."""
    host, cpu = socket.gethostname(), cpu_name()
    was_host, was_cpu = meta.get("host"), (meta.get("env") or {}).get("cpu_model")
    if (was_host and was_host != host) or (was_cpu and was_cpu != cpu):
        raise RunFolderError(f"{run_dir} was measured on {was_host} ({was_cpu}), this is {host} ({cpu}); its rows "
                             "and calibration are that machine's; accepted: resume it there, or start a new run here")


def stop_run(state: RunState, e: OSError, wall_s: float | None = None) -> None:
    """Stop a run the machine cannot go on with (/tmp full, no more processes, ...): the stored cases stay, the
    status says resumable, and a RunFolderError of one line says how to finish it."""
    state.mark("interrupted", wall_s=wall_s)
    try:
        state.save()
    except RunFolderError:
        pass  # the files keep their last commit, which is what --resume reads
    what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    raise RunFolderError(f"the run stopped ({what}); {state.committed} cases are stored in {state.run_dir}; "
                         f"once fixed: --resume {state.run_id}") from None


def isna(v) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v)) if not isinstance(v, (list, dict, str)) else False
    except (TypeError, ValueError):
        return False
