"""The Python API of densebench; `run_bench.py` is a thin layer over it.

    import bench
    r = bench.run(models=["evit-b1:msla", "evit-b1:softmax"], res=[512, 1024], devices="cpu")
    r.results.pivot_table(index="model", columns="height", values="latency_ms_median")
    d = bench.compare(bench.load_run("results/base"), r)       # one row per case: ratio, CI, verdict
    bench.report([r.path], "reports/mine.html")

`run` plans (bench.plan: everything validated before a folder exists), creates the run folder
(bench.results.lifecycle), measures every case in its own child process (bench.runner), or on a Ray cluster
(bench.fleet), and returns the stored run (`Run`: `.results` and `.samples` DataFrames, `.meta`, `.path`). A case
that fails is a row with a status and a reason; an interrupted run (RunInterrupted, from bench.results.lifecycle
so that the fleet raises the same one) keeps every finished case and is finished by `resume`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.env import now_iso
from bench.errors import ArgumentError, bool_arg, callable_arg, number_arg, path_arg, refuse, str_items
from bench.fleet.dispatch import measure_on_cluster
from bench.fleet.placement import plan_on_cluster
from bench.groups.budget import DEFAULT_BUDGET_S, PROCESS_TIME_S
from bench.plan import (Plan, PlanError, check_environment, check_options, load_sources, make_plan,
                        oversubscription_warnings)
from bench.results.lifecycle import RUN_ID, RunInterrupted, RunState, create_run, open_run, stop_run
from bench.results.store import Run
from bench.results.store import load_run as _load_run
from bench.schema import STATUSES
from bench.analysis.report import write_report
from bench.launch.callgrind import add_instruction_columns

Progress = Callable[..., None]


def run(models: Any = None, *, out: str | os.PathLike = "results", run_id: str | None = None,
        report: bool = True, report_dir: str | os.PathLike | None = None, progress: Progress | None = None,
        log: Callable[[str], None] | None = None, argv: list[str] | None = None, cluster: str | None = None,
        hosts: list[str] | None = None, **options: Any) -> Run:
    """Measure a matrix into a new run folder OUT/RUN_ID; returns the stored run.

    `options` are bench.plan.make_plan's: level, res, devices, batch, precision, threads, backends, channels_last,
    fold, min_time, max_time, timeout, repeats, seed, quick, calibrate, allow_missing, models_from. `cluster`: a
    Ray address (or 'local') to measure on its nodes (bench.fleet; `hosts` narrows them). The report goes to
    report_path(run folder, report_dir). Raises bench.plan.PlanError on bad options (nothing written) and
    RunInterrupted when interrupted. Every argument is checked first (ArgumentError, PlanError: both
    bench.BenchInputError, one line), before anything is imported, joined, measured or written.
    """
    hosts = _check_hosts(cluster, hosts)
    _check_call(out=out, report=report, report_dir=report_dir, progress=progress, log=log, argv=argv)
    if run_id is not None and not (isinstance(run_id, str) and RUN_ID.fullmatch(run_id)):
        raise refuse("run_id", run_id, "None (date-time-random) or a name of letters, digits, '.', '_', '-' "
                     "(not first), up to 100 characters")
    check_options({"models": models, **options})
    if cluster:
        plan = plan_on_cluster(cluster, hosts, models, **options)
    else:
        plan = make_plan(models, **options)
    state = start(plan, out, run_id=run_id, argv=argv)
    try:
        if cluster:
            measure_on_cluster(state, plan, cluster, hosts=hosts, progress=progress, log=log)
        else:
            measure(state, plan, progress=progress, log=log)
    finally:
        state.close()
    if report:
        write_run_report(state.run_dir, report_dir)
    return load_run(state.run_dir)


def profile(models: Any = None, **options: Any) -> Run:
    """`run` with a profiled pass after each case's timed one (`run_bench.py profile`): the returned run's
    `.profile` is profile.parquet (bench.schema.PROFILE_COLUMNS: time, MACs, bytes, GMAC/s per op kind, module and
    top op, against the device setting's roofline), and each case's trace is in `<run>/traces/`."""
    return run(models, profile=True, **options)


def start(plan: Plan, out: str | os.PathLike, *, run_id: str | None = None,
          argv: list[str] | None = None) -> RunState:
    """The run folder of a plan (its meta.json records the environment, the configuration and the cases)."""
    return create_run(Path(out), plan.cases, plan.config, run_id=run_id, argv=argv)


def resume(path: str | os.PathLike, *, report: bool = True, report_dir: str | os.PathLike | None = None,
           progress: Progress | None = None, log: Callable[[str], None] | None = None,
           argv: list[str] | None = None, retry_failed: Iterable[str] = ()) -> Run:
    """Finish an interrupted run without redoing its finished cases; the matrix is the run's own. Cases that
    ended with a status in `retry_failed` (e.g. {"error", "timeout"}, or "error,timeout") are measured again.
    ArgumentError (one line) for an argument of the wrong type, before the folder is opened."""
    _check_call(path=path, report=report, report_dir=report_dir, progress=progress, log=log, argv=argv)
    state = reopen(path, argv, retry_failed=retry_failed)
    try:
        measure(state, plan_of(state), progress=progress, log=log)
    finally:
        state.close()
    if report:
        write_run_report(state.run_dir, report_dir)
    return load_run(state.run_dir)


def reopen(path: str | os.PathLike, argv: list[str] | None = None, *,
           retry_failed: Iterable[str] = ()) -> RunState:
    """An existing run folder for resuming (locked until `state.close()`), with the resume recorded in its
    meta.json: when, the command, the cases measured again because their samples were not all stored
    (`redo`) and those whose status the user asked to retry (`retried`)."""
    retry_failed = retry_statuses(retry_failed)
    state = open_run(Path(path_arg("path", path)))
    retried = state.forget(retry_failed)
    state.meta.setdefault("resumed", []).append({"at": now_iso(), "command": argv or [], "redo": state.redo,
                                                 "retried": retried})
    return state


def retry_statuses(value: Any) -> list[str]:
    """`retry_failed` as statuses: a comma string ("error" is one status, "error,timeout" two) or an iterable of
    status names, each a failed status (bench.schema.STATUSES but ok); ArgumentError otherwise."""
    accepted = f"a comma string or a list of {', '.join(STATUSES[1:])}"
    if isinstance(value, (list, tuple, set, frozenset)) and not value:
        return []
    items = str_items("retry_failed", value, accepted)
    bad = [s for s in items if s not in STATUSES[1:]]
    if bad:
        raise refuse("retry_failed", bad[0], accepted)
    return list(dict.fromkeys(items))


def _check_call(**args: Any) -> None:
    """The arguments every door shares, by name: paths, flags, callbacks and argv."""
    for what, value in args.items():
        if what in ("out", "path"):
            path_arg(what, value)
        elif what == "report_dir" and value is not None:
            path_arg(what, value)
        elif what == "report":
            bool_arg(what, value)
        elif what in ("progress", "log"):
            callable_arg(what, value)
        elif what == "argv" and value is not None and not (
                isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value)):
            raise refuse(what, value, "None or a list of strings (the command line recorded in meta.json)")


def _check_hosts(cluster: Any, hosts: Any) -> list[str] | None:
    """`cluster` None or a non-empty address; `hosts` None, a comma string or a list of host names, and only
    with a cluster. Returns the hosts as a list."""
    if cluster is not None and not (isinstance(cluster, str) and cluster.strip()):
        raise refuse("cluster", cluster, "None (this machine), 'local' or a Ray address HOST:PORT")
    if hosts is None:
        return None
    if cluster is None:
        raise refuse("hosts", hosts, "None without a cluster (the hosts are the cluster's nodes)")
    return str_items("hosts", hosts, "a comma string or a list of host names (their densebench-host labels)")


def plan_of(state: RunState) -> Plan:
    """The plan a run was made with: its cases and configuration (users' model files imported again)."""
    check_environment()
    config = state.meta.get("config") or {}
    try:
        load_sources(config.get("models_from") or [], config.get("timeout_s"))  # in a child (bench.launch.usercode)
    except PlanError as e:
        raise PlanError(f"--resume: the run's {e}") from None
    return Plan(config=config, cases=state.cases(), missing=set(config.get("missing_devices") or []),
                warnings=oversubscription_warnings(config.get("threads") or [], config.get("devices") or []))


def measure(state: RunState, plan: Plan, *, progress: Progress | None = None,
            log: Callable[[str], None] | None = None) -> RunState:
    """Run the plan's cases that have no row yet; marks the run complete, or interrupted (and re-raises). The
    session's wall time (worker start and calibration included) is added to meta["wall_s"] either way, so that
    the summary of a resumed run reports the time of all its sessions."""
    from bench.groups.pairs import DEFAULT_TIE
    from bench.runner import Runner
    from models.user import MODELS_FROM_ENV

    sources = plan.config.get("models_from") or []
    runner = Runner(state, plan.cases, allow_missing=plan.missing, progress=progress, log=log,
                    calibrate=bool(plan.config.get("calibrate", True)),
                    repeats=int(plan.config.get("repeats") or 1),
                    child_env={MODELS_FROM_ENV: os.pathsep.join(sources)} if sources else None,
                    profile=bool(plan.config.get("profile")),
                    design=str(plan.config.get("design") or "isolated"),
                    budget_s=float(plan.config.get("budget_s") or DEFAULT_BUDGET_S),
                    tie=float(plan.config.get("tie") or DEFAULT_TIE),
                    wait_quiet_s=float(plan.config.get("wait_quiet_s") or 0.0),
                    process_time_s=float(plan.config.get("process_time_s") or PROCESS_TIME_S))
    t0 = time.perf_counter()
    try:
        runner.run()
        if plan.config.get("metric") == "instructions":
            add_instruction_columns(state, plan.cases, log)
    except KeyboardInterrupt:
        state.mark("interrupted", wall_s=time.perf_counter() - t0)
        state.save()
        raise RunInterrupted(state) from None
    except OSError as e:  # the machine, not a case: /tmp full, no more processes, ...
        stop_run(state, e, time.perf_counter() - t0)
    state.mark("complete", wall_s=time.perf_counter() - t0)
    state.save()
    return state


def report_path(run_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None) -> Path:
    """Where a run's own report goes: REPORT_DIR/<run-id>.html when given, else reports/ beside the folder of run
    folders as the user named it (OUT = the run folder's parent): OUT's own parent (the working folder for a
    one-part OUT such as `results`), or OUT/reports when OUT names no parent of its own to sit in (`.`, `..`, a
    folder at the file-system root). The path is never resolved, so the report never lands in a shared folder
    above what the user named (`--out /tmp` writes /tmp/reports, not /reports)."""
    run_dir = Path(run_dir)
    name = f"{run_dir.name}.html"
    if report_dir is not None:
        return Path(report_dir) / name
    out = run_dir.parent
    parent = out.parent
    if out.name in ("", ".", "..") or (out.is_absolute() and parent == Path(out.anchor)):
        return out / "reports" / name
    return parent / "reports" / name


def write_run_report(run_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None) -> Path:
    """The report of one run at report_path(run_dir, report_dir); returns its path."""
    return report([run_dir], report_path(run_dir, report_dir))


def load_run(path: str | os.PathLike) -> Run:
    """Load a run folder, or a results.parquet/results.csv file inside one, with every file checked
    (bench.results.store.load_run). ArgumentError for a path of the wrong type, RunFormatError (one line) for a
    folder that cannot be read."""
    return _load_run(path_arg("path", path))


def _runs_arg(what: str, runs: Any) -> list[Path]:
    """One run (a Run, a folder, a results file) or an iterable of them -> their paths; a str is one run."""
    accepted = "a run (Run, run folder or results file path) or a non-empty list of them"
    one = isinstance(runs, (Run, str, os.PathLike))
    if not one and (isinstance(runs, (bytes, bytearray, dict)) or not isinstance(runs, Iterable)):
        raise refuse(what, runs, accepted)
    items = [runs] if one else list(runs)
    if not items:
        raise refuse(what, runs, accepted)
    return [Path(r.path) if isinstance(r, Run) else Path(path_arg(what, r)) for r in items]


def report(runs: Iterable[str | os.PathLike | Run] | str | os.PathLike | Run, path: str | os.PathLike) -> Path:
    """One self-contained HTML report (+ Markdown and figures beside it) of one or more runs; returns its path.
    A run named more than once is reported once."""
    return write_report(_runs_arg("runs", runs), Path(path_arg("path", path)))


def compare(baseline: str | os.PathLike | Run, current: str | os.PathLike | Run, *, threshold: float = 0.05,
            alpha: float = 0.01, normalize: bool = False, allow_noisy: bool = False) -> "Any":
    """One row per case: ratio of medians (current / baseline), its CI, p-value and verdict (DataFrame; see
    bench.analysis.compare for the rule). Cases measured on a busy machine are `noisy`, not judged, unless
    `allow_noisy`."""
    from bench.analysis.compare import compare_runs

    for what, value in (("baseline", baseline), ("current", current)):
        if not isinstance(value, Run):
            path_arg(what, value)
    number_arg("threshold", threshold, "a finite number >= 0 (0.05: 5%)", lambda v: 0 <= v < float("inf"))
    number_arg("alpha", alpha, "a number between 0 and 1 (0.01)", lambda v: 0 < v < 1)
    bool_arg("normalize", normalize)
    bool_arg("allow_noisy", allow_noisy)
    a = baseline if isinstance(baseline, Run) else load_run(baseline)
    b = current if isinstance(current, Run) else load_run(current)
    return compare_runs(a, b, threshold=threshold, alpha=alpha, normalize=normalize, allow_noisy=allow_noisy)


__all__ = ["ArgumentError", "Run", "RunInterrupted", "compare", "load_run", "measure", "profile", "report", "resume",
           "run"]
