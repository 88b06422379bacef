"""What runs on a node for one case: the suite's own runner (bench.runner.Runner), unchanged.

Each fleet task measures one case exactly as a local run does: static checks, calibration, an isolated child
forked from a preloaded worker server (bench.launch), the timeout, the outcome's status, the machine-health
record. The runner works on a scratch RunState whose `save` writes nothing: the rows go back to the driver,
which commits them into the one run folder. A Ray worker process keeps its session (fork server, calibration,
health probes) from one task to the next of the same run and device, so a case costs a fork, as locally.
"""
from __future__ import annotations

import atexit
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cases import Case
from bench.fleet.hygiene import restore_env
from bench.fleet.records import CaseResult
from bench.results.lifecycle import RunState
from bench.launch.faults import FAULT_ENV
from bench.launch.isolation import make_isolation
from bench.launch.workdir import make_workdir


class _Scratch(RunState):
    """The node's RunState: rows and samples in memory only (the driver holds the run folder)."""

    def save(self, results_only: bool = False) -> None:
        return None


@dataclass
class _Session:
    key: tuple[str, str]
    runner: Any  # bench.runner.Runner
    iso: Any  # bench.launch.isolation.Isolation
    workdir: Path
    state: _Scratch
    env_fixed: dict = field(default_factory=dict)

    def close(self) -> None:
        try:
            self.iso.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


_SESSIONS: dict[tuple[str, str], _Session] = {}


def _close_all(keep: tuple[str, str] | None = None) -> None:
    for key in [k for k in _SESSIONS if k != keep and (keep is None or k[0] != keep[0])]:
        _SESSIONS.pop(key).close()


atexit.register(_close_all)


def _session(ctx: dict, device: str) -> _Session:
    """This worker's session for the run and device (older runs' sessions closed), made on first use."""
    from bench.runner import Runner
    from bench.launch.usercode import DEFAULT_TIMEOUT_S, register_sources
    from models.user import MODELS_FROM_ENV

    key = (ctx["run_id"], device)
    _close_all(keep=key)
    if key in _SESSIONS:
        return _SESSIONS[key]
    fixed = restore_env()  # before any child starts: the children inherit os.environ
    sources = ctx.get("models_from") or []
    register_sources(sources, float(ctx.get("timeout_s") or DEFAULT_TIMEOUT_S))  # users' code: in a child
    child_env = {MODELS_FROM_ENV: os.pathsep.join(sources)} if sources else None
    workdir = make_workdir(ctx["run_id"])
    (workdir / "run").mkdir()
    state = _Scratch(run_dir=workdir / "run", meta={"run_id": ctx["run_id"], "host": ctx["host"], "cases": [],
                                                    "calibration": dict(ctx.get("calibration") or {})})
    runner = Runner(state, [], calibrate=bool(ctx.get("calibrate", True)), child_env=child_env,
                    profile=bool(ctx.get("profile")))
    iso = make_isolation(workdir, None, env=child_env)
    runner.attach(iso, workdir, os.environ.get(FAULT_ENV))
    _SESSIONS[key] = s = _Session(key, runner, iso, workdir, state, fixed)
    return s


def _trace(s: _Session, case_id: str) -> tuple[str | None, bytes | None]:
    from bench.results.store import TRACES, trace_file

    name = trace_file(case_id)
    path = s.state.run_dir / TRACES / name
    return (name, path.read_bytes()) if path.is_file() else (None, None)


def run_case(spec: dict, ctx: dict) -> CaseResult:
    """Measure one case on this node (the Ray task's body); `ctx`: run_id, host, calibrate, profile,
    models_from and the calibration the run already has for this host."""
    t0 = time.perf_counter()
    case = Case.from_spec(spec)
    s = _session(ctx, case.device)
    st, r = s.state, s.runner
    r.clear()
    n_over = len(r.overheads)
    r.run_case(case)
    name, trace = _trace(s, case.case_id) if ctx.get("profile") else (None, None)
    h = st.meta.get("health") or {}
    return CaseResult(case_id=case.case_id, host=ctx["host"], device=case.device, row=dict(st.rows[0]),
                      samples=[float(x["latency_ms"]) for x in st.samples], profile=list(st.profile),
                      trace_name=name, trace=trace, calibration=dict(st.meta.get("calibration") or {}),
                      health={"probes": h.get("probes", []), "case": (h.get("cases") or {}).get(case.case_id, []),
                              "summary": h.get("summary")},
                      env_fixed=s.env_fixed, overhead_s=r.overheads[-1] if len(r.overheads) > n_over else None,
                      wall_s=time.perf_counter() - t0)
