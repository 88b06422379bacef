"""The verdict of one case in a comparison of two runs: the ratio of medians, its CI, a p-value and the verdict.

The rule itself (and why a change must be both large and significant) is stated in `bench.analysis.compare`, which
matches the cases of the two runs and calls `compare_case` for each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bench.cases import IDENTITY
from bench.stats import mann_whitney_p, process_welch_p, ratio_ci

REGRESSION_STATUSES = ("oom", "timeout", "error")


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


class _Estimate(NamedTuple):
    ratio: float
    lo: float
    hi: float
    p: float  # NaN on the summary basis: the CI alone decides
    basis: str
    medians: dict[str, float]  # base_median_ms / cur_median_ms where the basis recomputes them
    notes: list[str]


def _judge(r: float, lo: float, hi: float, p: float, threshold: float, alpha: float) -> str:
    sig_p = True if math.isnan(p) else p < alpha  # no p-value (summary basis): the CI alone decides
    if r > 1 + threshold and sig_p and lo > 1:
        return "slower"
    if r < 1 / (1 + threshold) and sig_p and hi < 1:
        return "faster"
    return "unchanged"


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
                     {"base_median_ms": float(np.median(a)), "cur_median_ms": float(np.median(x))}, [])


def _from_summary(br: pd.Series, cr: pd.Series, scale: float) -> _Estimate:
    """Without raw samples on a side: the conservative interval from the two medians' 95% CIs, no p-value."""
    bmed, cmed = as_float(br["latency_ms_median"]), as_float(cr["latency_ms_median"]) * scale
    r = cmed / bmed if bmed > 0 else np.nan
    blo, bhi = as_float(br["latency_ms_ci_low"]), as_float(br["latency_ms_ci_high"])
    clo, chi = as_float(cr["latency_ms_ci_low"]) * scale, as_float(cr["latency_ms_ci_high"]) * scale
    lo = clo / bhi if bhi > 0 else np.nan
    hi = chi / blo if blo > 0 else np.nan
    if math.isnan(lo) or math.isnan(hi):
        lo, hi, note = r, r, "no samples or CI: point ratio only"
    else:
        note = "no raw samples: 95% CIs of medians"
    return _Estimate(r, lo, hi, np.nan, "summary", {"cur_median_ms": cmed}, [note])


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
    else:
        v = _judge(est.ratio, est.lo, est.hi, est.p, ctx.threshold, ctx.alpha)
        out.update(verdict=v, regression=v == "slower")
        if v == "unchanged" and abs(math.log(est.ratio)) > math.log1p(ctx.threshold):
            notes.append("beyond threshold but not significant")
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
               base_status=bstat, cur_status=cstat, scale=1.0, basis="", note="")
    if br is None:
        row.update(verdict="new", note="not in baseline")
    elif cr is None:
        row.update(verdict="missing", note="not in current run")
    elif bstat != "ok" or cstat != "ok":
        row.update(_failure(bstat, cstat, cr))
    else:
        row.update(_judge_ok(br, cr, ctx, seed))
    return row
