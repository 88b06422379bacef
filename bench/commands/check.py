"""`run_bench.py check`: the relative latency gates of bench/analysis/gates.toml, measured in one run.

bench.analysis.gates evaluates; this command owns the rest: its flags, measuring the cases the gates need (the same
plan -> run folder -> runner lifecycle as `run`, bench.api, as a run of kind "check"), the outputs and the exit
status. Its flags are checked with run's own validators (bench.plan) before the gates are read or a run folder
exists, so a bad one costs nothing and is one line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Protocol

from bench.analysis.gates_file import DEFAULT_GATES, GateConfigError, load_gates
from bench.cases import CaseError, expand
from bench.files import atomic_write_text
from bench.plan import Plan, PlanError, check_environment, choice_list, devices_of, int_list, timing_options
from bench.results.lifecycle import create_run, new_run_id

NAME = "check"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bench.analysis import gates  # its docstring is the description; it loads pandas

    p = sub.add_parser(NAME, help="regression gates (e.g. msla at least K times faster than softmax)",
                       description=(gates.__doc__ or "").split("\n\n")[0])
    add_check_arguments(p)
    p.set_defaults(func=main)
    return p


def add_check_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--run", metavar="RUN_DIR", help="evaluate the gates on this existing run (no measuring)")
    parser.add_argument("--gates", metavar="FILE", default=None, help=f"gates file (default {DEFAULT_GATES.name})")
    parser.add_argument("--devices", default="cpu", help="devices to measure on, comma list (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the check matrix (default 1)")
    parser.add_argument("--precision", default="fp32", help="precision of the check matrix (default fp32)")
    parser.add_argument("--backend", default="eager", help="backend of the check matrix (default eager)")
    parser.add_argument("--min-time", type=float, default=0.5, help="min timed seconds per case (default 0.5)")
    parser.add_argument("--max-time", type=float, default=3.0, help="max timed seconds per case (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-case timeout in seconds (default 300)")
    parser.add_argument("--out", default="results", help="where the check run folder goes (default results)")
    parser.add_argument("--allow-noisy", action="store_true",
                        help="judge gates whose rows were measured on a busy machine (flagged noisy) instead of "
                             "skipping them and exiting 3; the output says so")
    parser.add_argument("--markdown", metavar="FILE", help="also write the gate results as Markdown")
    parser.add_argument("--json", metavar="FILE", help="also write the gate results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every case of the check matrix")
    return parser


def main(args: argparse.Namespace) -> int:
    """Validate the flags (PlanError: one line, exit 2), then evaluate the gates, measuring unless --run."""
    validate_flags(args)
    return cmd_check(args, measure=measure_gates)


class Measure(Protocol):
    """Measures the cases `gates.matrix_for(gates, ...)` names into a new run folder under out_dir and returns that
    folder (measure_gates; a test passes its own)."""

    def __call__(self, gates: list[dict], devices: list[str], out_dir: Path, *, threads: int, precision: str,
                 backend: str, min_time_s: float, max_time_s: float, timeout_s: float,
                 log: Callable[[str], None] | None) -> Path: ...


def cmd_check(args: argparse.Namespace, measure: Measure | None = None) -> int:
    """Exit 0: all evaluated gates passed; 1: a gate failed; 2: bad input or no gate evaluated; 3: none failed but
    a gate was not judged because its rows were measured on a busy machine (--allow-noisy judges it).

    `measure` makes the run to evaluate when there is no --run; without it only `--run` works."""
    from bench.analysis import gates  # pandas, numpy, scipy: not loaded to parse the command line
    from bench.results.store import RunFormatError, load_run

    err = sys.stderr
    try:
        specs = load_gates(args.gates)
        results = gates.evaluate_gates(load_run(_measured_run(args, specs, measure)), specs,
                                       allow_noisy=getattr(args, "allow_noisy", False))
    except (GateConfigError, RunFormatError, ValueError, OSError) as e:
        print(f"check: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=err)
        return 2
    print(gates.format_results(results))
    try:
        if args.markdown:
            atomic_write_text(args.markdown, gates.to_markdown(results))
        if args.json:
            atomic_write_text(args.json, gates.to_json(results))
    except OSError as e:
        print(f"check: error: cannot write output: {str(e).splitlines()[0]}", file=err)
        return 2
    if any(not r.passed and not r.skipped for r in results):
        return 1
    if any(r.skipped and r.noisy for r in results):
        return 3
    if all(r.skipped for r in results):
        print("check: error: no gate could be evaluated on this run (see SKIP lines)", file=err)
        return 2
    return 0


def _measured_run(args: argparse.Namespace, gates: list[dict], measure: Measure | None) -> Path:
    """The run to evaluate: --run, else a new run of the cases the gates need, measured by `measure`."""
    if args.run:
        return Path(args.run)
    if measure is None:
        raise GateConfigError("no run to evaluate: pass --run RUN_DIR (measuring is the check command's job)")
    devices = [d.strip() for d in str(args.devices).split(",") if d.strip()]
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if getattr(args, "verbose", False) else None
    run_dir = measure(gates, devices, Path(args.out), threads=args.threads, precision=args.precision,
                      backend=args.backend, min_time_s=args.min_time, max_time_s=args.max_time,
                      timeout_s=args.timeout, log=log)
    print(f"check run: {run_dir}")
    return run_dir


def _one(values: list, flag: str):
    """check measures one setting: a comma list is refused rather than silently cut to its first value."""
    if len(values) != 1:
        raise PlanError(f"{flag}: {','.join(map(str, values))} is not accepted; accepted: one value (check measures "
                        "one setting)")
    return values[0]


def validate_flags(args: argparse.Namespace) -> None:
    """check's flags through run's validators, values normalised in place. --devices must be present only when
    measuring (with --run nothing runs here, but a name no device has is still refused)."""
    from bench import backends as registry  # the backends' registry loads torch

    try:
        args.threads = _one(int_list(args.threads, "--threads"), "--threads")
        args.precision = _one(choice_list(args.precision, "--precision", registry.PRECISIONS), "--precision")
        args.backend = _one(choice_list(args.backend, "--backend", registry.BACKENDS), "--backend")
        timing = timing_options(False, args.min_time, args.max_time, args.timeout, None)
        args.min_time, args.max_time, args.timeout = timing["min_time_s"], timing["max_time_s"], timing["timeout_s"]
        pairs, _ = devices_of(args.devices, allow_missing=bool(args.run))
        args.devices = ",".join(d for d, _ in pairs)
        if not args.run:
            check_environment()
        for flag in ("--markdown", "--json"):
            _output_file(flag, getattr(args, flag[2:]))
    except CaseError as e:
        raise PlanError(str(e)) from None


def _output_file(flag: str, value: str | None) -> None:
    """An output that could not be written is refused now, not after minutes of measuring."""
    if value is not None and (not str(value).strip() or Path(value).is_dir()):
        raise PlanError(f"{flag}: {value!r} is not accepted; accepted: a file path (not a folder)")


def _check_resolutions(triples: list[tuple[str, int, int]]) -> None:
    """A gate's model that cannot take its resolution is bad input, refused before the run folder exists."""
    from models.registry import check_resolution  # loads torch

    for model, h, w in triples:
        why = check_resolution(model, h, w)
        if why:
            raise PlanError(f"gates: {why}")


