"""`run_bench.py report RUN [RUN ...]`: one self-contained HTML report (+ Markdown, figures) of one or more runs.

The command's arguments and exit status; the report itself is bench.analysis.report (write_report)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "report"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bench.analysis import report  # the package's entry point only (pandas); writing loads the rest

    p = sub.add_parser(NAME, help="HTML report of one or more runs",
                       description=(report.__doc__ or "").split("\n\n")[0])
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    return p


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.analysis import report

    parser.add_argument("runs", nargs="+", metavar="RUN", type=Path,
                        help="run folders (results/<run-id>) or their results.parquet/.csv; several runs, e.g. "
                             "from different hosts, are merged into one comparison")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default reports/<run-id>.html, or reports/merged-<ids>.html); "
                             "the Markdown summary <stem>.md and figures <stem>_figures/ go beside it")
    budgets = ",".join(f"{b:g}" for b in report.DEFAULT_BUDGETS)
    parser.add_argument("--budgets", default=budgets, metavar="MS[,MS...]",
                        help="latency budgets in ms for the budget view: which models and settings fit each "
                             "(default %(default)s)")


def cmd_report(args: argparse.Namespace) -> int:
    """`run_bench.py report RUN [RUN ...] [--out X.html]`: exit 0, or 2 with one line on bad input."""
    from bench.analysis import report
    from bench.results.store import RunFormatError

    runs = report.unique_runs(args.runs)
    out = args.out if getattr(args, "out", None) else report.default_out(runs)
    try:
        budgets = report.parse_budgets(getattr(args, "budgets", None) or report.DEFAULT_BUDGETS)
    except ValueError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    try:
        path = report.write_report(runs, out, budgets)
    except RunFormatError as e:
        print(f"report: error: {str(e).splitlines()[0] if str(e) else 'bad run'}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"report: error: cannot write {e.filename or out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"report: {path}  (summary {path.with_suffix('.md')}, figures {path.parent / (path.stem + '_figures')})")
    return 0
