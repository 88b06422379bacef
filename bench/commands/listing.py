"""`run --list`: the matrix the flags plan (or a resumed run's own), each case with a rough estimate of its
seconds or the interleaved group it belongs to, the total, and the budget's split over the groups. The estimates
are the runner's own at an assumed 10 GMAC/s (no calibration: nothing is measured or written)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from bench.groups.budget import call_s, describe, form_groups, plan_groups
from bench.plan import design_options, make_plan


def rough_estimates(cases: Sequence, repeats: int = 1) -> list[float]:
    """Seconds per case (all its `repeats` processes) without calibration, for --list: the runner's own estimate
    (bench.runner.estimate_case_s) at its default 10 GMAC/s, from each case's MACs (counted on the meta device)."""
    from bench.runner import estimate_case_s

    macs = _macs(cases)
    return [repeats * estimate_case_s(c, macs[(c.model, c.height, c.width, c.batch)], None, repeats)
            for c in cases]


def rough_groups(cases: Sequence, budget_s: float) -> tuple[list, list]:
    """(the interleaved groups' plans with their share of the budget, the cases left isolated), for --list."""
    groups, alone = form_groups(cases)
    macs = _macs(cases)
    plans = plan_groups(groups, budget_s, lambda c: call_s(macs[(c.model, c.height, c.width, c.batch)], None))
    return plans, [c for c in cases if c in alone]


def _macs(cases: Sequence) -> dict:
    out: dict = {}
    for c in cases:
        key = (c.model, c.height, c.width, c.batch)
        if key not in out:
            try:
                from models.complexity import count_macs

                out[key] = int(count_macs(*key))
            except Exception:  # a model that cannot be counted gets the runner's 1 GMAC guess
                out[key] = None
    return out


def _listed_cases(options: dict, run_dir: Path | None) -> list:
    """--list: the matrix the flags plan, or with --resume the run's own (read without taking its lock)."""
    from bench.results import store, validate

    if run_dir is None:
        return make_plan(**options).cases
    return validate.check_cases(store.load_run(run_dir).meta, run_dir / store.META)


def _listed_repeats(a: argparse.Namespace) -> int:
    """The processes per case --list estimates (a resumed run's own --repeats is not read: 1 unless given)."""
    return max(1, a.repeats or 1)


def _listed_design(a: argparse.Namespace, run_dir: Path | None) -> dict:
    """The design, budget and tie --list states (a resumed run's own)."""
    if run_dir is not None:
        from bench.results import store

        cfg = store.load_run(run_dir).meta.get("config") or {}
        return {"design": cfg.get("design", "isolated"), "budget_s": float(cfg.get("budget_s") or 0.0)}
    return design_options(a.design, a.budget, a.tie, a.wait_quiet, a.quick)


def _print(cases: list, repeats: int, design: dict) -> None:
    """--list: one line per case (its id, a tab, its rough seconds or its group) on stdout; the count, total and
    the budget's split on stderr."""
    from bench.analysis.summary import duration

    groups, alone = rough_groups(cases, design["budget_s"]) if design.get("design") == "interleaved" else ([], cases)
    per = rough_estimates(alone, repeats)
    grouped = {c.case_id: g.group_id for g in groups for c in g.cases}
    for c in cases:
        print(f"{c.case_id}\tgroup {grouped[c.case_id]}" if c.case_id in grouped else
              f"{c.case_id}\t~{per[alone.index(c)]:.1f} s")
    if groups:
        for line in describe(groups, design["budget_s"]):
            print(line, file=sys.stderr)
    total = sum(per) + (design["budget_s"] if groups else 0.0)
    print(f"{len(cases)} cases, about {duration(total)} in all (rough: MACs at an assumed 10 GMAC/s, no "
          "calibration; start, calibration and waits for a quiet machine not included"
          + (f"; {len(grouped)} cases in {len(groups)} interleaved groups, at most their budget" if groups else "")
          + ")", file=sys.stderr)


def print_list(a: argparse.Namespace, options: dict, run_dir: Path | None) -> None:
    """--list for the parsed `run` flags (nothing measured, nothing written): `options` are make_plan's
    (bench.commands.run.plan_options), `run_dir` the run --resume names (None: a new run)."""
    _print(_listed_cases(options, run_dir), _listed_repeats(a), _listed_design(a, run_dir))
