"""The paired decisions of interleaved groups (pairs.parquet, bench.schema.PAIR_COLUMNS) in the decision table.

The mixers of a decision group measured in the same processes (results column `design` "interleaved") have, per
pair of cases, the slow / fast ratio over processes with a Student t interval at the confidence the engine's
sequential rule reached (`ci_level`), and the engine's verdict: faster (the interval above 1 + tie), tied (inside
1 ± tie) or not resolved. Such a pair is decided by that interval, not by the two cases' independent CIs: the
machine's drift, shared by both sides of every cycle, cancels. A pair measured while the machine stayed busy
(`noisy`) is flagged, never a win. Rows measured isolated, and runs older than the pair table, keep the two-CI rule
(decision.compare_pair).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.analysis.report.formatting import missing, number, text

PairIndex = dict[tuple[str, frozenset], dict]
VERDICT_CLASS = {"faster": "win", "tied": "tied", "not resolved": "tie", "flagged": "flag"}


def index(pairs: pd.DataFrame | None) -> PairIndex:
    """(run_id, {case_id, case_id}) -> the pair row; the last row of a pair wins."""
    if pairs is None or not len(pairs):
        return {}
    return {(text(p["run_id"]), frozenset((text(p["fast_case_id"]), text(p["slow_case_id"])))): p
            for p in pairs.to_dict("records")}


def _flag(v: Any) -> bool:
    return not missing(v) and bool(v)


def interleaved(r: dict) -> bool:
    return text(r.get("design")) == "interleaved"


def find(a: dict, b: dict, pairs: PairIndex) -> dict | None:
    """The pair row of rows a and b: both measured interleaved, in the same run, and in its pair table."""
    if not pairs or not (interleaved(a) and interleaved(b)) or text(a.get("run_id")) != text(b.get("run_id")):
        return None
    return pairs.get((text(a.get("run_id")), frozenset((text(a.get("case_id")), text(b.get("case_id"))))))


def paired_pair(p: dict, a: dict, b: dict) -> dict[str, Any]:
    """A pair of the decision table from its pair row (rows a and b are its two cases): the engine's ratio,
    interval, confidence and verdict, oriented as the pair table orients it (faster: the lower time); flagged
    when a process of the pair, or either case, was measured on a busy machine."""
    fast, slow = (a, b) if text(a.get("case_id")) == text(p.get("fast_case_id")) else (b, a)
    verdict, why = text(p.get("verdict")), text(p.get("reason"))
    busy = [text(p.get("noisy_reason")) or "a process of the pair"] if _flag(p.get("noisy")) else []
    busy += [f"{text(r['variant'])}: {text(r.get('noisy_reason')) or 'busy machine'}" for r in (fast, slow)
             if _flag(r.get("noisy"))]
    if busy:
        verdict, why = "flagged", "busy machine: " + "; ".join(busy)
    n = number(p.get("n_processes"))
    return dict(faster=text(fast["variant"]), slower=text(slow["variant"]), ratio=number(p.get("ratio")),
                ci_low=number(p.get("ci_low")), ci_high=number(p.get("ci_high")), ci_level=number(p.get("ci_level")),
                at_least=False, verdict=verdict, why=why, paired=True,
                n_processes=int(n) if np.isfinite(n) else None, tie=number(p.get("tie")),
                fastest=text(p.get("fastest")))


def design_text(p: dict) -> str:
    """'paired, 12 processes' (the pair table decided) or 'two CIs' (the cases' own CIs)."""
    if not p.get("paired"):
        return "two CIs"
    n = p.get("n_processes")
    return f"paired, {n} process{'es' if n != 1 else ''}" if n is not None else "paired"


def tie_text(p: dict) -> str:
    """' (within ±2%)' for a pair with a tie margin, '' without."""
    t = number(p.get("tie"))
    return f" (within ±{100 * t:g}%)" if np.isfinite(t) else ""


def group_design(pairs: list[dict]) -> str:
    """How a group was decided: 'paired', 'two CIs', or 'paired and two CIs' where its rows were measured apart."""
    kinds = {bool(p.get("paired")) for p in pairs}
    return "paired" if kinds == {True} else "two CIs" if kinds == {False} else "paired and two CIs"


def fastest(rows: list[dict], pairs: list[dict]) -> str:
    """The group's fastest mixer: the pair table's (lowest time over the shared processes) where a paired pair
    names one of the group's mixers, else the lowest median (rows sorted by median)."""
    names = {text(r["variant"]) for r in rows}
    named = [p["fastest"] for p in pairs if p.get("paired") and p.get("fastest") in names]
    return named[0] if named else text(rows[0]["variant"])


def decided(p: dict, best: str) -> bool:
    """A pair against the fastest is decided when it is tied, or faster with the fastest on the faster side."""
    return p["verdict"] == "tied" or (p["verdict"] == "faster" and p["faster"] == best)


def sentence(p: dict, ratio: str) -> str:
    """The pair in words, oriented so that 'slower' and 'faster' cannot be misread: 'softmax is 4.90× slower
    than msla', 'msla and relu-linear tied: ...', '... not resolved (why)', '... flagged, not a win (why)'."""
    if p["verdict"] == "faster":
        return f"{p['slower']} is {ratio} slower than {p['faster']}"
    if p["verdict"] == "tied":
        return f"{p['faster']} and {p['slower']} tied{tie_text(p)}: {p['slower']} / {p['faster']} time {ratio}"
    if p["verdict"] == "not resolved":
        return f"{p['faster']} vs {p['slower']}: not resolved ({p['why'] or 'interval too wide'})"
    return f"{p['faster']} vs {p['slower']}: flagged, not a win ({p['why']})"


def speedup_override(pairs: pd.DataFrame | None) -> Callable[[dict, dict], dict]:
    """For data.speedups: msla (`t`) and a baseline (`b`) measured interleaved with a pair row take the pair's
    ratio (baseline / msla time, oriented from slow / fast), interval and level (ci_method "paired"), and a pair
    measured on a busy machine makes the point noisy; {} for any other two rows."""
    idx = index(pairs)

    def override(t: dict, b: dict) -> dict:
        p = find(t, b, idx)
        if p is None:
            return {}
        ratio, lo, hi = number(p.get("ratio")), number(p.get("ci_low")), number(p.get("ci_high"))
        if text(t.get("case_id")) != text(p.get("fast_case_id")):  # msla is the slower side
            ratio, lo, hi = (1 / x if x > 0 else float("nan") for x in (ratio, hi, lo))
        return dict(speedup=ratio, ci_low=lo, ci_high=hi, ci_method="paired", ci_level=number(p.get("ci_level")),
                    noisy=_flag(t.get("noisy")) or _flag(b.get("noisy")) or _flag(p.get("noisy")))

    return override
