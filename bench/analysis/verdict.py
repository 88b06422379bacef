"""The verdict of one case in a comparison of two runs: the ratio of medians, its CI, a p-value and the verdict.

The rule itself (why a change must be both large and established, when the figures leave it `undecided`, and why
noisy cases are not judged) is stated in `bench.analysis.compare`, which matches the cases of the two runs and calls
`compare_case` for each; `judge` applies the rule to one ratio, its CI and its p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bench.cases import IDENTITY
from bench.analysis.meta import noisy_reason
from bench.stats import NOMINAL, mann_whitney_p, median_ci_level, process_welch_p, ratio_ci

REGRESSION_STATUSES = ("oom", "timeout", "error")
JUDGED = ("slower", "faster", "unchanged", "undecided")  # the verdicts that rest on the timings of both runs


def as_float(x: Any) -> float:
    """x as a float, NaN where missing or not a number (results columns may hold NA or text)."""
    try:
        return float(x) if x is not None and not pd.isna(x) else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _is_false(v: Any) -> bool:
    return v is not None and not pd.isna(v) and not bool(v)


@dataclass(frozen=True)
class Context:
    """What judging one case needs from the two runs as a whole."""
    threshold: float
    alpha: float
    n_boot: int
    base_samples: dict[str, list[np.ndarray]]
    cur_samples: dict[str, list[np.ndarray]]
    rates: tuple[dict[str, float], dict[str, float]] | None  # (baseline, current); None without --normalize
    allow_noisy: bool = False  # judge cases measured on a busy machine anyway (--allow-noisy)


class _Estimate(NamedTuple):
    ratio: float
    lo: float
    hi: float
    p: float  # NaN on the summary basis: the CI alone decides
    basis: str
    medians: dict[str, float]  # base_median_ms / cur_median_ms where the basis recomputes them
    notes: list[str]
    refusal: str  # why these figures cannot carry a verdict ("" when they can)


def _pct(threshold: float) -> str:
    return f"{threshold * 100:g}%"


def judge(r: float, lo: float, hi: float, p: float, threshold: float, alpha: float) -> tuple[str, str]:
    """(verdict, note) of a ratio r with its CI [lo, hi] and p-value p (NaN on the summary basis: the CI alone
    decides). The rule is stated in `bench.analysis.compare`; the note names the figures that disagree."""
    t = 1.0 + threshold
    excludes_1 = lo > 1 or hi < 1
    sig = excludes_1 if math.isnan(p) else p < alpha
    figures = f"ratio {r:.3f} [{lo:.3f}, {hi:.3f}]"
    if r > t and sig and lo > 1:
        return "slower", ""
    if r < 1 / t and sig and hi < 1:
        return "faster", ""
    if 1 / t <= lo and hi <= t:
        return "unchanged", ""  # established within the threshold, whatever the test says about exactly 1
    if sig and not excludes_1:
        return "undecided", f"{figures}: p = {p:.2g} < alpha {alpha:g} but the CI includes 1"
    if r > t or r < 1 / t:
        if sig:
            return "undecided", f"{figures} beyond {_pct(threshold)} but the CI lies on the other side of 1"
        if lo > t or hi < 1 / t:
            return "undecided", f"{figures} beyond {_pct(threshold)} but p = {p:.2g} >= alpha {alpha:g}"
        return "unchanged", "beyond threshold but not significant"
    if sig:
        return "undecided", f"{figures}: significant but the CI reaches beyond {_pct(threshold)}"
    return "unchanged", ""


def ci_level(row: pd.Series) -> float:
    """The confidence the row's CI of the median reaches: `latency_ms_ci_level`, or for runs older than that column
    the level of n samples (`median_ci_level`); nan when neither is known."""
    level = as_float(row.get("latency_ms_ci_level"))
    if not math.isnan(level):
        return level
    n = as_float(row.get("n"))
    return float("nan") if math.isnan(n) else median_ci_level(int(n), NOMINAL)


def _scale(ctx: Context, device_name: Any) -> tuple[float, list[str]]:
    """--normalize: the factor that puts the current run in baseline-machine time on this device."""
    if ctx.rates is None:
        return 1.0, []
    base, cur = ctx.rates
    dev = "" if pd.isna(device_name) else str(device_name)
    if dev in base and dev in cur:
        return cur[dev] / base[dev], []
    return 1.0, ["no calibration rate: not normalised"]


def _from_samples(ga: list[np.ndarray], gx: list[np.ndarray], ctx: Context, seed: int) -> _Estimate:
    """Bootstrap CI of the ratio of medians and a p-value; with processes on both sides, both levels are
    resampled and the test is on the process medians (the process is then the unit of replication)."""
    a, x = np.concatenate(ga), np.concatenate(gx)
    r, lo, hi, two_level = ratio_ci(ga, gx, np.median, conf=1 - ctx.alpha, n_boot=ctx.n_boot, seed=seed)
    p = process_welch_p(ga, gx) if two_level else mann_whitney_p(a, x)
    return _Estimate(r, lo, hi, p, "repeats" if two_level else "samples",
                     {"base_median_ms": float(np.median(a)), "cur_median_ms": float(np.median(x))}, [], "")


def _summary_refusal(br: pd.Series, cr: pd.Series) -> str:
    """Why the per-run CIs cannot carry a verdict: a side's CI reaches less than the nominal level (fewer than 6
    samples: (min, max)), or its level is unknown; "" when both reach it."""
    low = []
    for side, row in (("baseline", br), ("current", cr)):
        level = ci_level(row)
        if math.isnan(level):
            low.append(f"{side} CI level unknown")
        elif level < NOMINAL - 1e-9:
            n = as_float(row.get("n"))
            low.append(f"{side} CI of the median reaches {level:.1%}" + ("" if math.isnan(n) else f" (n = {n:.0f})"))
    return f"{', '.join(low)} < {NOMINAL:.0%}: no verdict rests on it" if low else ""


def _from_summary(br: pd.Series, cr: pd.Series, scale: float) -> _Estimate:
    """Without raw samples on a side: the conservative interval from the two medians' CIs, no p-value; no verdict
    when either CI is missing or below the nominal level."""
    bmed, cmed = as_float(br["latency_ms_median"]), as_float(cr["latency_ms_median"]) * scale
    r = cmed / bmed if bmed > 0 else np.nan
    blo, bhi = as_float(br["latency_ms_ci_low"]), as_float(br["latency_ms_ci_high"])
    clo, chi = as_float(cr["latency_ms_ci_low"]) * scale, as_float(cr["latency_ms_ci_high"]) * scale
    lo = clo / bhi if bhi > 0 else np.nan
    hi = chi / blo if blo > 0 else np.nan
    if math.isnan(lo) or math.isnan(hi):
        return _Estimate(r, r, r, np.nan, "summary", {"cur_median_ms": cmed}, [],
                         "no samples or CI: point ratio only, no verdict rests on it")
    return _Estimate(r, lo, hi, np.nan, "summary", {"cur_median_ms": cmed}, ["no raw samples: 95% CIs of medians"],
                     _summary_refusal(br, cr))


def _judge_ok(br: pd.Series, cr: pd.Series, ctx: Context, seed: int) -> dict[str, Any]:
    """The verdict fields of a case ok in both runs (the rule is stated in bench.analysis.compare)."""
    scale, notes = _scale(ctx, cr["device_name"])
    ga = ctx.base_samples.get(str(br["case_id"])) or []
    gx = [g * scale for g in ctx.cur_samples.get(str(cr["case_id"])) or []]
    if sum(map(len, ga)) >= 2 and sum(map(len, gx)) >= 2:
        est = _from_samples(ga, gx, ctx, seed)
    else:
        est = _from_summary(br, cr, scale)
    notes += est.notes
    out = dict(scale=scale, basis=est.basis, ratio=est.ratio, ci_low=est.lo, ci_high=est.hi, p_value=est.p,
               **est.medians)
    if math.isnan(est.ratio):
        out["verdict"] = "failed"
        notes.append("no latency")
    elif est.refusal:
        out["verdict"] = "undecided"
        notes.append(est.refusal)
    else:
        v, why = judge(est.ratio, est.lo, est.hi, est.p, ctx.threshold, ctx.alpha)
        out.update(verdict=v, regression=v == "slower")
        notes += [why] if why else []
    notes += [f"{side} not converged" for side, r in (("baseline", br), ("current", cr))
              if _is_false(r.get("converged"))]
    out["note"] = "; ".join(notes)
    return out


def _failure(bstat: str, cstat: str, cr: pd.Series) -> dict[str, Any]:
    """A case not ok on a side: a regression only when it ran ok before and now oom, timeout or error."""
    side = [] if bstat == "ok" else [f"baseline {bstat}"]
    if cstat != "ok":
        reason = "" if pd.isna(cr.get("reason", pd.NA)) else str(cr["reason"])
        side.append(f"current {cstat}" + (f" ({reason.splitlines()[0][:80]})" if reason else ""))
    return dict(verdict="failed", regression=bstat == "ok" and cstat in REGRESSION_STATUSES, note="; ".join(side))


def _noise(br: pd.Series, cr: pd.Series, row: dict[str, Any], allow: bool) -> dict[str, Any]:
    """A case flagged noisy on a side (measured while the machine was busy) is not judged: its verdict and any
    regression are replaced by `noisy`, unless `allow` (--allow-noisy), which judges it and says so in the note.
    A failure that is no regression (e.g. now unsupported) stays `failed`: it does not rest on timing."""
    flagged = [f"{side} noisy ({why})" for side, r in (("baseline", br), ("current", cr))
               if (why := noisy_reason(r)) is not None]
    if not flagged or (row["verdict"] not in JUDGED and not row["regression"]):
        return {"noisy": bool(flagged)}
    if allow:
        return {"noisy": True, "note": "; ".join(filter(None, [row["note"], f"{', '.join(flagged)}: judged anyway "
                                                                             "(--allow-noisy)"]))}
    kept = row["note"] if row["verdict"] == "failed" else ""
    return {"noisy": True, "verdict": "noisy", "regression": False,
            "note": "; ".join(filter(None, [f"{', '.join(flagged)}: not judged", kept]))}


def compare_case(br: pd.Series | None, cr: pd.Series | None, ctx: Context, seed: int) -> dict[str, Any]:
    """One output row: identity (from the current run, else the baseline), both sides' figures, the verdict."""
    src = cr if cr is not None else br
    row: dict[str, Any] = {col: src[col] for col in IDENTITY}
    bstat = None if br is None else str(br["status"])
    cstat = None if cr is None else str(cr["status"])
    row.update(case_id=src["case_id"], verdict="unchanged", regression=False, ratio=np.nan, ci_low=np.nan,
               ci_high=np.nan, p_value=np.nan,
               base_median_ms=np.nan if br is None else as_float(br["latency_ms_median"]),
               cur_median_ms=np.nan if cr is None else as_float(cr["latency_ms_median"]),
               base_n=pd.NA if br is None else br["n"], cur_n=pd.NA if cr is None else cr["n"],
               base_status=bstat, cur_status=cstat, scale=1.0, basis="", note="", noisy=False)
    if br is None:
        row.update(verdict="new", note="not in baseline")
    elif cr is None:
        row.update(verdict="missing", note="not in current run")
    elif bstat != "ok" or cstat != "ok":
        row.update(_failure(bstat, cstat, cr))
    else:
        row.update(_judge_ok(br, cr, ctx, seed))
    if br is not None and cr is not None:
        row.update(_noise(br, cr, row, ctx.allow_noisy))
    return row
