"""`run_bench.py compare BASELINE CURRENT`: per-case ratio of medians, its CI, a test and a verdict."""
from __future__ import annotations

import argparse

NAME = "compare"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bench.analysis import compare

    p = sub.add_parser(NAME, help="compare two runs (ratio, CI, test, verdict); exit 1 on a regression",
                       description=(compare.__doc__ or "").split("\n\n")[0])
    compare.add_compare_arguments(p)
    p.set_defaults(func=compare.cmd_compare)
    return p
