"""The same case in two runs, side by side: a case measured in more than one of the merged runs is shown with both
medians, their CIs and the ratio B/A with its CI (each labelled with the confidence it reaches where that is not
95%), instead of the latest run silently replacing the others. Named for what it shows: this is not the A/B
engine (bench/ab/), whose alternation happens within one run; the page calls the two runs A and B.

Formatted strings only (the page escapes them); the numbers come from `data.ab_pairs`.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.analysis.report.data import Merged, ab_pairs
from bench.analysis.report.formatting import ci_label, fnum, missing
from bench.analysis.report.readings import MIN_N


def _finite(*vs: Any) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in vs)
    except (TypeError, ValueError):
        return False


def _ms(v: Any) -> str:
    return f"{fnum(v)} ms" if _finite(v) else ""


def _ci(lo: Any, hi: Any, level: Any, n: Any = None, unit: str = "", at_least: bool = False) -> str:
    return ci_label(lo, hi, level, n=n, unit=unit, at_least=at_least) if _finite(lo, hi) else ""


def reading(r: dict) -> tuple[str, str]:
    """(words, css class) for one pair: B slower, faster or not resolved, judged by the CI of B/A; no verdict
    where a side has fewer than MIN_N samples or was measured on a busy machine."""
    if not _finite(r["ratio"]):
        sides = [f"{side}: {r[f'status_{side.lower()}']}" for side in ("A", "B")]
        return f"no ratio ({', '.join(sides)})", "na"
    if not _finite(r["ci_low"], r["ci_high"]):
        return "no CI: not resolved", "tie"
    if _finite(r.get("n_min")) and r["n_min"] < MIN_N:
        return f"a side has fewer than {MIN_N} samples: not resolved", "tie"
    if not missing(r.get("noisy")) and bool(r.get("noisy")):
        return "a side measured on a busy machine: no verdict", "flag"
    if r["ci_low"] > 1:
        return f"B slower by {100 * (r['ratio'] - 1):.1f}%", "loss"
    if r["ci_high"] < 1:
        return f"B faster by {100 * (1 - r['ratio']):.1f}%", "win"
    return "no difference resolved (the CI spans 1)", "tie"


def _side(r: dict, side: str) -> dict[str, str]:
    s = side.lower()
    ok = _finite(r[f"{s}_ms"])
    status = r[f"status_{s}"]
    reason = r[f"reason_{s}"]
    return dict(run=r[f"run_{s}"], ms=_ms(r[f"{s}_ms"]) if ok else status,
                ci=_ci(r[f"{s}_ci_low"], r[f"{s}_ci_high"], r.get(f"{s}_ci_level"), r.get(f"{s}_n"), " ms")
                if ok else reason,
                ok="1" if ok else "")


def rows(ab: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in ab.to_dict("records"):
        words, cls = reading(r)
        out.append(dict(model=r["model"], setting=r["config"], resolution=r["resolution"], a=_side(r, "A"),
                        b=_side(r, "B"), ratio=f"{fnum(r['ratio'])}×" if _finite(r["ratio"]) else "–",
                        ratio_ci=_ci(r["ci_low"], r["ci_high"], r.get("ci_level"),
                                     at_least=r["ci_method"] == "bounds"),
                        ci_method=r["ci_method"], reading=words, cls=cls,
                        noisy=bool(r["noisy"])))
    return out


def view(m: Merged) -> dict[str, Any]:
    """{rows, n, runs: the (A, B) run pairs, counts per reading}: empty rows when no case is in two runs."""
    ab = m.ab if m.ab is not None else ab_pairs(m)
    out = rows(ab)
    pairs = list(dict.fromkeys(zip(ab["run_a"], ab["run_b"]))) if len(ab) else []
    counts: dict[str, int] = {}
    for r in out:
        counts[r["cls"]] = counts.get(r["cls"], 0) + 1
    summary = [f"{counts[k]} {w}" for k, w in (("loss", "B slower"), ("win", "B faster"), ("tie", "not resolved"),
                                                ("flag", "on a busy machine"), ("na", "without a ratio"))
               if counts.get(k)]
    return dict(rows=out, n=len(out), pairs=[dict(a=a, b=b) for a, b in pairs], summary=", ".join(summary))
