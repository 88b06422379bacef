"""How the report reads a value and prints a number, shared by every view of the page and the Markdown summary.

Reading: a blank cell of a results table (None, pandas' NA, NaN) is `missing`; `text` and `number` read a cell
as a string or a finite float. Printing: `fnum` (significant digits), `ci_text`/`ci_label` (an interval with the
confidence it reaches, never more) and `level_text`. A leaf of the report package, so that the views (html,
decision, profile_view, two_runs, pairs) import it and none imports another to borrow a formatter.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def missing(v: Any) -> bool:
    """None, pandas' NA or NaN: what a blank cell of a results table reads as."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def text(v: Any) -> str:
    return "" if missing(v) else str(v)


def number(v: Any) -> float:
    """v as a finite float, else NaN (None, text, inf): what a comparison of two rows may divide by."""
    try:
        return float(v) if v is not None and np.isfinite(float(v)) else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def fnum(v: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits, thousands separators for large ones, '' when missing."""
    if missing(v):
        return ""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    mag = int(math.floor(math.log10(abs(x))))
    dec = max(0, digits - 1 - mag)
    return f"{x:.{dec}f}"


def ci_text(lo: Any, hi: Any, digits: int = 3) -> str:
    """'[lo, hi]' of a CI in the report's number format, '' when a bound is missing or not finite."""
    if missing(lo) or missing(hi) or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"[{fnum(lo, digits)}, {fnum(hi, digits)}]"


NOMINAL = 0.95  # the level a bare "[lo, hi]" stands for (the headers say "CI", the legends "95% unless shown")


def level_text(level: Any, at_least: bool = False) -> str:
    """A confidence as a percentage: '80%', '93.8%', '99.4%'; `at_least`: a lower bound, rounded down ('≥90.2%');
    '' when unknown."""
    x = number(level)
    if not np.isfinite(x):
        return ""
    pct = math.floor(x * 1000 + 1e-6) / 10 if at_least else round(x * 100, 1)
    return ("≥" if at_least else "") + f"{pct:.1f}".rstrip("0").rstrip(".") + "%"


def ci_label(lo: Any, hi: Any, level: Any, n: Any = None, at_least: bool = False, unit: str = "") -> str:
    """An interval as the report prints it, never claiming more confidence than it reaches: '[lo, hi]' (unit
    after it) at 95%, '[lo, hi] 80%' at any other level (`at_least`: '≥90.2%', a lower bound), '[lo, hi] (level
    not recorded)'; a single sample (`n` 1) is 'n=1, no CI', never '[x, x]'; '' without bounds."""
    k = number(n)
    if np.isfinite(k) and k <= 1:
        return f"n={int(k)}, no CI"
    ci = ci_text(lo, hi)
    if not ci:
        return ""
    ci += unit
    x = number(level)
    if not np.isfinite(x):
        return f"{ci} (level not recorded)"
    return ci if abs(x - NOMINAL) < 5e-4 and not at_least else f"{ci} {level_text(x, at_least)}"
