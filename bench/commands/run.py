"""`run_bench.py [run]`: measure the case matrix (the default command). A thin layer over bench.api, and over
bench.fleet with --cluster (its options are declared in bench.commands.common, shared with `profile`)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

from bench import bounded_read
from bench.commands.common import add_run_arguments
from bench.commands.compare import resolve_run
from bench.commands.listing import print_list
from bench.errors import PROG, UsageError
from bench.fleet.cluster import disconnect
from bench.fleet.dispatch import measure_on_cluster
from bench.fleet.placement import plan_on_cluster
from bench.plan import make_plan
from bench.results.lifecycle import RUN_ID
from bench.schema import STATUSES
from bench.terminal import Progress

NAME = "run"
HEARTBEAT_S = 30.0  # without a terminal, a line at least this often

RUN_DESCRIPTION = """\
Measure token mixers for high-resolution segmentation (EfficientViT multi-scale linear attention vs softmax
attention, ReLU linear attention and large-kernel convolutions) across resolutions, devices and backends.

Cases are model x resolution x device x backend x precision x batch x threads. Each case runs in its own child
process with a timeout: a crash, an out-of-memory or a hang becomes a row with a status (ok, oom, timeout, error,
unsupported, skipped) and a reason, and the run goes on. Timing (the default interleaved design): the mixers
of one decision (one model size, resolution and setting) are measured in the same short processes in rotating
balanced order, until every pair against the fastest is faster or tied by a paired interval over processes, or
--budget is spent; a process measured while other processes used the CPU is measured again after waiting for a
quiet machine (--wait-quiet). Lone cases, and --design isolated: first call apart, warm-up, then per-call samples
until the 95% CI of the median is within +-1% or --max-time is spent.

Results: OUT/<run-id>/results.parquet, results.csv (one row per case), samples.parquet (every raw sample),
pairs.parquet/.csv (the paired decisions) and meta.json (environment, configuration, calibration, groups),
rewritten atomically after every process; an HTML report in
reports/<run-id>.html next to OUT (see --report-dir). Interrupt at any time and finish with --resume RUN_ID.

Exit status: 0 done; 1 some case ended in 'error' (or --baseline found a regression); 2 bad input; 3 a decision
rests on cases measured on a busy machine even after waiting for a quiet one (the last lines say what to do;
--wait-quiet 0 turns the waits and this status off, the rows stay flagged), or --baseline could not judge them
(see --allow-noisy); 130 interrupted.
"""

RUN_EPILOG = """\
other commands:
  models    list the model zoo (params, MACs, published numbers): run_bench.py models [--res 1024x2048] [--format csv]
  report    HTML report of one or more runs:                       run_bench.py report results/<run-id> ...
  compare   compare two runs (ratio, CI, Mann-Whitney):            run_bench.py compare BASELINE CURRENT
  check     regression gates of bench/analysis/gates.toml:         run_bench.py check ...
  (each has its own --help)

examples:
  run_bench.py --quick                                   seconds-long smoke run on the CPU
  run_bench.py --devices cpu --res 512,1024,2048         the default CPU matrix (about 9 minutes on 2 cores)
  run_bench.py --devices cuda --res 1024x2048 --backends eager,compile --precision fp16,fp32
  run_bench.py --models evit-b1:msla --level block --threads 1,2 --res 512
  run_bench.py --resume 20250101-120000-ab12

test-only: DENSEBENCH_FAULT=crash|hang|oom|error|sigkill[@MODEL_PATTERN] makes every child fail that way;
DENSEBENCH_ISOLATION=spawn runs a fresh interpreter per case instead of forking from a preloaded server.
DENSEBENCH_WAIT_QUIET=S is the default of --wait-quiet (e.g. 0 where the run shares the machine on purpose).
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, prog=PROG, usage=f"{PROG} [run] [options]", description=RUN_DESCRIPTION,
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="measure the case matrix (the default command)")
    add_run_arguments(p)
    p.set_defaults(func=main)
    return p


