"""`run --list`: the matrix the flags plan (or a resumed run's own), each case with a rough estimate of its
seconds or the interleaved group it belongs to, the total, and the budget's split over the groups."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _listed_cases(a: argparse.Namespace, out: Path) -> list:
    """--list: the matrix the flags plan, or with --resume the run's own (read without taking its lock)."""
    from bench.commands.run import plan_options, resume_dir
    from bench.plan import make_plan
    from bench.results import store, validate

    if not a.resume:
        return make_plan(**plan_options(a)).cases
    run_dir = resume_dir(a.resume, out)
    return validate.check_cases(store.load_run(run_dir).meta, run_dir / store.META)


def _listed_repeats(a: argparse.Namespace) -> int:
    """The processes per case --list estimates (a resumed run's own --repeats is not read: 1 unless given)."""
    return max(1, a.repeats or 1)


def _listed_design(a: argparse.Namespace, out: Path) -> dict:
    """The design, budget and tie --list states (a resumed run's own)."""
    from bench.commands.run import resume_dir
    from bench.plan import design_options

    if a.resume:
        from bench.results import store

        cfg = store.load_run(resume_dir(a.resume, out)).meta.get("config") or {}
        return {"design": cfg.get("design", "isolated"), "budget_s": float(cfg.get("budget_s") or 0.0)}
    return design_options(a.design, a.budget, a.tie, a.wait_quiet, a.quick)


def _print(cases: list, repeats: int, design: dict) -> None:
    """--list: one line per case (its id, a tab, its rough seconds or its group) on stdout; the count, total and
    the budget's split on stderr."""
    from bench.analysis.summary import duration
    from bench.commands.progress import rough_estimates, rough_groups

    groups, alone = rough_groups(cases, design["budget_s"]) if design.get("design") == "interleaved" else ([], cases)
    per = rough_estimates(alone, repeats)
    grouped = {c.case_id: g.group_id for g in groups for c in g.cases}
    for c in cases:
        print(f"{c.case_id}\tgroup {grouped[c.case_id]}" if c.case_id in grouped else
              f"{c.case_id}\t~{per[alone.index(c)]:.1f} s")
    if groups:
        from bench.groups.budget import describe

        for line in describe(groups, design["budget_s"]):
            print(line, file=sys.stderr)
    total = sum(per) + (design["budget_s"] if groups else 0.0)
    print(f"{len(cases)} cases, about {duration(total)} in all (rough: MACs at an assumed 10 GMAC/s, no "
          "calibration; start, calibration and waits for a quiet machine not included"
          + (f"; {len(grouped)} cases in {len(groups)} interleaved groups, at most their budget" if groups else "")
          + ")", file=sys.stderr)


def print_list(a: argparse.Namespace, out: Path) -> None:
    """--list for the parsed `run` flags (nothing measured, nothing written)."""
    _print(_listed_cases(a, out), _listed_repeats(a), _listed_design(a, out))
