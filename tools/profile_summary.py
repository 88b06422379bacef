"""Where the time goes in a profiled run, as the closing note of issue 13 quotes it: per model x resolution, the
op kinds' time share against their MAC share, and the achieved GMAC/s of depthwise (square and strip) convs
against 1x1 convs and matmuls, all from one run's profile.parquet.

    python -m tools.profile_summary results/<run-id> [--markdown FILE]
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from bench.results.store import load_run
from bench.text import markdown_table

GROUPS = {"depthwise square": lambda k: k.startswith("dw") and "strip" not in k,
          "depthwise strip": lambda k: k.startswith("dw-strip"),
          "1x1 conv": lambda k: k == "conv-1x1", "matmul": lambda k: k == "matmul",
          "attention": lambda k: k == "attention"}


def kind_shares(profile: pd.DataFrame, min_share: float = 0.03) -> pd.DataFrame:
    """model, resolution, op_kind, time_share, mac_share, gmacs_per_s: the kinds with >= min_share of either."""
    k = profile[profile["breakdown"] == "op_kind"].copy()
    k["res"] = k["height"].astype(str) + "x" + k["width"].astype(str)
    k = k[(k["time_share"] >= min_share) | (k["mac_share"] >= min_share)]
    return k[["model", "res", "op_kind", "time_share", "mac_share", "gmacs_per_s"]]


def group_rates(profile: pd.DataFrame) -> pd.DataFrame:
    """Achieved GMAC/s per kind group (MACs summed over the group's kinds / their time) per model x resolution."""
    k = profile[profile["breakdown"] == "op_kind"]
    rows = []
    for (model, h, w), g in k.groupby(["model", "height", "width"], sort=False):
        row = {"model": model, "res": f"{h}x{w}"}
        for name, match in GROUPS.items():
            sel = g[g["op_kind"].map(match) & (g["macs"] > 0)]
            t = sel["time_ms"].sum()
            row[name] = sel["macs"].sum() / (t / 1e3) / 1e9 if t > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.profile_summary", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder with profile.parquet (run_bench.py profile ...)")
    p.add_argument("--markdown", metavar="FILE", help="also write both tables as Markdown")
    a = p.parse_args(argv)
    run = load_run(a.run)
    if run.profile is None or not len(run.profile):
        print(f"{a.run}: no profile.parquet (measure with run_bench.py profile or --profile)", file=sys.stderr)
        return 2
    shares, rates = kind_shares(run.profile), group_rates(run.profile)
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(shares.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print()
        print(rates.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if a.markdown:
        t1 = markdown_table(["model", "res", "op kind", "time share", "MAC share", "GMAC/s"],
                            [[r["model"], r["res"], r["op_kind"], f"{r['time_share']:.1%}", f"{r['mac_share']:.1%}",
                              f"{r['gmacs_per_s']:.2f}"] for _, r in shares.iterrows()], "lllrrr")
        t2 = markdown_table(["model", "res", *GROUPS],
                            [[r["model"], r["res"], *(f"{r[g]:.2f}" for g in GROUPS)] for _, r in rates.iterrows()],
                            "ll" + "r" * len(GROUPS))
        with open(a.markdown, "w") as f:
            f.write(t1 + "\n\nAchieved GMAC/s per kind group\n\n" + t2 + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
