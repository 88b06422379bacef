"""The life of a run folder: created -> running -> interrupted | complete, with its state in memory.

One lifecycle shared by `run`, `check`, the Python API and the tools: `create_run` makes the folder and its first
meta.json, `open_run` loads one back for `--resume`, `RunState.mark` records a status change, `RunState.save`
rewrites the files atomically (bench.results.store). Whoever drives the measuring (bench.api) calls these;
nothing here starts a process.
"""
from __future__ import annotations

import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.cases import Case

STATES = ("created", "running", "interrupted", "complete")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class RunFolderError(ValueError):
    """A run folder that cannot be created or resumed; the message is one line for users."""


@dataclass
class RunState:
    run_dir: Path
    meta: dict
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    def cases(self) -> list[Case]:
        """The run's own matrix, as it was planned (meta.json `cases`)."""
        return [Case.from_spec(c) for c in self.meta.get("cases") or []]

    def mark(self, status: str, wall_s: float | None = None) -> None:
        """Record a status change (and, when the measuring ended, its wall time added to earlier sessions')."""
        from bench.env import now_iso

        if status not in STATES:
            raise ValueError(f"run status {status!r}; valid: {', '.join(STATES)}")
        self.meta["status"] = status
        self.meta["updated_at"] = now_iso()
        if status == "complete":
            self.meta["ended_at"] = self.meta["updated_at"]
        if wall_s is not None:
            self.meta["wall_s"] = round(float(self.meta.get("wall_s", 0)) + wall_s, 2)

    def save(self, results_only: bool = False) -> None:
        from bench.results import store

        store.write_results(self.run_dir, store.results_frame(self.rows))
        if not results_only:
            store.write_samples(self.run_dir, store.samples_frame(self.samples))
        store.write_meta(self.run_dir, self.meta)


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
    from bench.env import environment, now_iso

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
            "config": config, "cases": [c.to_spec() for c in cases], "calibration": {}, "status": "created"}
    state = RunState(run_dir=run_dir, meta=meta)
    state.save()
    return state


def open_run(run_dir: Path) -> RunState:
    """An existing run folder (for --resume): rows, samples and meta as plain Python objects.
    Raises bench.results.store.RunFormatError for a folder that is not a run of this engine."""
    from bench.results import store

    run = store.load_run(run_dir)
    if not run.meta.get("cases"):
        raise store.RunFormatError(f"{run_dir}/meta.json has no case list (not a run of this engine)")
    rows = [{k: (None if _isna(v) else v) for k, v in r.items()} for r in run.results.to_dict("records")]
    samples = run.samples.to_dict("records")
    return RunState(run_dir=Path(run_dir), meta=dict(run.meta), rows=rows, samples=samples)


def _isna(v) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v)) if not isinstance(v, (list, dict, str)) else False
    except (TypeError, ValueError):
        return False
