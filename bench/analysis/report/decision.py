"""The design-review answer (issue 14): which mixer, at which resolution, on which device, and why.

Three views, all computed from the merged ok rows and their CI columns, nothing typed in:
- the decision table: per level, device setting, model size and resolution, every mixer's median latency with its
  95% CI, the fastest, and every pair of mixers as a ratio with the interval the two CIs allow. A pair is a win
  only when both rows are trustworthy (enough samples, a CI, a quiet machine) and their CIs do not overlap; an
  overlap is "not resolved", an untrustworthy side is "flagged", never a win.
- the latency-budget view: which models fit each budget on which setting, with their margin and whether the CI's
  upper bound fits too.
- the run's warnings (busy machine, unconverged, few samples, failed cases), shown at the top of the report.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.analysis.report.data import Merged, health_warnings, missing, number, text
from bench.analysis.report.html import ci_text, fnum
from bench.analysis.report.readings import MIN_N  # fewer samples than this decide nothing
from bench.cases import case_label
from bench.text import markdown_table, md_escape

FAILED = ("oom", "timeout", "error", "unknown")
GROUP = ["level", "config", "base", "height", "width"]
MD_MAX_GROUPS = 40
MD_MAX_FITS = 40


def profile_anchor(run_id: Any, case_id: Any) -> str:
    """The stable id of a case's entry in "Where the time goes": a digest of its run and case id, so a link and
    its target agree whatever characters the names hold."""
    return "prof-" + hashlib.sha1(f"{text(run_id)}\n{text(case_id)}".encode()).hexdigest()[:12]


def profiled_cases(m: Merged) -> set[tuple[str, str]]:
    """(run_id, case_id) of every case with profile rows (run ids filled as profile_data fills them)."""
    out: set[tuple[str, str]] = set()
    for run in m.runs:
        p = run.profile
        if p is not None and len(p):
            rid = p["run_id"].fillna(run.run_id).astype(str)
            out |= set(zip(rid, p["case_id"].astype(str)))
    return out


def doubts(r: dict) -> list[str]:
    """Why a row's latency cannot decide a comparison: busy machine, too few samples, no CI."""
    out = []
    if bool(r.get("noisy")):
        out.append("busy machine")
    n = number(r.get("n"))
    if not np.isfinite(n) or n < MIN_N:
        out.append(f"n={int(n) if np.isfinite(n) else '?'} (fewer than {MIN_N} samples)")
    lo, hi = number(r.get("latency_ms_ci_low")), number(r.get("latency_ms_ci_high"))
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        out.append("no CI")
    return out


def compare_pair(fast: dict, slow: dict) -> dict[str, Any]:
    """`slow` / `fast` median ratio (>= 1) with the interval the two CIs allow (slow's low / fast's high, slow's
    high / fast's low), and the verdict: 'faster' (whole interval above 1), 'not resolved', or 'flagged'."""
    ratio = number(slow["latency_ms_median"]) / number(fast["latency_ms_median"])
    lo = number(slow.get("latency_ms_ci_low")) / number(fast.get("latency_ms_ci_high"))
    hi = number(slow.get("latency_ms_ci_high")) / number(fast.get("latency_ms_ci_low"))
    why = [f"{text(x['variant'])}: {d}" for x in (fast, slow) for d in doubts(x)]
    if why:
        verdict = "flagged"
    elif lo > 1:
        verdict = "faster"
    else:
        verdict = "not resolved"
    return dict(faster=text(fast["variant"]), slower=text(slow["variant"]), ratio=ratio, ci_low=lo, ci_high=hi,
                verdict=verdict, why="; ".join(why) if why else ("" if verdict == "faster" else "CIs overlap"))


def decide_group(g: pd.DataFrame) -> dict[str, Any]:
    """One setting x resolution of one model size: its mixers (fastest first), every pair, the fastest."""
    rows = g.sort_values(["latency_ms_median", "variant"], kind="stable").to_dict("records")
    pairs = [compare_pair(rows[i], rows[j]) for i in range(len(rows)) for j in range(i + 1, len(rows))]
    best = text(rows[0]["variant"])
    against = [p for p in pairs if p["faster"] == best]
    if all(p["verdict"] == "faster" for p in against):
        verdict = "resolved"
    elif any(p["verdict"] == "flagged" for p in against):
        verdict = "flagged"
    else:
        verdict = "not resolved"
    open_ = [p["slower"] for p in against if p["verdict"] != "faster"]
    return dict(rows=rows, pairs=pairs, fastest=best, fastest_model=text(rows[0]["model"]), verdict=verdict,
                open=open_)