def plan_options(a: argparse.Namespace) -> dict:
    """The parsed flags as bench.plan.make_plan's keyword arguments (an empty value stays empty, and is refused)."""
    return dict(models=a.models, level=a.level, res=a.res, devices=a.devices, batch=a.batch, precision=a.precision,
                threads=a.threads, backends=a.backends, channels_last=a.channels_last, fold=a.fold,
                min_time=a.min_time, max_time=a.max_time, timeout=a.timeout, repeats=a.repeats, seed=a.seed,
                quick=a.quick, calibrate=not a.no_calibrate, allow_missing=a.allow_missing,
                models_from=a.models_from, metric=a.metric, profile=a.profile, design=a.design, budget=a.budget,
                tie=a.tie, wait_quiet=a.wait_quiet)


def main(a: argparse.Namespace) -> int:
    from bench import api

    out = Path(a.out)
    baseline = _baseline(a.baseline, out) if a.baseline is not None else None
    if a.resume is not None and not a.resume.strip():
        raise UsageError(f"--resume: empty; accepted: a run id from {out}/ or a run folder path")
    if a.retry_failed is not None and not a.resume:
        raise UsageError("--retry-failed: only with --resume RUN_ID (a new run has no failed cases yet)")
    retry = _retry_statuses(a.retry_failed)
    if a.hosts is not None and not a.cluster:
        raise UsageError("--hosts: only with --cluster ADDRESS (the hosts are the cluster's nodes)")
    if not a.resume:
        _check_run_id(a.run_id, out)
    report_dir = _report_dir(a)
    if a.list:
        print_list(a, plan_options(a), resume_dir(a.resume, out) if a.resume else None)
        return 0
    if a.resume:
        check_resume(a, resume_dir(a.resume, out))
        state = api.reopen(resume_dir(a.resume, out), a.argv, retry_failed=retry)
        plan = api.plan_of(state)
        _warn(plan)
        _note_ignored(a)
        _note_redo(state)
    else:
        plan = plan_for_args(a, plan_options(a)) if a.cluster else make_plan(**plan_options(a))
        _warn(plan)
        _writable_dir(out)
        state = api.start(plan, out, run_id=a.run_id, argv=[sys.executable, PROG, *a.argv])
    try:
        rc = _measure(a, state, plan)
    finally:
        state.close()
        if a.cluster:
            disconnect()
    return rc or _finish(a, state, baseline, report_dir)


def _hosts(a: argparse.Namespace) -> list[str] | None:
    if not getattr(a, "hosts", None):
        return None
    if not getattr(a, "cluster", None):
        raise UsageError("--hosts: only with --cluster ADDRESS")
    return [h.strip() for h in a.hosts.split(",") if h.strip()] or None


def plan_for_args(a: argparse.Namespace, options: dict[str, Any]):
    """The cluster's plan for `run`'s flags (plan_options): joins the cluster, probes its nodes and expands the
    matrix over their device classes. FleetError / PlanError: one line, exit 2."""
    return plan_on_cluster(a.cluster, _hosts(a), **options)


def check_resume(a: argparse.Namespace, run_dir: str | os.PathLike) -> None:
    """Before --resume takes the run: a cluster run needs --cluster (its cases are other hosts'), a run of this
    machine alone refuses it. Reads meta.json without the lock (nothing is written)."""
    try:
        meta = bounded_read.load_json(Path(run_dir) / "meta.json", what="a meta.json", error=ValueError)
    except (OSError, ValueError):
        return  # the resume itself says what is wrong with the folder (the same bounds, as RunFormatError)
    fleet, run_id = meta.get("fleet") if isinstance(meta, dict) else None, Path(run_dir).name
    if fleet and not getattr(a, "cluster", None):
        hosts = ", ".join(sorted(fleet.get("nodes") or {}))
        raise UsageError(f"--resume {run_id}: a cluster run (measured on {hosts}); accepted: "
                         f"--resume {run_id} --cluster ADDRESS")
    if not fleet and getattr(a, "cluster", None):
        raise UsageError(f"--resume {run_id} --cluster: the run was measured on this machine alone; "
                         "accepted: --resume without --cluster")


