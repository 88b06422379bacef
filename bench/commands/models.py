"""`run_bench.py models`: the zoo (registry metadata, params, MACs at a resolution, published numbers)."""
from __future__ import annotations

import argparse
import sys

from bench.cases import CaseError
from bench.commands.common import add_models_from
from bench.errors import UsageError
from bench.plan import load_sources
from bench.plan.parse import parse_resolution
from bench.text import text_table

NAME = "models"


DESCRIPTION = """\
List the model zoo, one row per model: registry metadata (family, mixer, input size, tokens), params and MACs
counted here (on the meta device: nothing is built or run), and the published params and MACs beside them with
the deviation in percent, on the configuration the paper counted. Users' models (--models-from, or the
DENSEBENCH_MODELS_FROM variable) are listed like built-in ones.
"""


def _families_epilog() -> str:
    """The families of models.registry.FAMILIES with their models as registered now (never a typed-in list)."""
    from models.registry import FAMILIES, list_models

    lines = ["families (--family; also accepted by run --models):"]
    for f in FAMILIES:
        names = list_models(f)
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        lines.append(f"  {f:<13} {len(names):>2} model(s)" + (f": {shown}" if names else
                                                               " (users' models: --models-from)"))
    lines += ["", "examples:", "  run_bench.py models --res 1024x2048",
              "  run_bench.py models --family block --format csv",
              "  run_bench.py models --models-from examples/custom_model.py --family user"]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from models.registry import FAMILIES

    p = sub.add_parser(NAME, help="list the model zoo (params, MACs, published numbers)", description=DESCRIPTION,
                       epilog=_families_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default): aligned text for the terminal, ours beside published; csv or json: every "
                        "column of the zoo frame, for scripts")
    p.add_argument("--res", metavar="N|HxW",
                   help="resolution of the MACs and tokens columns, N for NxN or HxW (e.g. 1024x2048); refused when "
                        "a model cannot take it (default: each model's own input size)")
    p.add_argument("--family", metavar="FAMILY",
                   help=f"only the models of this family, one of {', '.join(FAMILIES)} (default: all)")
    add_models_from(p, "also list users' models from a .py file or an importable package.module (repeatable; "
                       "DENSEBENCH_MODELS_FROM does the same, paths separated by os.pathsep)")
    p.set_defaults(func=main)
    return p


def main(a: argparse.Namespace) -> int:
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
    from bench.launch.usercode import prefetch
    from models.registry import get_model_info

    # users' models are counted in one child process (bench.launch.usercode), all at once
    prefetch([(n, h or get_model_info(n).input_size[0], w or get_model_info(n).input_size[1], 1) for n in names])
    df = zoo_frame(height=h, width=w, names=names)
    if a.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif a.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=1) + "\n")
    else:
        print(format_zoo_table(df))
    return 0


def format_zoo_table(df) -> str:
    """The zoo frame (models.zoo.zoo_frame's pandas DataFrame) as a compact terminal table: ours beside
    published, deviations in percent."""
    import pandas as pd

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
    footer += [f"{r.model}: not counted: {r.reason}" for r in df.itertuples(index=False)
               if isinstance(getattr(r, "reason", ""), str) and r.reason]
    footer += [f"* {n}: the deviation is measured on that configuration" for n in notes]
    return "\n".join([text_table(head, rows, right=range(3, 11)), *footer])
