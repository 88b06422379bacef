"""`run_bench.py report RUN [RUN ...]`: one self-contained HTML report (+ Markdown, figures) of one or more runs."""
from __future__ import annotations

import argparse

NAME = "report"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bench.analysis import report

    p = sub.add_parser(NAME, help="HTML report of one or more runs",
                       description=(report.__doc__ or "").split("\n\n")[0])
    report.add_report_arguments(p)
    p.set_defaults(func=report.cmd_report)
    return p