def decisions(m: Merged) -> list[dict[str, Any]]:
    """Every group of ok rows with two or more mixers, in the order setting, model size, pixels."""
    ok = m.ok
    if not len(ok):
        return []
    out = []
    for key, g in ok.groupby(GROUP, sort=False):
        g = g.drop_duplicates("variant", keep="last")
        if len(g) < 2:
            continue
        d = decide_group(g)
        first = g.iloc[0]
        d.update(dict(zip(GROUP, key)), resolution=first["resolution"], pixels=float(first["pixels"]),
                 mobile=bool(first["mobile_proxy"]))
        out.append(d)
    out.sort(key=lambda d: (str(d["level"]), str(d["config"]), str(d["base"]), d["pixels"]))
    return out


# ---------------------------------------------------------------------------------------------------------------
# latency budgets


def budget_fits(m: Merged, budgets: Sequence[float]) -> list[dict[str, Any]]:
    """Per budget: the model-level ok cases whose median fits (median <= budget), with margin = budget - median
    and whether the CI's upper bound fits too; and how many cases do not fit."""
    ok = m.ok
    models = ok[ok["level"] == "model"] if len(ok) else ok
    out = []
    for b in budgets:
        fits = []
        for r in (models.to_dict("records") if len(models) else []):
            med, hi = number(r["latency_ms_median"]), number(r.get("latency_ms_ci_high"))
            if med <= b:
                fits.append(dict(row=r, median=med, ci_high=hi, margin=b - med,
                                 ci_fits=None if not np.isfinite(hi) else bool(hi <= b), doubts=doubts(r)))
        fits.sort(key=lambda x: (str(x["row"]["config"]), str(x["row"]["model"]), float(x["row"]["pixels"])))
        out.append(dict(budget=float(b), fits=fits, over=len(models) - len(fits)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the run's warnings


def _names(rows: pd.DataFrame, k: int = 5) -> str:
    labels = [f"{case_label(r, device='device_key')}" for r in rows.head(k).to_dict("records")]
    return ", ".join(labels) + (f" and {len(rows) - k} more" if len(rows) > k else "")


def run_warnings(m: Merged, health: bool = True) -> list[str]:
    """What may make a number of this report wrong, one sentence each: busy machine (bench.health; left out with
    health=False where the page shows it in its own box), unconverged cases, ok cases with fewer than MIN_N
    samples, failed cases."""
    res = m.results
    out = list(health_warnings(m)) if health else []
    if not len(res):
        return out
    ok = res[res["status"] == "ok"]
    conv = ok["converged"] if "converged" in ok.columns else pd.Series(dtype=object)
    unconv = ok[conv.astype("boolean").fillna(True).eq(False)] if len(ok) else ok
    if len(unconv):
        out.append(f"{len(unconv)} ok case(s) did not converge (their CI is wider than the target): "
                   f"{_names(unconv)}")
    n = pd.to_numeric(ok["n"], errors="coerce") if "n" in ok.columns else pd.Series(np.nan, index=ok.index)
    few = ok[~(n >= MIN_N)]
    if len(few):
        out.append(f"{len(few)} ok case(s) with fewer than {MIN_N} samples: no win rests on them: {_names(few)}")
    bad = res[res["status"].isin(FAILED)]
    if len(bad):
        counts = ", ".join(f"{v} {k}" for k, v in bad["status"].value_counts().items())
        out.append(f"{len(bad)} case(s) failed ({counts}): {_names(bad)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# views (formatted strings for the page and the summary)


def _pair_view(p: dict) -> dict[str, str]:
    ratio = f"{fnum(p['ratio'])}×"
    if p["verdict"] == "faster":
        say = f"{p['faster']} faster than {p['slower']} by {ratio}"
    elif p["verdict"] == "not resolved":
        say = f"{p['faster']} vs {p['slower']}: not resolved ({p['why']})"
    else:
        say = f"{p['faster']} vs {p['slower']}: flagged, not a win ({p['why']})"
    return dict(faster=p["faster"], slower=p["slower"], ratio=ratio, ci=ci_text(p["ci_low"], p["ci_high"]),
                verdict=p["verdict"], cls={"faster": "win", "not resolved": "tie"}.get(p["verdict"], "flag"),
                text=say)


def _fastest_text(d: dict) -> str:
    if d["verdict"] == "resolved":
        return f"{d['fastest']} is the fastest (CIs apart from every other mixer)"
    return f"{d['fastest']} has the lowest median, {d['verdict']} against {', '.join(d['open'])}"


def decision_view(m: Merged) -> list[dict]:
    """Per level (block, then model): its decision groups as strings, each mixer row linked to its profile."""
    profiled = profiled_cases(m)
    levels: dict[str, list[dict]] = {}
    for d in decisions(m):
        mixers = []
        for r in d["rows"]:
            key = (text(r["run_id"]), text(r["case_id"]))
            mixers.append(dict(variant=text(r["variant"]), model=text(r["model"]),
                               median=fnum(r["latency_ms_median"]),
                               ci=ci_text(number(r.get("latency_ms_ci_low")), number(r.get("latency_ms_ci_high"))),
                               n=text(r.get("n")), doubts="; ".join(doubts(r)),
                               converged="no" if not missing(r.get("converged")) and not r["converged"] else "",
                               anchor=profile_anchor(*key) if key in profiled else ""))
        levels.setdefault(str(d["level"]), []).append(dict(
            config=str(d["config"]), base=str(d["base"]), resolution=str(d["resolution"]), mobile=d["mobile"],
            mixers=mixers, pairs=[_pair_view(p) for p in d["pairs"]], fastest=d["fastest"], verdict=d["verdict"],
            fastest_text=_fastest_text(d)))
    order = sorted(levels, key=lambda k: (k != "block", k != "model", k))
    return [dict(level=k, groups=levels[k]) for k in order]


def budget_view(m: Merged, budgets: Sequence[float]) -> list[dict]:
    out = []
    for b in budget_fits(m, budgets):
        rows = [dict(config=str(x["row"]["config"]), model=text(x["row"]["model"]),
                     resolution=str(x["row"]["resolution"]), median=fnum(x["median"]), ci_high=fnum(x["ci_high"]),
                     margin=fnum(x["margin"]),
                     ci_fits={True: "yes", False: "no", None: "no CI"}[x["ci_fits"]],
                     doubts="; ".join(x["doubts"])) for x in b["fits"]]
        out.append(dict(budget=f"{b['budget']:g}", rows=rows, over=b["over"]))
    return out


def markdown(decision: list[dict], budgets: list[dict]) -> list[str]:
    """The decision tables (one line per setting x resolution: fastest and every pair) and the budget fits."""
    e = md_escape
    lines: list[str] = []
    for lv in decision:
        rows = [[g["config"], g["base"], g["resolution"],
                 ", ".join(f"{x['variant']} {x['median']} {x['ci']}".strip() for x in g["mixers"]),
                 g["fastest_text"], "; ".join(f"{p['faster']}/{p['slower']} {p['ratio']} {p['ci']} {p['verdict']}"
                                             for p in g["pairs"])] for g in lv["groups"]]
        lines += [f"## Decision: which mixer (level {e(lv['level'])})", "",
                  markdown_table(["setting", "model", "resolution", "median ms [95% CI]", "fastest",
                                  "pairs (slower/faster ratio, CI, verdict)"], rows[:MD_MAX_GROUPS]), ""]
        if len(rows) > MD_MAX_GROUPS:
            lines += [f"({len(rows) - MD_MAX_GROUPS} more in the HTML report)", ""]
    for b in budgets:
        rows = [[r["config"], r["model"], r["resolution"], r["median"], r["ci_high"], r["margin"], r["ci_fits"]]
                for r in b["rows"]]
        lines += [f"## Within {e(b['budget'])} ms: {len(rows)} case(s) fit, {b['over']} do not", ""]
        if rows:
            lines += [markdown_table(["setting", "model", "resolution", "median ms", "CI high", "margin ms",
                                      "CI fits"], rows[:MD_MAX_FITS], align="lllrrrl"), ""]
        if len(rows) > MD_MAX_FITS:
            lines += [f"({len(rows) - MD_MAX_FITS} more in the HTML report)", ""]
    return lines
