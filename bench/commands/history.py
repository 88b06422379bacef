"""`run_bench.py history`: a store of the same small matrix across commits, its steps confirmed, and a bisect."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import PROG, UsageError
from bench.plan.parse import parse_resolution

NAME = "history"

DESCRIPTION = """\
A history of the same small matrix across commits, and the commit that slowed it.

  history record --store DIR        measure the matrix at the checkout's HEAD (clean tree) and add one Parquet file
                                    STORE/<machine>/<commit>.parquet (append-only: a commit is recorded once)
  history show --store DIR          per case and metric (wall_ms, instructions) the series along the first-parent
                                    line, its upward steps (asv's step detection), each confirmed with --confirm by a
                                    same-process A/B of its two commits; --html writes the page
  history bisect GOOD BAD --model M the first commit after GOOD up to BAD that an A/B against GOOD finds slower

Exit status: 0 nothing slower; 1 a confirmed step (show --confirm) or a slow commit found (bisect); 2 bad input.
"""

EPILOG = """\
CI recipe: on each pull request `run_bench.py ab --a-rev <base>`; on main `run_bench.py history record --store S
--instructions` (a deterministic series: its steps are exact, a wall-time series' few-percent steps drown in noise);
nightly `run_bench.py history show --store S --confirm --html history.html`, then `history bisect` on a confirmed
step whose commits are more than one apart.
"""


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="DIR", help="the history store's folder")
    p.add_argument("--machine", metavar="NAME", help="the machine's name in the store (default: CPU model and count)")
    p.add_argument("--repo", default=".", metavar="DIR", help="the git checkout measured / searched (default: .)")


def _ab_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-time", type=float, default=120.0, metavar="S", help="seconds per A/B (default 120)")
    p.add_argument("--out", default="results", metavar="DIR", help="folder of the A/B result folders")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="record the matrix per commit; find, confirm and bisect slowdowns",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    r = actions.add_parser("record", help="measure the matrix at HEAD into the store")
    _store_arguments(r)
    r.add_argument("--models", default="block:msla,block:relu-linear", metavar="LIST")
    r.add_argument("--res", default="256", metavar="LIST")
    r.add_argument("--threads", default="1", metavar="LIST")
    r.add_argument("--instructions", action="store_true", help="also count instructions per forward (valgrind)")
    r.add_argument("--max-time", type=float, default=2.0, metavar="S", help="timing per case and process")
    r.add_argument("--budget", type=float, default=None, metavar="S", help="seconds per decision group")
    s = actions.add_parser("show", help="the series, their steps, --confirm'ed by A/B; --html page")
    _store_arguments(s)
    _ab_arguments(s)
    s.add_argument("--confirm", action="store_true", help="re-measure each step by an A/B of its two commits")
    s.add_argument("--html", metavar="FILE", help="write the history page")
    b = actions.add_parser("bisect", help="the first commit in (GOOD, BAD] slower than GOOD")
    b.add_argument("good", metavar="GOOD")
    b.add_argument("bad", metavar="BAD")
    b.add_argument("--repo", default=".", metavar="DIR")
    b.add_argument("--model", required=True, metavar="NAME")
    b.add_argument("--res", default="256", metavar="N|HxW")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--backend", default="eager")
    b.add_argument("--precision", default="fp32")
    b.add_argument("--metric", choices=("wall_ms", "instructions"), default="wall_ms")
    b.add_argument("--threshold", type=float, default=0.05, metavar="T", help="the slowdown sought (0.05 = 5%%)")
    _ab_arguments(b)
    p.set_defaults(func=main)
    return p


def _log(a: argparse.Namespace):
    return None if getattr(a, "quiet", False) else (lambda line: print(line, file=sys.stderr, flush=True))


def _record(a: argparse.Namespace) -> int:
    from bench.history.record import record

    path = record(a.store, repo=a.repo, models=a.models, res=a.res, threads=a.threads,
                  instructions=a.instructions, machine=a.machine, max_time=a.max_time, budget=a.budget)
    print(f"recorded: {path}")
    return 0


def _show(a: argparse.Namespace) -> int:
    from bench.history import gitlog, page, steps, store
    from bench.history.confirm import CaseSpec, confirm

    frame = store.load(store.Store(Path(a.store)), a.machine)
    if frame.empty:
        raise UsageError(f"--store: {a.store} holds no recorded commit; accepted: a store written by "
                         f"`{PROG} history record`")
    order = steps.order_commits(frame, gitlog.first_parent_chain(Path(a.repo)))
    found = steps.detect(frame, order)
    if a.confirm and found:
        cases = {r["case_id"]: CaseSpec.from_row(r) for r in frame.drop_duplicates("case_id").to_dict("records")}
        confirm(found, cases, a.repo, out=a.out, max_time=a.max_time, log=_log(a))
    table = steps.steps_frame(found)
    print(f"{len(order)} commits, {frame['case_id'].nunique()} cases; {len(found)} candidate step(s)")
    if not table.empty:
        print(table.drop(columns=["ab_folder"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if a.html:
        print(f"page: {page.write_page(a.html, frame, order, found)}")
    return 1 if (table["confirmed"] == "slower").any() else 0


def _bisect(a: argparse.Namespace) -> int:
    from bench.history.bisect import bisect
    from bench.history.confirm import CaseSpec
    h, w = parse_resolution(a.res)
    res = bisect(a.repo, a.good, a.bad, CaseSpec(a.model, h, w, a.threads, a.backend, a.precision), out=a.out,
                 metric=a.metric, threshold=a.threshold, max_time=a.max_time, log=_log(a))
    for commit, v in res.looks.items():
        print(f"{commit[:10]}  {v.verdict:10s} {v.ratio:.3f}x  {v.folder}")
    if res.first_slow:
        print(f"first slow commit: {res.first_slow}")
        return 1
    print(f"no answer: {res.reason}" + (f" (between {res.last_good[:10]} and {res.first_bad[:10]})"
                                        if res.first_bad else ""))
    return 0


def main(a: argparse.Namespace) -> int:
    return {"record": _record, "show": _show, "bisect": _bisect}[a.action](a)
