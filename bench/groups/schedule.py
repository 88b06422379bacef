"""Measuring interleaved groups: round after round, one process of every open group, until each is decided.

Round r runs one process of every group whose decision is still open (like the runner's passes, so slow drift of
the machine spreads over all groups, and every open group gets the same number of processes whatever one costs). A process measures the group's active sides (bench.measure.interleaved):
the fastest side and every side whose pair against it is still open; a side decided against the fastest (faster by
more than the margin, or tied) is left out of later processes, so its time goes to the pairs still open. The
pairs are looked at (bench.groups.pairs) when the group's process count reaches a checkpoint, and once more when
it stops. A group stops when every pair against its fastest side is decided (resolved), at the last checkpoint, or
when the run's budget has no room for its next process (then "not resolved", with the interval): a group that
resolves early leaves the rest of the budget to the open ones, and at the end the cheap open groups go on using
what the expensive ones cannot.

Everything measured is committed after every process, through the runner (pooled rows, samples, pairs.parquet,
meta.json's `groups`), so a killed run keeps it; --resume rebuilds each group's processes from samples.parquet
(every side's blocks are stored in cycle order, two per cycle) and goes on where it stopped. The scheduler knows
the runner only as a `GroupHost` (what it calls of it): the runner imports this module, never the other way round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from bench.groups import pairs as P
from bench.groups.budget import PROCESS_TIME_S, GroupPlan, process_s
from bench.cases import Case, base_name
from bench.env import now_iso
from bench.launch.outcome import classify
from bench.measure.result import ChildResult
from bench.results.lifecycle import RunState


class GroupHost(Protocol):
    """What the scheduler calls of the runner (bench.runner.Runner): its run, settings, guarded children and commits."""

    state: RunState
    profile: bool
    progress: Any
    log: Callable[[str], None]

    def process_case(self, case: Case, first: bool = True, profile: bool = False) -> Case: ...

    def run_guarded(self, spec: dict, timeout_s: float, device_type: str, what: str,
                    rep: int = 0) -> tuple[Any, tuple, int]: ...

    def commit(self, case: Case, rep: int, row: dict, samples: list[float], started: str, wall_s: float,
               marks: tuple | None, profile: list | None = None) -> None: ...

    def forget(self, case_ids: list[str]) -> None: ...

    def save(self) -> None: ...


@dataclass
class GroupRun:
    """A group while it is measured: its processes (cycles x sides, NaN for a side not in the process)."""

    plan: GroupPlan
    processes: list[np.ndarray] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # side -> reason
    active: list[int] = field(default_factory=list)
    spent_s: float = 0.0
    status: str = "open"  # open | resolved | not resolved | failed
    stop: str = ""
    calls_ms: dict[int, float] = field(default_factory=dict)  # last measured median per side

    def __post_init__(self) -> None:
        self.active = self.active or list(range(len(self.plan.cases)))

    @property
    def gid(self) -> str:
        return self.plan.group_id

    @property
    def open(self) -> bool:
        return self.status == "open"

    @property
    def usable(self) -> list[int]:
        return [i for i in range(len(self.plan.cases)) if i not in self.failed]

    def next_process_s(self) -> float:
        """One more process with the active sides, from their measured call times where known."""
        if not self.calls_ms:
            return self.plan.process_s * len(self.active) / max(1, len(self.plan.cases))
        return process_s([self.calls_ms.get(i, max(self.calls_ms.values())) / 1e3 for i in self.active])


def resume_runs(plans: list[GroupPlan], state: Any, samples_of: Callable[[str], dict[int, list[float]]]) -> list[GroupRun]:
    """The groups' runs, with what an earlier session of the run measured rebuilt from its samples: every side's
    blocks of a process are stored in cycle order, two per cycle, so cycle c's time is the mean of blocks 2c and
    2c + 1. A side whose row failed stays failed; the time already spent counts against the group's share."""
    rows = {str(r.get("case_id")): r for r in state.rows}
    known = state.meta.get("groups") or {}
    out = []
    for plan in plans:
        g = GroupRun(plan)
        per = [samples_of(c.case_id) for c in plan.cases]
        reps = sorted({rep for p in per for rep in p})
        for rep in reps:
            cols = [np.asarray(p.get(rep, []), dtype=np.float64) for p in per]
            n = max(len(c) // 2 for c in cols)
            cyc = np.full((n, len(plan.cases)), math.nan)
            for i, c in enumerate(cols):
                if len(c) >= 2 * n and n:
                    cyc[:, i] = (c[0:2 * n:2] + c[1:2 * n:2]) / 2
            g.processes.append(cyc)
        for i, c in enumerate(plan.cases):
            row = rows.get(c.case_id)
            if row is not None and row.get("status") not in (None, "ok"):
                g.failed[i] = str(row.get("reason") or row.get("status"))
            elif row is not None and row.get("latency_ms_median") is not None:
                g.calls_ms[i] = float(row["latency_ms_median"])
        prev = known.get(plan.group_id) or {}
        g.spent_s = float(prev.get("spent_s") or 0.0)
        if prev.get("active"):
            ids = [c.case_id for c in plan.cases]
            g.active = [ids.index(x) for x in prev["active"] if x in ids] or g.active
        out.append(g)
    return out


class GroupScheduler:
    """Runs the groups of one run through the runner (its isolation, health guard and commits)."""

    def __init__(self, runner: GroupHost, iso: Any, budget_s: float, tie: float,
                 process_time_s: float = PROCESS_TIME_S):
        self.r, self.iso, self.budget_s, self.tie, self.process_time_s = runner, iso, budget_s, tie, process_time_s
        self.spent_s = 0.0
        self.runs: list[GroupRun] = []
        self.fallen: list = []  # cases whose group process failed: the runner measures them alone

    # -- the loop ---------------------------------------------------------------------------------------------------
    def run(self, runs: list[GroupRun]) -> None:
        self.runs = runs
        self.spent_s = sum(g.spent_s for g in runs)
        for g in runs:
            if g.processes and g.open:
                self._look(g, final=False)
        while any(g.open for g in runs):
            for g in [g for g in runs if g.open]:
                if not g.open:
                    continue
                why = self._refused(g)
                if why and not g.processes:  # not one process left for it: its cases are measured alone
                    self._fall_back(g, f"no process of the group fitted: {why}")
                    continue
                if why:
                    self._look(g, final=True, stop=why)
                    continue
                self._process(g)
                self._look(g, final=False)

    def _refused(self, g: GroupRun) -> str:
        """Why the group may not run another process ("" when it may)."""
        n = len(g.processes)
        if n >= P.CHECKPOINTS[-1]:
            return f"the last checkpoint ({P.CHECKPOINTS[-1]} processes)"
        est = g.next_process_s()
        if self.spent_s + (0 if n < P.CHECKPOINTS[0] else est) > self.budget_s:
            left = max(0.0, self.budget_s - self.spent_s)
            return f"the budget ({self.budget_s:g} s; {left:.0f} s left, a process ~{est:.0f} s)"
        return ""

    # -- one process ------------------------------------------------------------------------------------------------
    def _process(self, g: GroupRun) -> None:
        r, rep = self.r, len(g.processes)
        sides = [i for i in g.active if i not in g.failed]
        cases = [r.process_case(g.plan.cases[i], first=rep == 0, profile=r.profile and rep == 0) for i in sides]
        spec = {"kind": "group", "cases": [c.to_spec() for c in cases], "process_time_s": self.process_time_s,
                "energy": rep == 0, "profile": rep == 0}
        timeout = max(c.timeout_s for c in cases)
        if r.progress:
            r.progress.group(g, self.spent_s, self.budget_s)
        started = now_iso()
        out, marks, redo = r.run_guarded(spec, timeout, cases[0].device_type, f"{g.gid} process {rep + 1}")
        self.spent_s += out.wall_s
        g.spent_s += out.wall_s
        status, _ = classify(out, timeout)
        if status.get("status") != "ok":  # the shared process died (a crash, a hang, oom): each case alone
            self._fall_back(g, f"process {rep + 1} of the group: {status.get('status')}: {status.get('reason')}")
            return
        result = out.result or ChildResult()
        side_rows = result.rows
        cyc = np.full((0, len(g.plan.cases)), math.nan)
        if side_rows:
            got = np.asarray(result.cycles, dtype=np.float64).reshape(-1, len(sides))
            cyc = np.full((got.shape[0], len(g.plan.cases)), math.nan)
            cyc[:, sides] = got
        samples: dict[int, list[float]] = {}
        for k, v in result.samples:
            samples.setdefault(int(k), []).append(float(v))
        for k, i in enumerate(sides):
            row = dict(side_rows[k]) if side_rows else dict(status)
            row.update(design="interleaved", group_id=g.gid, remeasured=redo)
            if row.get("status") != "ok":
                g.failed[i] = str(row.get("reason") or row.get("status"))
                cyc[:, i] = math.nan
            else:
                g.calls_ms[i] = float(row.get("latency_ms_median") or math.nan)
            r.commit(g.plan.cases[i], rep, row, samples.get(k, []) if row.get("status") == "ok" else [], started,
                     out.wall_s, marks, profile=row.pop("_profile", None))
        g.processes.append(cyc)

    def _fall_back(self, g: GroupRun, why: str) -> None:
        """The group's cases leave it for the isolated path (each in its own processes, so the one that crashes or
        hangs fails alone); what the group measured of them is dropped, and meta.json says why."""
        st = self.r.state
        ids = [c.case_id for c in g.plan.cases]
        st.drop(ids)
        self.r.forget(ids)
        g.status, g.stop = "isolated", f"measured case by case: {why}"
        g.processes.clear()  # no paired decision rests on what the group measured before it fell back
        self.fallen.extend(g.plan.cases)
        self.r.log(f"{g.gid}: {g.stop}")
        self._commit(g)

    # -- the look ---------------------------------------------------------------------------------------------------
    def _look(self, g: GroupRun, final: bool, stop: str = "") -> None:
        """Decide at a checkpoint (or when stopping): drop decided sides, close a resolved group, write its pairs."""
        usable = g.usable
        n = len(g.processes)
        if len(usable) < 2:
            g.status, g.stop = "failed", "fewer than two sides measured"
            self._commit(g)
            return
        if not (final or P.at_checkpoint(n)):
            return
        best, vs = P.against_fastest(g.processes, len(g.plan.cases), usable, self.tie)
        undecided = [s for s, d in vs.items() if d.verdict == "not resolved"]
        g.active = [best, *undecided] if best is not None else usable
        if best is not None and not undecided:
            g.status, g.stop = "resolved", f"every pair against the fastest decided after {n} processes"
        elif final:
            g.status, g.stop = "not resolved", f"stopped at {stop or 'the end'}"
        self._commit(g)

    def _commit(self, g: GroupRun) -> None:
        """The group's pairs (replacing its earlier ones) and its state in meta.json, then a save."""
        st = self.r.state
        st.pairs = [p for p in st.pairs if p.get("group_id") != g.gid] + pair_rows(g, self.tie, st.run_id)
        mark_noisy_pairs(st)
        st.meta.setdefault("groups", {})[g.gid] = {
            "status": g.status, "stop": g.stop, "processes": len(g.processes), "spent_s": round(g.spent_s, 2),
            "share_s": round(g.plan.share_s, 2), "cases": [c.case_id for c in g.plan.cases],
            "active": [g.plan.cases[i].case_id for i in g.active], "failed": {g.plan.cases[i].case_id: why
                                                                              for i, why in g.failed.items()}}
        st.meta["budget_spent_s"] = round(self.spent_s, 2)
        self.r.save()
        self.r.log(group_line(g, st.pairs))


def mark_noisy_pairs(state: Any) -> None:
    """Every pair of a run is noisy when either side's row is, with the sides' reasons."""
    noisy = {str(r.get("case_id")): str(r.get("noisy_reason") or "busy") for r in state.rows if r.get("noisy")}
    for p in state.pairs:
        why = "; ".join(f"{p[k]}: {noisy[p[c]]}" for k, c in (("fast", "fast_case_id"), ("slow", "slow_case_id"))
                        if p.get(c) in noisy)
        p["noisy"], p["noisy_reason"] = bool(why), why


def pair_rows(g: GroupRun, tie: float, run_id: str) -> list[dict]:
    """pairs.parquet rows of a group: every pair of its usable sides, with the group's verdict and fastest (their
    noisy flags are set by mark_noisy_pairs)."""
    usable = g.usable
    if len(usable) < 2 or not g.processes:
        return []
    best = P.fastest_side(g.processes, len(g.plan.cases), usable)
    decided = P.all_pairs(g.processes, usable, tie)
    cases = g.plan.cases
    c0 = cases[0]
    out = []
    for d in decided:
        f, s = cases[d.fast], cases[d.slow]
        out.append(dict(
            run_id=run_id, group_id=g.gid, level=c0.level, base=base_name(f.model), device=c0.device,
            device_name=c0.device_name, backend=c0.backend, precision=c0.precision, batch=c0.batch, threads=c0.threads, channels_last=c0.channels_last,
            folded=c0.folded, height=c0.height, width=c0.width, fast_case_id=f.case_id, slow_case_id=s.case_id,
            fast=f.variant, slow=s.variant, fast_model=f.model, slow_model=s.model, ratio=d.ratio,
            ci_low=math.exp(d.lo) if math.isfinite(d.lo) else math.nan,
            ci_high=math.exp(d.hi) if math.isfinite(d.hi) else math.nan, ci_level=d.confidence,
            n_processes=d.n, sd_log=d.sd, tie=tie, verdict=d.verdict, reason=d.reason,
            against_fastest=best in (d.fast, d.slow), group_verdict="resolved" if g.status == "resolved"
            else "not resolved", fastest=cases[best].variant if best is not None else "", noisy=False,
            noisy_reason="", design="interleaved"))
    return out


def group_line(g: GroupRun, pairs: list[dict]) -> str:
    """One line per look: the group, its processes and spend, and its pairs against the fastest."""
    mine = [p for p in pairs if p.get("group_id") == g.gid and p.get("against_fastest")]
    said = ", ".join(f"{p['fast']}<{p['slow']} {p['ratio']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] "
                     f"{p['verdict']}" for p in mine)
    return f"{g.gid}: {g.status} after {len(g.processes)} processes, {g.spent_s:.0f} s" + (f" ({g.stop})" if
                                                                                           g.stop else "") + \
        (f": {said}" if said else "")