def measurer(a: argparse.Namespace) -> Callable[..., Any]:
    """bench.api.measure, or with --cluster the same call on the cluster: f(state, plan, progress=, log=)."""
    from bench import api

    hosts = _hosts(a)
    if not getattr(a, "cluster", None):
        return api.measure
    return partial(measure_on_cluster, address=a.cluster, hosts=hosts)


def _report_dir(a: argparse.Namespace) -> Path | None:
    """--report-dir as given (checked writable now, not after the run), or None for the default."""
    if a.report_dir is None:
        return None
    if not a.report_dir.strip():
        raise UsageError("--report-dir: empty; accepted: a writable folder")
    path = Path(a.report_dir)
    _writable_dir(path, "--report-dir")
    return path


def _starting(state, plan) -> str | None:
    """What the ~10 s before the first case do (start the worker, calibrate), or None when no case is left."""
    from bench.backends import unsupported_reason
    from bench.runner import calibration_key

    done = {r.get("case_id") for r in state.rows}
    todo = [c for c in plan.cases if c.case_id not in done and c.device not in plan.missing
            and not unsupported_reason(c.backend, c.device_type, c.precision, channels_last=c.channels_last,
                                       fold=c.folded)]
    if not todo:
        return None
    have = state.meta.get("calibration") or {}
    keys = list(dict.fromkeys(calibration_key(c) for c in todo if calibration_key(c) not in have))
    if not plan.config.get("calibrate", True) or not keys:
        return "starting the worker ..."
    return f"starting the worker and calibrating {', '.join(keys)} ..."


def _measure(a: argparse.Namespace, state, plan) -> int:
    """Measure with a progress bar; 130 when interrupted (Ctrl-C or SIGTERM), with the run saved for --resume."""
    from bench import api

    tty = sys.stderr.isatty()
    progress = Progress(enabled=not a.quiet and tty, heartbeat_s=None if a.quiet or tty else HEARTBEAT_S)

    def say(line: str) -> None:  # -v, or no terminal: one line per finished case or group look
        progress.heartbeat.said()
        print(line, file=sys.stderr, flush=True)

    log = say if a.verbose or not (tty or a.quiet) else None
    line = None if a.quiet else _starting(state, plan)
    if line:
        print(line, file=sys.stderr, flush=True)
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        measurer(a)(state, plan, progress=progress, log=log)
    except api.RunInterrupted:
        progress.close()
        print(f"interrupted: {len(state.rows)} of {len(plan.cases)} cases stored in {state.run_dir}; finish with "
              f"--resume {state.run_id}" + (f" --out {a.out}" if a.out != "results" else ""), file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    progress.close()
    return 0


def _finish(a: argparse.Namespace, state, baseline: str | None, report_dir: Path | None = None) -> int:
    """Summary, report and the optional compare against a baseline; 1 when a case errored or a case regressed."""
    from bench import api
    from bench.results import store

    res = store.results_frame(state.rows)
    if not a.quiet:
        from bench.analysis.summary import format_summary

        pairs = store.pairs_frame(state.pairs) if state.pairs else None
        print(format_summary(res, state.meta.get("health"), wall_s=state.meta.get("wall_s"), pairs=pairs))
    print(f"results: {state.run_dir}")
    if not a.no_report:
        try:
            print(f"report: {api.write_run_report(state.run_dir, report_dir)}")
        except Exception as e:  # the measurements are stored; a report failure must not lose them
            print(f"report: failed ({type(e).__name__}: {e})".splitlines()[0], file=sys.stderr)
    rc = 1 if (res["status"] == "error").any() else 0
    from bench.analysis.summary import next_steps, noisy_decisions

    shaky = noisy_decisions(res)
    waits = float((state.meta.get("config") or {}).get("wait_quiet_s") or 0.0) > 0  # 0: the user chose not to
    if shaky and waits:
        for line in next_steps(shaky, state.meta.get("health") or {}, PROG):
            print(line, file=sys.stderr)
        rc = rc or 3
    if baseline:
        from bench.analysis.compare import run_compare

        cmp = run_compare(baseline, state.run_dir, allow_noisy=a.allow_noisy)
        rc = next((c for c in (1, 2, 3) if c in (rc, cmp)), 0)  # a regression or an error wins over "not judged"
    return rc


def _warn(plan) -> None:
    for w in plan.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)


