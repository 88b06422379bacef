"""`run_bench.py models`: the zoo (registry metadata, params, MACs at a resolution, published numbers)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from bench.cli import UsageError

if TYPE_CHECKING:
    import pandas as pd

NAME = "models"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="list the model zoo (params, MACs, published numbers)",
                       description="List the model zoo: registry metadata, params, MACs at a resolution, published "
                                   "numbers.")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--res", metavar="N|HxW", help="resolution for the MACs column (default: each model's own)")
    p.add_argument("--family", help="only this family")
    p.add_argument("--models-from", action="append", default=[], metavar="SOURCE",
                   help="also list users' models from a .py file or a package.module (repeatable)")
    p.set_defaults(func=main)
    return p


def main(a: argparse.Namespace) -> int:
    from bench.cases import CaseError, parse_resolution
    from bench.plan import load_sources
    from models.registry import FAMILIES, check_resolution, list_models
    from models.zoo import zoo_frame

    load_sources(a.models_from)
    h = w = None
    if a.res:
        try:
            h, w = parse_resolution(a.res)
        except CaseError as e:
            raise UsageError(str(e)) from None
    if a.family is not None and a.family not in FAMILIES:
        raise UsageError(f"--family: {a.family!r} is not accepted; accepted: {', '.join(FAMILIES)}")
    names = list_models(a.family)
    if h is not None:
        bad = [r for r in (check_resolution(n, h, w) for n in names) if r]
        if bad:
            raise UsageError(f"--res: {bad[0]} (accepted: multiples of each model's size_multiple, e.g. 512, "
                             "1024x2048)")
    df = zoo_frame(height=h, width=w, names=names)
    if a.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif a.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=1) + "\n")
    else:
        print(format_zoo_table(df))
    return 0


def format_zoo_table(df: pd.DataFrame) -> str:
    """The zoo frame as a compact terminal table: ours beside published, deviations in percent."""
    import pandas as pd

    from bench.text import text_table

    def num(v, fmt: str) -> str:
        return "" if v is None or pd.isna(v) else format(v, fmt)

    def pct(v, star: bool) -> str:
        return "" if v is None or pd.isna(v) else f"{v:+.1f}%" + ("*" if star else "")

    head = ("model", "family", "mixer", "input", "tokens", "params M", "pub. M", "dev", "MACs G", "pub. G", "dev")
    rows = [(r.model, r.family, r.mixer, f"{r.height}x{r.width}", str(r.tokens), num(r.params_m, ".2f"),
             num(r.published_params_m, "g"), pct(r.params_dev_pct, bool(r.counted_as)), num(r.macs_g, ".2f"),
             num(r.published_macs_g, "g"), pct(r.macs_dev_pct, bool(r.counted_as))) for r in df.itertuples(index=False)]
    notes = sorted({n for n in df.get("published_note", []) if isinstance(n, str) and n})
    footer = ["", "pub. = published (papers); dev = ours vs published, on the configuration the paper counted."]
    footer += [f"* {n}: the deviation is measured on that configuration" for n in notes]
    return "\n".join([text_table(head, rows, right=range(3, 11)), *footer])
