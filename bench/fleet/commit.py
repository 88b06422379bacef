"""The driver's side of a result: into the run folder through the suite's own commit (RunState.save: samples,
then results, then meta.json, each atomic), one case at a time, as bench.runner does locally.

Per-host metadata lives in meta.json `fleet.nodes[host]`: the node's environment, its calibration (keys as
bench.runner's, per host since two hosts' peaks differ) and its health probes per device.
"""
from __future__ import annotations

import os

from bench.cases import Case
from bench.env import now_iso
from bench.fleet.records import NODE_LOST, CaseResult
from bench.results.lifecycle import RunState


def fleet_meta(state: RunState) -> dict:
    return state.meta.setdefault("fleet", {})


def host_calibration(state: RunState, host: str) -> dict:
    """What this host has already calibrated in this run (sent with its cases, so a resume does not redo it)."""
    return dict(((fleet_meta(state).get("nodes") or {}).get(host) or {}).get("calibration") or {})


def put_row(state: RunState, row: dict) -> None:
    """Replace the case's row (a retried case) or add it; its earlier samples go with an earlier row."""
    cid = row["case_id"]
    at = next((i for i, r in enumerate(state.rows) if r.get("case_id") == cid), None)
    if at is None:
        state.rows.append(row)
    else:
        state.samples = [s for s in state.samples if s.get("case_id") != cid]
        state.rows[at] = row


def _write_trace(state: RunState, name: str, data: bytes) -> None:
    from bench.results.store import TRACES

    d = state.run_dir / TRACES
    d.mkdir(exist_ok=True)
    tmp = d / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, d / name)


def _note_host(state: RunState, res: CaseResult) -> None:
    node = fleet_meta(state).setdefault("nodes", {}).setdefault(res.host, {})
    node.setdefault("calibration", {}).update(res.calibration)
    h = node.setdefault("health", {}).setdefault(res.device, {"probes": [], "cases": {}})
    h["probes"], h["summary"] = res.health.get("probes") or [], res.health.get("summary")
    h["cases"][res.case_id] = res.health.get("case") or []
    if res.env_fixed:
        node["ray_env_fixed"] = res.env_fixed
    if res.overhead_s is not None:
        fleet_meta(state).setdefault("overhead_s", {})[res.case_id] = round(res.overhead_s, 4)


def commit_result(state: RunState, res: CaseResult, round_trip_s: float | None = None) -> dict:
    """Store one node's case in the run and commit; returns the stored row."""
    row = {**res.row, "run_id": state.run_id, "host": res.host}
    put_row(state, row)
    state.samples.extend({"run_id": state.run_id, "case_id": res.case_id, "repeat": 0, "iter": j, "latency_ms": v}
                         for j, v in enumerate(res.samples))
    state.profile.extend({**p, "run_id": state.run_id, "case_id": res.case_id} for p in res.profile)
    if res.trace_name and res.trace:
        _write_trace(state, res.trace_name, res.trace)
    _note_host(state, res)
    if round_trip_s is not None:  # the driver's wait beyond the node task's own time: Ray's share of a case
        fleet_meta(state).setdefault("ray_s", {})[res.case_id] = round(max(0.0, round_trip_s - res.wall_s), 4)
    save(state)
    return row


def commit_lost(state: RunState, case: Case, host: str, detail: str, started_at: str, wall_s: float) -> dict:
    """The row of a case whose node was lost mid-case (no other node of its class to retry it on)."""
    row = {**case.as_row(), "status": "error", "reason": f"{NODE_LOST}: {host} ({detail})"[:400],
           "run_id": state.run_id, "host": host, "started_at": started_at, "wall_s": wall_s, "noisy": False,
           "noisy_reason": ""}
    put_row(state, row)
    fleet_meta(state).setdefault("lost", []).append({"case_id": case.case_id, "host": host, "at": now_iso(),
                                                     "detail": detail[:200]})
    save(state)
    return row


def note_retry(state: RunState, case: Case, lost_host: str, to_host: str) -> None:
    fleet_meta(state).setdefault("retried", []).append({"case_id": case.case_id, "lost": lost_host,
                                                        "to": to_host, "at": now_iso()})


def save(state: RunState) -> None:
    state.meta["cases_done"] = sum(1 for r in state.rows if r.get("status"))
    state.meta["updated_at"] = now_iso()
    state.save()

