"""The design-review answer (issue 14): which mixer, at which resolution, on which device, and why.

Three views, all computed from the merged ok rows, their CI columns and the runs' paired decisions, nothing typed in:
- the decision table: per level, device setting, model size and resolution, every mixer's median latency with its
  CI (labelled with the confidence it reaches where that is not 95%), the fastest, and every pair of mixers. A
  pair measured in the same processes (interleaved, pairs.parquet) is decided by its paired interval over
  processes (bench.analysis.report.pairs): faster, tied (a decision, within the tie margin) or not resolved. Any
  other pair by the interval the two CIs allow: a win only when both rows are trustworthy (enough samples, a CI,
  a quiet machine) and their CIs do not overlap; an overlap is "not resolved". An untrustworthy side, or a pair
  measured on a busy machine, is "flagged", never a win.
- the latency-budget view: which models fit each budget on which setting, with their margin and whether the CI's
  upper bound fits too.
- the run's warnings (busy machine, unconverged, few samples, failed cases), shown at the top of the report.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.analysis.report import pairs as paired
from bench.analysis.report.data import Merged, ci_level, health_warnings, ratio_level
from bench.analysis.report.formatting import NOMINAL, ci_label, fnum, level_text, missing, number, text
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
    elif n >= MIN_N and not ci_level(r) >= NOMINAL - 5e-4:
        level = ci_level(r)
        out.append(f"CI reaches {level_text(level)} only" if np.isfinite(level) else "CI level not recorded")
    return out


def compare_pair(fast: dict, slow: dict) -> dict[str, Any]:
    """`slow` / `fast` median ratio (>= 1) with the interval the two CIs allow (slow's low / fast's high, slow's
    high / fast's low; it covers at least the product of the two CIs' levels), and the verdict: 'faster' (whole
    interval above 1), 'not resolved', or 'flagged'."""
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
                ci_level=ratio_level("bounds", fast, slow), at_least=True, paired=False, n_processes=None,
                n_min=float(np.fmin(number(fast.get("n")), number(slow.get("n")))), tie=float("nan"),
                verdict=verdict,
                why="; ".join(why) if why else ("" if verdict == "faster" else "CIs overlap"))


def _pair(a: dict, b: dict, pairs: paired.PairIndex) -> dict[str, Any]:
    """Rows a and b (a the lower median) decided by their paired interval where the run has one, else by their
    two CIs."""
    p = paired.find(a, b, pairs)
    return paired.paired_pair(p, a, b) if p is not None else compare_pair(a, b)


def decide_group(g: pd.DataFrame, pairs: paired.PairIndex | None = None) -> dict[str, Any]:
    """One setting x resolution of one model size: its mixers (fastest first, then by median), every pair (paired
    where `pairs` has it), the fastest and the verdict: resolved when every pair against the fastest is faster or
    tied, flagged when one of them is flagged, else not resolved."""
    rows = g.sort_values(["latency_ms_median", "variant"], kind="stable").to_dict("records")
    found = [_pair(rows[i], rows[j], pairs or {}) for i in range(len(rows)) for j in range(i + 1, len(rows))]
    best = paired.fastest(rows, found)
    rows.sort(key=lambda r: text(r["variant"]) != best)  # stable: the fastest first, the rest by median
    against = [p for p in found if best in (p["faster"], p["slower"])]
    if all(paired.decided(p, best) for p in against):
        verdict = "resolved"
    elif any(p["verdict"] == "flagged" for p in against):
        verdict = "flagged"
    else:
        verdict = "not resolved"
    open_ = [p["slower"] if p["faster"] == best else p["faster"] for p in against if not paired.decided(p, best)]
    return dict(rows=rows, pairs=found, fastest=best, fastest_model=text(rows[0]["model"]), verdict=verdict,
                open=open_, tied=[p["slower"] if p["faster"] == best else p["faster"] for p in against
                                  if p["verdict"] == "tied"], design=paired.group_design(found))


def decisions(m: Merged) -> list[dict[str, Any]]:
    """Every group of ok rows with two or more mixers, in the order setting, model size, pixels."""
    ok = m.ok
    if not len(ok):
        return []
    index = paired.index(m.pairs)
    out = []
    for key, g in ok.groupby(GROUP, sort=False):
        g = g.drop_duplicates("variant", keep="last")
        if len(g) < 2:
            continue
        d = decide_group(g, index)
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
                no_ci = not np.isfinite(hi) or number(r.get("n")) <= 1  # one sample: [x, x] is no CI
                fits.append(dict(row=r, median=med, ci_high=hi, margin=b - med,
                                 ci_fits=None if no_ci else bool(hi <= b), doubts=doubts(r)))
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
    busy = m.pairs[m.pairs["noisy"].fillna(False).astype(bool)] if m.pairs is not None and len(m.pairs) else ()
    if len(busy):
        out.append(f"{len(busy)} paired decision(s) measured on a busy machine (some process of the pair stayed "
                   f"noisy): flagged, no win rests on them")
    bad = res[res["status"].isin(FAILED)]
    if len(bad):
        counts = ", ".join(f"{v} {k}" for k, v in bad["status"].value_counts().items())
        out.append(f"{len(bad)} case(s) failed ({counts}): {_names(bad)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# views (formatted strings for the page and the summary)


def _pair_view(p: dict) -> dict[str, str]:
    """A pair as strings: ratio (slower / faster time), its interval with the confidence it reaches (paired: the
    sequential rule's level; two CIs: at least the product of their levels), how it was decided, the verdict, its
    css class (win green, tied neutral, not resolved grey, flagged yellow) and the sentence."""
    ratio = f"{fnum(p['ratio'])}×"
    return dict(faster=p["faster"], slower=p["slower"], ratio=ratio, verdict=p["verdict"],
                ci=ci_label(p["ci_low"], p["ci_high"], p["ci_level"], n=p.get("n_min"), at_least=p["at_least"]),
                design=paired.design_text(p), cls=paired.VERDICT_CLASS.get(p["verdict"], "flag"),
                text=paired.sentence(p, ratio))


def _fastest_text(d: dict) -> str:
    how = {"paired": "paired intervals", "two CIs": "CIs apart"}.get(d["design"], "paired intervals and CIs")
    ties = f", tied with {', '.join(d['tied'])}" if d["tied"] else ""
    if d["verdict"] == "resolved" and len(d["tied"]) == len(d["rows"]) - 1:
        return f"{d['fastest']} has the lowest time{ties} ({how}): no mixer is faster"
    if d["verdict"] == "resolved":
        return f"{d['fastest']} is the fastest{ties} ({how}, decided against every other mixer)"
    return f"{d['fastest']} has the lowest time, {d['verdict']} against {', '.join(d['open'])}{ties}"


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
                               ci=ci_label(r.get("latency_ms_ci_low"), r.get("latency_ms_ci_high"), ci_level(r),
                                           n=r.get("n")),
                               n=text(r.get("n")), doubts="; ".join(doubts(r)), design=text(r.get("design")),
                               converged="no" if not missing(r.get("converged")) and not r["converged"] else "",
                               anchor=profile_anchor(*key) if key in profiled else ""))
        levels.setdefault(str(d["level"]), []).append(dict(
            config=str(d["config"]), base=str(d["base"]), resolution=str(d["resolution"]), mobile=d["mobile"],
            mixers=mixers, pairs=[_pair_view(p) for p in d["pairs"]], fastest=d["fastest"], verdict=d["verdict"],
            fastest_text=_fastest_text(d), design=d["design"]))
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


MD_LEGEND = ("Median ms with its CI: 95% unless its level is shown (fewer than 6 samples: (min, max), which covers "
             "less; one sample: no CI). Each pair: slower / faster median time, its interval with the confidence it "
             "reaches (paired: over the processes that measured both mixers; two CIs: at least the product of "
             "their levels), how it was decided, then the verdict in words; tied is a decision (within the tie "
             "margin), flagged is not a win.")


def _md_pair(p: dict) -> str:
    """'softmax/msla 4.90× [4.5, 5.3] 99.4% (paired, 12 processes): softmax is 4.90× slower than msla'."""
    return f"{p['slower']}/{p['faster']} {p['ratio']} {p['ci']} ({p['design']}): {p['text']}".replace("  ", " ")


def markdown(decision: list[dict], budgets: list[dict]) -> list[str]:
    """The decision tables (one line per setting x resolution: fastest and every pair) and the budget fits."""
    e = md_escape
    lines: list[str] = []
    for lv in decision:
        rows = [[g["config"], g["base"], g["resolution"],
                 ", ".join(f"{x['variant']} {x['median']} {x['ci']}".strip() for x in g["mixers"]),
                 g["fastest_text"], "; ".join(_md_pair(p) for p in g["pairs"])] for g in lv["groups"]]
        lines += [f"## Decision: which mixer (level {e(lv['level'])})", "", MD_LEGEND, "",
                  markdown_table(["setting", "model", "resolution", "median ms [CI]", "fastest",
                                  "pairs (slower/faster time ratio, interval, design: verdict)"],
                                 rows[:MD_MAX_GROUPS]), ""]
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
