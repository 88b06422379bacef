"""`run_bench.py check`: the relative latency gates of bench/analysis/gates.toml, measured in one run.

The gates module evaluates; measuring the cases the gates need goes through the same plan -> run folder ->
runner lifecycle as `run` (bench.api), as a run of kind "check".
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
    p.set_defaults(func=lambda a: gates.cmd_check(a, measure=measure_gates))
    return p


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
