"""`run_bench.py check`: the relative latency gates of bench/analysis/gates.toml, measured in one run.

The gates module evaluates; measuring the cases the gates need goes through the same plan -> run folder ->
runner lifecycle as `run` (bench.api), as a run of kind "check". Its flags are checked with run's own validators
(bench.plan) before the gates are read or a run folder exists, so a bad one costs nothing and is one line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

NAME = "check"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bench.analysis import gates

    p = sub.add_parser(NAME, help="regression gates (e.g. msla at least K times faster than softmax)",
                       description=(gates.__doc__ or "").split("\n\n")[0])
    gates.add_check_arguments(p)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Validate the flags (PlanError: one line, exit 2), then evaluate the gates, measuring unless --run."""
    from bench.analysis import gates

    validate_flags(args)
    return gates.cmd_check(args, measure=measure_gates)


def _one(values: list, flag: str):
    """check measures one setting: a comma list is refused rather than silently cut to its first value."""
    from bench.plan import PlanError

    if len(values) != 1:
        raise PlanError(f"{flag}: {','.join(map(str, values))} is not accepted; accepted: one value (check measures "
                        "one setting)")
    return values[0]


def validate_flags(args: argparse.Namespace) -> None:
    """check's flags through run's validators, values normalised in place. --devices must be present only when
    measuring (with --run nothing runs here, but a name no device has is still refused)."""
    from bench import backends as registry
    from bench.cases import CaseError
    from bench.plan import PlanError, choice_list, int_list, timing_options, check_environment, devices_of

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
    from bench.plan import PlanError

    if value is not None and (not str(value).strip() or Path(value).is_dir()):
        raise PlanError(f"{flag}: {value!r} is not accepted; accepted: a file path (not a folder)")


def _check_resolutions(triples: list[tuple[str, int, int]]) -> None:
    """A gate's model that cannot take its resolution is bad input, refused before the run folder exists."""
    from bench.plan import PlanError
    from models.registry import check_resolution

    for model, h, w in triples:
        why = check_resolution(model, h, w)
        if why:
            raise PlanError(f"gates: {why}")


def measure_gates(gates: list[dict], devices: list[str], out_dir: Path, *, threads: int = 1,
                  precision: str = "fp32", backend: str = "eager", min_time_s: float = 0.5, max_time_s: float = 3.0,
                  timeout_s: float = 300.0, log: Callable[[str], None] | None = None) -> Path:
    """Measure the cases the gates need into a new run folder OUT/check-<date>-<time>-<random>; returns it."""
    from bench import api
    from bench.analysis.gates import GateConfigError, matrix_for
    from bench.cases import expand
    from bench.plan import Plan, check_environment, devices_of
    from bench.results.lifecycle import create_run, new_run_id

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