def measure_gates(gates: list[dict], devices: list[str], out_dir: Path, *, threads: int = 1,
                  precision: str = "fp32", backend: str = "eager", min_time_s: float = 0.5, max_time_s: float = 3.0,
                  timeout_s: float = 300.0, log: Callable[[str], None] | None = None) -> Path:
    """Measure the cases the gates need into a new run folder OUT/check-<date>-<time>-<random>; returns it."""
    from bench import api  # the runner and everything under it
    from bench.analysis.gates import matrix_for

    check_environment()
    dev_pairs, _ = devices_of(devices, allow_missing=False)
    triples = matrix_for(gates, sorted({d.split(":")[0] for d, _ in dev_pairs}))
    if not triples:
        raise GateConfigError(f"no gate applies to device(s) {', '.join(devices)}")
    _check_resolutions(triples)
    cases = []
    # resolution-major, models of one resolution back to back (the engine's A/B-close ordering)
    for h, w in dict.fromkeys((h, w) for _, h, w in triples):
        models = [m for m, hh, ww in triples if (hh, ww) == (h, w)]
        cases += expand(models, [(h, w)], dev_pairs, [backend], {"cpu": [precision], "cuda": [precision]}, [1],
                        [threads], min_time_s=min_time_s, max_time_s=max_time_s, timeout_s=timeout_s)
    config = {"devices": [d for d, _ in dev_pairs], "threads": threads, "precision": precision, "backend": backend,
              "min_time_s": min_time_s, "max_time_s": max_time_s, "timeout_s": timeout_s, "calibrate": False,
              "repeats": 1}
    out_dir = Path(out_dir)
    state = create_run(out_dir, cases, config, run_id=new_run_id(out_dir, prefix="check-"), kind="check")
    api.measure(state, Plan(config=config, cases=cases), log=log)
    return state.run_dir
