"""Scheduling of a run: which cases still need a process, what is decided without one, in which order.

- Before a child is started: statically unsupported combinations (bench.backends.unsupported_reason) become
  `unsupported` rows, absent devices (--allow-missing) and cases whose attention scores alone would not fit in the
  device's available memory become `skipped` rows, with the reason.
- Each case runs in its own child (bench.launch) with a timeout; its outcome becomes the row's status.
- After every case the run is saved atomically (bench.results), so killing the run at any moment leaves a valid
  partial run; `--resume` finishes it, skipping every case whose case_id already has a complete row (with
  --repeats R: R processes, or a failure).
- `--repeats R`: pass p runs process p of every case (bench.results.repeats pools them into the case's one row).
- Machine health (bench.health): a speed probe in a child at the start, between passes, every ~60 s and at the
  end; other processes' CPU and steal around every process; a row measured beyond the bounds is `noisy`, with the
  figures in `noisy_reason`, and meta["health"] keeps the probes, the bounds, every process's figures and a summary.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping

from bench import health
from bench.calibration import CALIBRATION_TIMEOUT_S, Calibrations, calibration_key
from bench.cases import Case, case_label, group_key
from bench.groups.budget import DEFAULT_BUDGET_S, PROCESS_TIME_S, call_s, form_groups, plan_groups
from bench.groups.pairs import DEFAULT_TIE
from bench.groups.schedule import GroupScheduler, mark_noisy_pairs, resume_runs
from bench.precheck import CaseChecks
from bench.quiet import QuietWaits
from bench.env import now_iso
from bench.launch.childenv import MALLOC_ENV, child_env
from bench.launch.faults import FAULT_ENV
from bench.launch.workdir import make_workdir
from bench.launch.isolation import ForkServer, Outcome, Isolation, make_isolation
from bench.launch.outcome import child_error, classify
from bench.results.lifecycle import RunState, isna
from bench.results.repeats import add_process

HEALTH_TIMEOUT_S = 60.0


class Runner:
    """Runs the cases of a RunState that have no row yet. `progress(case, i, n)` and `log(line)` are optional.

    design "interleaved": the cases of one decision group share processes (bench.groups), the rest run alone;
    "isolated": every case in its own processes. wait_quiet_s > 0: a process measured while other processes used
    the CPU is measured again after waiting (up to that long) for a quiet machine (bench.health)."""

    def __init__(self, state: RunState, cases: list[Case], *, allow_missing: set[str] | None = None,
                 progress=None, log: Callable[[str], None] | None = None, isolation: str | None = None,
                 calibrate: bool = True, repeats: int = 1, child_env: Mapping[str, str] | None = None,
                 profile: bool = False, design: str = "isolated", budget_s: float = DEFAULT_BUDGET_S,
                 tie: float = DEFAULT_TIE, wait_quiet_s: float = 0.0, process_time_s: float = PROCESS_TIME_S):
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        self.state = state
        self.repeats = repeats
        self.cases = cases
        self.missing = allow_missing or set()
        self.progress = progress
        self.log = log or (lambda s: None)
        self.isolation_kind = isolation
        self.calibrate = calibrate
        self.profile = profile  # a profiled pass after the timed one, in each case's first process
        self.child_env = dict(child_env or {})  # e.g. DENSEBENCH_MODELS_FROM: the children import users' models
        self.design, self.budget_s, self.tie, self.wait_quiet_s = design, budget_s, tie, wait_quiet_s
        self.process_time_s = process_time_s  # of one interleaved group process
        self.checks = CaseChecks(self.missing, self.log, cases)
        self._groups: dict[str, dict[int, list[float]]] | None = None
        self._guard: health.Guard  # made by run(), with the run's isolation
        self._iso: Isolation | None = None
        self._workdir: Path | None = None
        self._fault: str | None = None
        self._rows_at: dict[str, int] = {}
        self._procs: dict[str, list[dict]] = {}
        self._remeasured: dict[str, int] = {}
        self._waits: QuietWaits | None = None
        self.cal = Calibrations(state.meta, lambda spec, case: self._isolation_for(self._iso, case).run(
            spec, CALIBRATION_TIMEOUT_S), lambda what: self.waits.before(what), self.log, bandwidth=profile)
        self.overheads: list[float] = []  # child wall time minus its own measuring time (per ok case)

    def _processes_done(self, row: dict | None) -> int:
        """Processes already measured for a case with this row (0: no row); a failed case counts as complete."""
        if row is None:
            return 0
        if row.get("status") != "ok":
            return self.repeats
        r = row.get("repeats")
        return 1 if r is None or isna(r) else int(r)

    def pending(self) -> list[Case]:
        """Cases without a row, or ok with fewer processes than --repeats asks (a resumed run)."""
        rows = {r["case_id"]: r for r in self.state.rows if r.get("case_id")}
        return [c for c in self.cases if self._processes_done(rows.get(c.case_id)) < self.repeats]

    # -- pre-child decisions (bench.precheck) and calibrations (bench.calibration) ----------------------------------
    def _peak(self, iso: Isolation, case: Case) -> float | None:
        self._iso = self._iso or iso
        return self.cal.peak(case) if self.calibrate else None

    def _bandwidth(self, case: Case) -> float | None:
        """The device setting's triad bandwidth (calibrated with the peak when profiling), or None."""
        return self.cal.bandwidth(case)

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        st = self.state
        st.meta["status"] = "running"
        st.save(results_only=True)
        workdir = make_workdir(st.run_id)
        iso = make_isolation(workdir, self.isolation_kind, env=self.child_env)
        st.meta["isolation"] = iso.name
        st.meta["malloc_env"] = {k: child_env()[k] for k in MALLOC_ENV}
        self.attach(iso, workdir, os.environ.get(FAULT_ENV))
        self._rows_at = {r["case_id"]: i for i, r in enumerate(st.rows) if r.get("case_id")}
        try:
            groups, todo = self._split()
            to_spawn = [c for c in todo if not self.checks.static(c, fit=False)]
            if isinstance(iso, ForkServer) and (to_spawn or groups):
                iso.launch()  # imports torch in the background while the parent traces the models below
            to_spawn = [c for c in to_spawn if not self.checks.fit(c)]
            for case in [*to_spawn, *(c for g in groups for c in g)]:
                self.checks.macs(case)
            if self.calibrate:  # every device setting up front, on a quiet machine: the estimates need the rates
                for case in [*to_spawn, *(c for g in groups for c in g)]:
                    self._peak(iso, case)
            if groups:
                fallen = self._run_groups(groups)
                todo, to_spawn = todo + fallen, to_spawn + fallen
            self._run_isolated(todo, to_spawn)
            self._close_run()
        finally:
            iso.close()
            if isinstance(iso, ForkServer):
                st.meta["worker_server_start_s"] = round(iso.start_s, 3)
            shutil.rmtree(workdir, ignore_errors=True)
        if self.overheads:
            st.meta["per_case_overhead_s"] = {"median": sorted(self.overheads)[len(self.overheads) // 2],
                                              "max": max(self.overheads), "n": len(self.overheads)}
        return st

    def _split(self) -> tuple[list[list[Case]], list[Case]]:
        """(groups still open for the interleaved design, cases for the isolated path that still need a process)."""
        if self.design != "interleaved":
            return [], self.pending()
        closed = {gid for gid, g in (self.state.meta.get("groups") or {}).items() if g.get("status") != "open"}
        fine = [c for c in self.cases if not self.checks.static(c)]
        groups, _ = form_groups(fine)
        groups = [g for g in groups if group_key(g[0].as_row()) not in closed]
        grouped = {c.case_id for g in groups for c in g}
        return groups, [c for c in self.pending() if c.case_id not in grouped]

    def forget(self, case_ids: list[str]) -> None:
        """Drop what this session knows of these cases (rows moved, pooled processes, sample index)."""
        self._rows_at.clear()
        self._rows_at.update({r["case_id"]: i for i, r in enumerate(self.state.rows) if r.get("case_id")})
        for cid in case_ids:
            self._procs.pop(cid, None)
            self._remeasured.pop(cid, None)
            if self._groups is not None:
                self._groups.pop(cid, None)
        self._guard.forget(case_ids)

    def _run_groups(self, groups: list[list[Case]]) -> list[Case]:
        """Measure the interleaved groups; returns the cases of groups whose shared process failed."""
        plans = plan_groups(groups, self.budget_s, lambda c: self.estimate_call_s(c))
        self.state.meta["budget_s"] = self.budget_s
        runs = resume_runs(plans, self.state, self._groups_of)
        sched = GroupScheduler(self, self._iso, self.budget_s, self.tie, self.process_time_s)
        sched.run(runs)
        return sched.fallen

    def _run_isolated(self, todo: list[Case], to_spawn: list[Case]) -> None:
        """Today's path: process p of every case that has fewer than p + 1 (passes), so drift spreads over all."""
        st, R, rows_at = self.state, self.repeats, self._rows_at
        done = {c.case_id: self._processes_done(st.rows[rows_at[c.case_id]] if c.case_id in rows_at else None)
                for c in todo}
        schedule = [(p, c) for p in range(R) for c in todo if done[c.case_id] <= p]
        if self.progress and hasattr(self.progress, "set_estimates"):
            per = {c.case_id: self.estimate_s(c, R) for c in to_spawn}
            self.progress.set_estimates([per.get(c.case_id, 0.05) for _, c in schedule])
        for i, (rep, case) in enumerate(schedule):
            at = rows_at.get(case.case_id)
            if rep > 0 and at is not None and st.rows[at].get("status") != "ok":
                continue  # failed or decided statically in an earlier pass: the case is complete
            if self.progress:
                self.progress(case, i, len(schedule))
            self.run_case(case, rep)

    def _close_run(self) -> None:
        """The end probe, the calibrations repeated (peak = the larger), frac_of_peak redone, a last save."""
        if self._guard.probed:
            self._probe(self._iso, "end", None, self._rows_at)
        mark_noisy_pairs(self.state)  # a probe after a group closed may have flagged a side since (drift)
        if self.calibrate and self.state.rows:
            cases = [c for c in self.cases if c.case_id in self._rows_at]
            self.cal.repeat_at_end(cases)
            self.cal.apply(self.state.rows)
        self._guard.summarize()
        self.state.save()

    # -- one case at a time: the isolated path, and a fleet node's scratch state (bench.fleet.remote) ---------------
    def attach(self, iso: Isolation, workdir: Path, fault: str | None = None) -> None:
        """Where the children run: the isolation, its scratch folder and the fault to inject (tests); the health
        guard probes the machine's speed in a child of that isolation. run() attaches its own."""
        self._iso, self._workdir, self._fault = iso, workdir, fault
        self._guard = health.Guard(self.state.meta, lambda: self._health_probe(iso))

    def clear(self) -> None:
        """Empty the state's rows, samples and profile rows, and this runner's index of them."""
        for records in (self.state.rows, self.state.samples, self.state.profile):
            records.clear()
        self._rows_at, self._procs = {}, {}

    def run_case(self, case: Case, rep: int = 0) -> None:
        """Process number `rep` of a case: run it (or decide it statically), pool, store the row and save."""
        started = now_iso()
        t0 = time.perf_counter()
        static = self.checks.static(case) if rep == 0 else None
        if static:
            self.commit(case, rep, {"status": static[0], "reason": static[1], "design": "isolated"}, [], started,
                        time.perf_counter() - t0, None)
            return
        case = self.process_case(case, first=rep == 0, profile=self.profile and rep == 0)
        out, marks, redo = self.run_guarded(case.to_spec(), case.timeout_s, case.device_type, case.label(), rep)
        row, samples = classify(out, case.timeout_s)
        row.update(design="isolated", remeasured=redo)
        if out.result and row.get("status") == "ok":
            self._note_overhead(out, samples)
        self.commit(case, rep, row, samples, started, out.wall_s, marks,
                    profile=out.result.profile if out.result and row.get("status") == "ok" else None)

    # -- what the group scheduler (bench.groups.schedule) and the isolated path share --------------------------------
    def process_case(self, case: Case, first: bool = True, profile: bool = False) -> Case:
        """The case as one of its processes runs it (MACs, calibrated peak, workdir, fault, budget share); the
        first process also measures eager fp32's own numerics (a float64 forward)."""
        settings = replace(case.settings, device_peak_gmacs_per_s=self._peak(self._iso, case),
                           workdir=str(self._workdir), numerics64=first)
        if self._fault:
            settings = replace(settings, fault=self._fault)
        if profile:
            from bench.results.store import TRACES, trace_file  # pandas: only a profiled run's parent needs it

            traces = self.state.run_dir / TRACES
            traces.mkdir(exist_ok=True)
            settings = replace(settings, profile=True, bandwidth_gb_per_s=self._bandwidth(case),
                               trace_path=str(traces / trace_file(case.case_id)))
        R = self.repeats
        return replace(case, macs=self.checks.macs(case), settings=settings, min_time_s=case.min_time_s / R,
                       max_time_s=case.max_time_s / R)

    def run_guarded(self, spec: dict, timeout_s: float, device_type: str, what: str,
                    rep: int = 0) -> tuple[Outcome, tuple, int]:
        """Run one child; when the machine was busy meanwhile, wait for quiet (--wait-quiet) and run it again (at
        most health.MAX_REMEASURE times). (outcome, its CPU marks for the guard, times measured again)."""
        redo = 0
        while True:
            when = self._guard.due(rep)
            if when:
                self._probe(self._iso, when, rep, self._rows_at)
            before = health.cpu_mark()
            out = self._isolation_for(self._iso, device_type).run(spec, timeout_s)
            marks = (before, health.cpu_mark(), out.cpu_s)
            why = self._guard.busy(*marks)
            if not why or redo >= health.MAX_REMEASURE or not self.waits.wait(f"{what}: {why}"):
                return out, marks, redo
            redo += 1

    def commit(self, case: Case, rep: int, row: dict, samples: list[float], started: str, wall_s: float,
               marks: tuple | None, profile: list | None = None) -> None:
        """One process's row of a case: health record, pooled with its earlier processes, stored, saved, logged."""
        st = self.state
        if marks is not None:
            self._guard.record(case.case_id, rep, *marks)
        if profile:
            st.profile.extend({**r, "run_id": st.run_id, "case_id": case.case_id} for r in profile)
        full = {**case.as_row(), **{k: v for k, v in row.items() if v is not None},
                "run_id": st.run_id, "host": st.meta.get("host"), "started_at": started, "wall_s": wall_s}
        full.update(case.as_row())  # identity is the parent's, whatever the child said
        self._remeasured[case.case_id] = self._remeasured.get(case.case_id, 0) + int(row.get("remeasured") or 0)
        self._store(case, rep, full, samples, self._rows_at, self._procs)
        stored = st.rows[self._rows_at[case.case_id]]
        stored.update(design=row.get("design", "isolated"), group_id=row.get("group_id"),
                      remeasured=self._remeasured[case.case_id])
        if stored.get("design") == "interleaved":
            stored["converged"] = None  # the group's decision, not a per-case CI target, ends its measuring
        self._mark_noisy(case.case_id, self._rows_at)
        self.save()
        self.log(row_line(stored))

    def save(self) -> None:
        st = self.state
        self._guard.summarize()
        st.meta["cases_done"] = sum(1 for r in st.rows if self._processes_done(r) >= self.repeats)
        st.meta["updated_at"] = now_iso()
        st.save()

    # -- waiting for a quiet machine (bench.quiet) -----------------------------------------------------------------
    def say(self, line: str) -> None:
        """A line the user sees with or without --verbose (waits, calibrations on a busy machine)."""
        note = getattr(self.progress, "note", None)
        (note or self.log)(line)

    @property
    def waits(self) -> QuietWaits:
        if self._waits is None or self._waits.guard is not self._guard:
            self._waits = QuietWaits(self._guard, self.wait_quiet_s, self.say)
        return self._waits

    def _store(self, case: Case, rep: int, full: dict, samples: list[float], rows_at: dict, procs: dict) -> None:
        """Add one process's row and samples to the run (bench.results.repeats.add_process)."""
        add_process(self.state, case.case_id, rep, full, samples, rows_at, procs, self._groups_of(case.case_id),
                    self.repeats)

    # -- machine health (bench.health) ----------------------------------------------------------------------------
    def _health_probe(self, iso: Isolation) -> dict:
        """The speed probe in a child of the run's own isolation: the parent runs no tensor op."""
        out = iso.run({"kind": "health", "seconds": health.PROBE_SECONDS}, HEALTH_TIMEOUT_S)
        return (out.result.health if out.result else None) or {"error": child_error(out)}

    def _probe(self, iso: Isolation, when: str, rep: int | None, rows_at: dict) -> None:
        """Probe the machine's speed; the rows of the processes it closes get their drift judged."""
        for case_id in self._guard.run_probe(when, rep):
            self._mark_noisy(case_id, rows_at)
        p = self._guard.probes[-1]
        self.log(f"speed probe ({when}): " + (f"{p['gmacs_per_s']:.1f} GMAC/s" if p["gmacs_per_s"] else
                                              f"failed: {p['error']}"))

    def _mark_noisy(self, case_id: str, rows_at: dict) -> None:
        """A row's noisy / noisy_reason from its processes' health (False / "" for a row decided without a child)."""
        if case_id in rows_at:
            row = self.state.rows[rows_at[case_id]]
            row["noisy"], row["noisy_reason"] = self._guard.verdict(case_id, self.repeats)

    def _groups_of(self, case_id: str) -> dict[int, list[float]]:
        """repeat -> samples of a case (indexed from the run's samples once, then kept up to date)."""
        if self._groups is None:
            self._groups = {}
            for s in self.state.samples:
                r = s.get("repeat")
                self._groups.setdefault(str(s.get("case_id")), {}).setdefault(
                    0 if r is None or isna(r) else int(r), []).append(float(s["latency_ms"]))
        return self._groups.setdefault(case_id, {})

    def estimate_call_s(self, case: Case) -> float:
        """One call's seconds guessed from the case's MACs at the device's calibrated rate."""
        rate = (self.state.meta.get("calibration", {}).get(calibration_key(case)) or {}).get("gmacs_per_s")
        return call_s(self.checks.known_macs(case), rate)

    def estimate_s(self, case: Case, repeats: int = 1) -> float:
        """estimate_case_s at the device's calibrated rate, from the case's MACs."""
        rate = (self.state.meta.get("calibration", {}).get(calibration_key(case)) or {}).get("gmacs_per_s")
        return estimate_case_s(case, self.checks.known_macs(case), rate, repeats)

    def _isolation_for(self, iso: Isolation, case: Case | str) -> Isolation:
        """Where the case runs (bench.launch.isolation: `for_device`), noting in meta.json when CUDA cases leave
        the fork server for fresh interpreters."""
        chosen = iso.for_device(case if isinstance(case, str) else case.device_type)
        if chosen is not iso and "isolation_cuda" not in self.state.meta:
            self.state.meta["isolation_cuda"] = "spawn (the fork server had loaded the CUDA driver)"
            self.log("fork server loaded the CUDA driver: CUDA cases run in fresh interpreters")
        return chosen

    def _note_overhead(self, out: Outcome, samples: list[float]) -> None:
        """Child wall time not spent in the timer: fork + imports left + build + prepare + numerics + result write."""
        timing = out.result.child.timing_s if out.result else None
        if timing is not None:
            self.overheads.append(max(0.0, out.wall_s - float(timing)))


def estimate_case_s(case: Case, macs: float | None, rate_gmacs: float | None, repeats: int = 1) -> float:
    """Rough wall time of one process of a case for the ETA and --list: overhead + first call + warm-up +
    sampling (its share of the budget with `repeats` processes), with one call's time guessed from its MACs (1 GMAC
    when unknown) at 30% of the device's rate (10 GMAC/s when not calibrated)."""
    call = call_s(macs, rate_gmacs)
    lo, hi = case.min_time_s / repeats, case.max_time_s / repeats
    warm = max(2 * call, min(max(0.5, 0.3 * hi), 10 * call))
    sampling = max(call, min(hi, max(lo, 30 * call / repeats)))
    return 0.3 + call + warm + sampling


def row_line(row: dict) -> str:
    """The one line --verbose prints per finished case (the local runner and the fleet driver)."""
    lab = case_label(row, device="device")
    noisy = f" [noisy: {row.get('noisy_reason')}]" if row.get("noisy") else ""
    if row.get("status") == "ok":
        return (f"{lab}: {row.get('latency_ms_median', float('nan')):.2f} ms (n={row.get('n')}, "
                f"{row.get('wall_s', 0):.1f} s){noisy}")
    return f"{lab}: {row.get('status')}: {row.get('reason')}{noisy}"
