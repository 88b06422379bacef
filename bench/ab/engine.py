"""Running an A/B compare: many short processes, interleaved over the cases, until each case is decided.

Round r runs unit r of every case still open (like the runner's passes), so slow drift of the machine spreads
over all cases instead of landing on one. A unit is one process running A and B in ABBA blocks (same-process
design; its statistic comes from the child, bench.ab.child) or, in the pairs design, two processes, A then B
for even units and B then A for odd ones (ABBA order of processes), with log(median B / median A). After each
unit the case is looked at (bench.ab.decide) at the checkpoints, and one last time when its processes have used
--max-time seconds; a long call, of which fewer processes than the first checkpoint fit, has its later processes
lengthened to fill the budget and takes that last look only (stretched_process_time). A process that fails makes
its case `failed` with the child's reason. The folder is saved after every round (bench.ab.store).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.ab import store
from bench.ab.decide import cycle_log_ratios, decide, judge_counts, planned_looks
from bench.ab.matrix import ABPlan, make_ab_plan
from bench.ab.sides import worktree
from bench.ab.spec import ABSpec, Side
from bench.ab.store import CaseRun
from bench.cases import Case
from bench.env import environment, now_iso
from bench.launch.callgrind import CPU_ONLY, count_sides
from bench.launch.childenv import AB_BIND_ENV
from bench.launch.isolation import Isolation, make_isolation
from bench.launch.outcome import classify
from bench.launch.workdir import make_workdir
from bench.plan import PlanError
from bench.schema import AB_INSTRUCTION_COLUMN_NAMES as INSTR_COLUMNS
from bench.results.lifecycle import new_run_id

Log = Callable[[str], None]


class Scheduler:
    """Runs the units of every open case, round by round; `save()` is called after every round."""

    def __init__(self, plan: ABPlan, iso: Isolation, workdir: Path, log: Log, save: Callable[[], None]):
        self.plan, self.iso, self.workdir, self.log, self.save = plan, iso, workdir, log, save
        self.cfg = plan.config

    def run(self, runs: list[CaseRun]) -> None:
        while any(r.open for r in runs):
            for run in [r for r in runs if r.open]:
                self._unit(run)
                if not run.failure:
                    self._look(run)
                self.log(_line(run))
            self.save()

    def _look(self, run: CaseRun) -> None:
        """A look at the checkpoints, and the final one when the next unit would end past --max-time (a unit as
        long as the last one), so that a verdict comes within the budget, not one long process after it."""
        spent = run.wall_s + run.unit_s > self.cfg["max_time_s"]
        if run.process_time_s and not spent:
            return  # a stretched case reaches no checkpoint: its one look (K = 1) is the final one
        d = decide(run.ratios, checkpoints=self.plan.checkpoints, threshold=self.cfg["threshold"],
                   alpha=self.cfg["alpha"], stop=f"--max-time {self.cfg['max_time_s']:g} s" if spent else "",
                   cycles=run.cycle_ratios, looks=run.looks)
        if d is not None:
            run.look = d

    def _unit(self, run: CaseRun) -> None:
        """One unit; after the first, K is planned from its wall time (as if later ones took half of it), and a
        long call's later processes are stretched to fill the budget (stretched_process_time)."""
        before = run.wall_s
        self._measure_unit(run)
        run.unit_s = run.wall_s - before
        if run.looks is None and run.unit_s > 0:
            fit = int(self.cfg["max_time_s"] // (0.5 * run.unit_s))
            run.looks = planned_looks(self.plan.checkpoints, fit)
            if self.plan.design == "same-process" and run.cycles_s:
                run.process_time_s = stretched_process_time(
                    run.unit_s, run.cycles_s[0], self.cfg["process_time_s"], self.cfg["max_time_s"],
                    min(self.plan.checkpoints))
                if run.process_time_s:
                    run.looks = 1

    def _measure_unit(self, run: CaseRun) -> None:
        if self.plan.design == "same-process":
            row = self._process(run, "abba")
            if row is not None:
                run.cycle_ratios.append(cycle_log_ratios([ms for _, proc, _, _, ms in run.samples
                                                          if proc == run.processes]))
                run.ratios.append(float(row["log_ratio"]))
                run.a_ms.append(float(row["a_median_ms"]))
                run.b_ms.append(float(row["b_median_ms"]))
                run.cycles.append(int(row["cycles"]))
                run.cycles_s.append(float(row["cycles_s"]))
                run.block = int(row["block"])
            return
        rows = {}
        for key in (("a", "b") if len(run.ratios) % 2 == 0 else ("b", "a")):
            rows[key] = self._process(run, key)
            if rows[key] is None:
                return
        a, b = float(rows["a"]["a_median_ms"]), float(rows["b"]["b_median_ms"])
        run.ratios.append(math.log(b / a))
        run.a_ms.append(a)
        run.b_ms.append(b)

    def _process(self, run: CaseRun, mode: str) -> dict[str, Any] | None:
        """One child; its row, or None after recording the failure on the case."""
        case = replace(run.case, settings=replace(run.case.settings, workdir=str(self.workdir)))
        spec = ABSpec(case, run.a, run.b, mode=mode, process_time_s=run.process_time_s or self.cfg["process_time_s"])
        out = self.iso.for_device(case.device_type).run(spec.to_spec(), case.timeout_s)
        row, samples = classify(out, case.timeout_s)
        run.processes += 1
        run.wall_s += out.wall_s
        if row.get("status") != "ok":
            run.failure = f"process {run.processes} ({mode}): {row.get('status')}: {row.get('reason')}"
            return None
        run.add_samples(run.processes, [(str(s), float(v)) for s, v in samples])
        return row


FILL = 0.9  # the share of --max-time a long call's processes are planned to fill (they vary by a few %)


def stretched_process_time(unit_s: float, cycles_s: float, process_time_s: float, max_time_s: float,
                           first_checkpoint: int) -> float | None:
    """The --process-time of a long call's later processes, or None to keep the configured one.

    When fewer processes than the first checkpoint fit the budget, the case ends at its final look, when the next
    process would overrun --max-time: with 45 s processes (2 s calls) two of them end at 90 s and up to half a
    process of the budget is left unused. Here the processes that fit at the configured length (first one
    included) are kept, and the later ones are lengthened so that they end at FILL x --max-time: the same number of
    processes (the per-process interval and the ANOVA of bench.ab.decide see as many), more cycles each (the pooled
    interval sees more). `unit_s`: the first process's wall time; `cycles_s`: the part of it spent in counted
    cycles (the rest, start-up, builds and warm-up, each process pays again)."""
    fit = int(FILL * max_time_s // unit_s) if unit_s > 0 else 0
    if fit < 2 or fit >= first_checkpoint:
        return None
    per_process = (FILL * max_time_s - unit_s) / (fit - 1)
    stretched = per_process - (unit_s - cycles_s)
    return stretched if stretched > max(process_time_s, cycles_s) else None


def _line(run: CaseRun) -> str:
    d = run.look
    last = f"log B/A {run.ratios[-1]:+.3f}" if run.ratios else "no ratio"
    state = run.failure or (f"{d.verdict}: {d.reason}" if d is not None and d.verdict != "continue" else "")
    stretched = f" (process time {run.process_time_s:.0f} s)" if run.process_time_s else ""
    return f"{run.case.label()} [{run.a.label} vs {run.b.label}] process {run.processes}{stretched}: {last}" + \
        (f" -> {state}" if state else "")


def run_ab(*, a: str | None = None, b: str | None = None, a_rev: str | None = None, b_rev: str | None = None,
           repo: str | None = None,
           models: Any = None, models_from: Any = (), res: Any = "512", threads: Any = None, backends: Any = "eager",
           backend_b: str | None = None, precision: Any = None, devices: Any = "cpu", design: str | None = None,
           threshold: float = 0.05, alpha: float = 0.01, max_time: float = 120.0, checkpoints: Any = "8,16,32,64",
           process_time: float = 1.0, out: str | Path = "results", log: Log | None = None,
           argv: list[str] | None = None, metric: str = "time") -> tuple[pd.DataFrame, Path]:
    """Compare A and B (keywords = the `ab` command's flags); returns (one row per case, the folder written).
    metric "instructions" adds the instruction counts of both sides (instruction_columns) beside the timing.
    Raises PlanError for bad options before anything is written."""
    if metric not in ("time", "instructions"):
        raise PlanError(f"--metric: {metric!r} is not accepted; accepted: time, instructions")
    plan = make_ab_plan(a=a, b=b, a_rev=a_rev, b_rev=b_rev, repo=repo, models=models, models_from=models_from,
                        res=res, threads=threads, backends=backends, backend_b=backend_b, precision=precision,
                        devices=devices, design=design, threshold=threshold, alpha=alpha, max_time=max_time,
                        checkpoints=checkpoints, process_time=process_time)
    log = log or (lambda line: None)
    revs = (plan.rev.label, plan.rev_b.label if plan.rev_b else "working tree") if plan.rev else ("", "")
    runs: list[CaseRun] = []
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(worktree(plan.rev.top, plan.rev.commit)) if plan.rev else None
        tree_b = stack.enter_context(worktree(plan.rev_b.top, plan.rev_b.commit)) if plan.rev_b else None
        folder = _new_folder(Path(out))
        meta = _meta(plan, folder, argv)

        def save(status: str = "running") -> pd.DataFrame:
            frame = store.results_frame(store.result_row(r, plan.design, revs) for r in runs)
            meta.update(status=status, wall_s=round(time.perf_counter() - t0, 2), updated_at=now_iso())
            store.save(folder, frame, store.samples_frame(runs), meta)
            return frame

        workdir = make_workdir("ab")
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        iso = make_isolation(workdir, env=_child_env(plan))
        stack.callback(iso.close)
        runs.extend(CaseRun(c, *plan.sides(c, tree, tree_b)) for c in plan.cases)
        meta["sides"] = {r.case.case_id: {"a": asdict(r.a), "b": asdict(r.b)} for r in runs}
        try:
            Scheduler(plan, iso, workdir, log, save).run(runs)
            counted = _instructions(runs, plan, log) if metric == "instructions" else None
        except KeyboardInterrupt:
            save("interrupted")
            raise
    frame = save("complete")
    if counted is not None:
        frame = frame.assign(**{k: [counted[c].get(k) for c in frame["case_id"]] for k in INSTR_COLUMNS})
        store.save(folder, frame, store.samples_frame(runs), meta)
    return frame, folder


def _instructions(runs: list[CaseRun], plan, log: Log) -> dict[str, dict]:
    """case_id -> the instruction columns (one valgrind process per side, at once)."""
    env = _child_env(plan)
    return {r.case.case_id: instruction_columns(r.case, r.a, r.b, env=env, log=log) for r in runs}


def instruction_columns(case: Case, a: Side, b: Side, *, env: dict[str, str] | None = None,
                        log: Log | None = None) -> dict:
    """The instruction columns of one case: A and B counted under valgrind (bench.launch.callgrind: a process a
    side, at once where 2 CPUs are free), judged by bench.ab.decide.judge_counts. A side that could not be counted
    makes the case `failed` with the reason."""
    if case.device_type != "cpu":
        return {"instructions_verdict": "failed", "instructions_reason": CPU_ONLY}
    ca, cb = count_sides(case, a, b, env=env, log=log)
    reason = "; ".join(f"{side}: {c.reason}" for side, c in (("A", ca), ("B", cb)) if c.reason)
    if reason or not (math.isfinite(ca.instructions) and ca.instructions > 0):
        return {"instructions_verdict": "failed", "instructions_reason": reason or "no count"}
    spread = max(ca.spread_pct, cb.spread_pct)
    ratio, verdict = judge_counts(ca.instructions, cb.instructions, spread)
    return {"instructions_a": ca.instructions, "instructions_b": cb.instructions, "instructions_ratio": ratio,
            "instructions_verdict": verdict, "instructions_reason": f"forwards spread {spread:.3f}% at most"}


def _new_folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        folder = out / new_run_id(out, prefix="ab-")
        folder.mkdir()
    except OSError as e:
        raise PlanError(f"--out: cannot create a folder in {out} ({e.strerror}); accepted: a writable folder") from None
    return folder


def _child_env(plan: ABPlan) -> dict[str, str]:
    """What A/B children get over child_env(): the user-model sources, and OpenMP threads bound to their CPUs
    (AB_BIND_ENV, unless the environment says otherwise)."""
    from models.user import MODELS_FROM_ENV

    sources = plan.config.get("models_from") or []
    env = {k: v for k, v in AB_BIND_ENV.items() if k not in os.environ}
    return {**env, MODELS_FROM_ENV: os.pathsep.join(sources)} if sources else env


def _meta(plan: ABPlan, folder: Path, argv: list[str] | None) -> dict[str, Any]:
    bind = {k: os.environ.get(k, v) for k, v in AB_BIND_ENV.items()}
    return {"run_id": folder.name, "kind": "ab", "started_at": now_iso(), "status": "created", "omp_env": bind,
            "env": environment(list(argv) if argv is not None else list(sys.argv)), "config": plan.config,
            "cases": [c.to_spec() for c in plan.cases]}