def _retry_statuses(value: str | None) -> list[str]:
    if value is None:
        return []
    given = [s.strip() for s in value.split(",")]
    bad = [s for s in given if s not in STATUSES[1:]]
    if bad or not given:
        raise UsageError(f"--retry-failed: {', '.join(map(repr, bad or [value]))} is not a status; accepted: a comma "
                         f"list of {', '.join(STATUSES[1:])}")
    return given


def _note_redo(state) -> None:
    """Say which cases --resume measures again, and why."""
    retried = state.meta["resumed"][-1].get("retried") or []
    if state.redo:
        print(f"{PROG}: note: {len(state.redo)} stored case(s) without all their samples (a write was cut short) "
              "are measured again", file=sys.stderr)
    if retried:
        print(f"{PROG}: note: {len(retried)} failed case(s) are measured again (--retry-failed)", file=sys.stderr)


def resume_dir(resume: str, out: Path) -> Path:
    run_dir = Path(resume) if (os.sep in resume or Path(resume).is_dir()) and not (out / resume).is_dir() \
        else out / resume
    if not (run_dir / "meta.json").is_file():
        raise UsageError(f"--resume: no run {resume!r} in {out}/ (expected {run_dir}/meta.json); accepted: a "
                         f"run id from {out}/ or a run folder path")
    _writable_dir(run_dir)
    return run_dir


def _note_ignored(a: argparse.Namespace) -> None:
    defaults = (("--models", a.models, None), ("--level", a.level, "both"), ("--res", a.res, "512,1024,2048"),
                ("--devices", a.devices, "cpu"), ("--batch", a.batch, "1"), ("--precision", a.precision, None),
                ("--threads", a.threads, None), ("--backends", a.backends, "eager"), ("--quick", a.quick, False),
                ("--repeats", a.repeats, None), ("--models-from", a.models_from, []))
    given = [o for o, v, default in defaults if v != default]
    if given:
        print(f"{PROG}: note: {', '.join(given)} ignored with --resume (the run's own matrix is finished)",
              file=sys.stderr)


def _baseline(baseline: str, out: Path) -> str:
    return resolve_run(baseline, out, "--baseline")


def _check_run_id(run_id: str | None, out: Path) -> None:
    if run_id is None:
        return
    if not RUN_ID.fullmatch(run_id):
        raise UsageError(f"--run-id: {run_id!r} is not accepted; accepted: letters, digits, '.', '_', '-' "
                         "(starting with a letter or digit, at most 100)")
    if (out / run_id).exists():
        raise UsageError(f"--run-id: {out / run_id} already exists; accepted: a new name (or --resume {run_id} to "
                         "finish that run)")


def _writable_dir(path: Path, flag: str = "--out") -> None:
    try:
        probe = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UsageError(f"{flag}: {path} cannot be resolved ({e}); accepted: a writable folder") from None
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag}: {probe} is not a folder; accepted: a writable folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: {path} is not writable ({probe} denies writing); accepted: a writable folder")


def _sigterm(signum, frame):
    raise KeyboardInterrupt
