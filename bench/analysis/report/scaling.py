"""Scaling exponents: the slope of log latency against log pixels per model and device setting, with its SE and
95% CI (Student's t over the fitted sizes), and the band word of the headline table. Apart from `data` so that
data stays one screen of merging; it reads data's merged runs (Merged), and data never imports it back.
Pandas/numpy/scipy in, frames out."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from bench.analysis.report.data import Merged


def fit_exponent(pixels: Any, latency_ms: Any, conf: float = 0.95) -> dict[str, Any]:
    """Least-squares fit of log(latency) = a + k log(pixels): exponent k, its standard error and CI.

    With 2 distinct sizes the fit is exact (no SE); with fewer, no fit.
    """
    x = np.log(np.asarray(pixels, dtype="float64"))
    y = np.log(np.asarray(latency_ms, dtype="float64"))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    out = dict(n_points=n, n_sizes=int(np.unique(x).size), exponent=float("nan"), se=float("nan"),
               ci_low=float("nan"), ci_high=float("nan"), r2=float("nan"))
    if out["n_sizes"] < 2:
        return out
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    k = float(((x - xm) * (y - ym)).sum() / sxx)
    a = ym - k * xm
    resid = y - (a + k * x)
    sst = float(((y - ym) ** 2).sum())
    out["exponent"] = k
    out["r2"] = 1.0 - float((resid ** 2).sum()) / sst if sst > 0 else 1.0
    if n > 2:
        s2 = float((resid ** 2).sum()) / (n - 2)
        se = math.sqrt(s2 / sxx)
        t = float(st.t.ppf(0.5 + conf / 2, n - 2))
        out.update(se=se, ci_low=k - t * se, ci_high=k + t * se)
    return out


def exponent_word(k: float) -> str:
    """A reading of a scaling exponent for the headline table."""
    if not np.isfinite(k):
        return ""
    if k < 0.8:
        return "sub-linear (fixed costs dominate)"
    if k < 1.3:
        return "near linear"
    if k < 1.7:
        return "between linear and quadratic"
    return "near quadratic"


def scaling_exponents(m: Merged) -> tuple[pd.DataFrame, list[str]]:
    """The exponent of latency in pixels per setting and model; notes name the models measured at one size only."""
    cols = ["config", "device_name", "mobile_proxy", "model", "variant", "level", "n_points", "n_sizes",
            "resolutions", "exponent", "se", "ci_low", "ci_high", "r2", "reading"]
    notes: list[str] = []
    ok = m.ok
    if not len(ok):
        return pd.DataFrame(columns=cols), ["no ok measurements: scaling exponents not available"]
    rows = []
    single: dict[str, list[str]] = {}
    for (config, model), g in ok.groupby(["config", "model"], sort=True):
        f = fit_exponent(g["pixels"], g["latency_ms_median"])
        res = ", ".join(r for r in g.sort_values("pixels")["resolution"].drop_duplicates())
        if f["n_sizes"] < 2:
            single.setdefault(f"{config} ({res})", []).append(str(model))
            continue
        first = g.iloc[0]
        rows.append(dict(config=config, device_name=first["device_name"], mobile_proxy=bool(first["mobile_proxy"]),
                         model=model, variant=first["variant"], level=first["level"], resolutions=res,
                         reading=exponent_word(f["exponent"]), **f))
    for where, models in single.items():
        names = ", ".join(models[:6]) + (f" and {len(models) - 6} more" if len(models) > 6 else "")
        notes.append(f"one resolution only on {where}: no scaling exponent for {names}")
    return pd.DataFrame(rows, columns=cols), notes
