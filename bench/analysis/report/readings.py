"""The sentences a figure's caption reads off its data: computed, with their numbers and uncertainty, so that each
one can come out either way (issue 14: nothing that the data did not say).

Rules (documented in the report's methodology through RULES):
- scaling exponent k (log latency on log pixels, scaling.fit_exponent): a band word (sub-linear < 0.8 <= near linear
  < 1.3 <= between linear and quadratic < 1.7 <= near quadratic) only when the fit has a 95% CI (3 or more sizes),
  R^2 >= MIN_R2, the CI is at most MAX_CI_WIDTH wide and lies inside one band; otherwise "inconclusive" with why.
- MACs vs latency, per device setting over its ok cases: log-log least squares of latency on MACs and Spearman's
  rank correlation. "predict latency well" when R^2 >= GOOD_R2 and the slope is positive, "do not predict" when
  R^2 < POOR_R2 or the slope is not positive, "only roughly" between; fewer than MIN_POINTS cases: no reading.
- a speedup is a win (or a loss) only when its CI lies entirely above (below) 1 and neither side is flagged; a
  ratio without a CI (one sample or one process, no bootstrap and no bounds) is "no CI", a side with fewer than
  MIN_N samples "few samples", a side measured on a busy machine "busy machine": never a win, never counted as
  one in a caption.
- every interval is labelled with the confidence it reaches (data.ci_level, data.ratio_level) where that is not
  95%; a caption says how many plotted intervals fall short of it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from bench.analysis.report.data import ci_level
from bench.analysis.report.scaling import fit_exponent

MIN_N = 6  # below this many samples the CI of the median covers less than its level (bench.schema ci_level)
MIN_R2 = 0.8
MAX_CI_WIDTH = 1.0
BANDS = ((0.8, "sub-linear"), (1.3, "near linear"), (1.7, "between linear and quadratic"),
         (math.inf, "near quadratic"))
GOOD_R2, POOR_R2, MIN_POINTS = 0.9, 0.6, 5
RULES = (f"A scaling exponent is read as a band (sub-linear below 0.8, near linear to 1.3, between linear and "
         f"quadratic to 1.7, near quadratic above) only when its 95% CI lies inside that band, is at most "
         f"{MAX_CI_WIDTH:g} wide and R² ≥ {MIN_R2:g} (3 or more sizes); otherwise it is inconclusive. MACs predict "
         f"latency well when the log-log fit of latency on MACs over a setting's ok cases has R² ≥ {GOOD_R2:g} "
         f"with a positive slope, do not when R² < {POOR_R2:g}, roughly in between; fewer than {MIN_POINTS} cases "
         f"give no reading. A speedup is a win or a loss only when its CI excludes 1; a ratio with no CI, a side "
         f"with fewer than {MIN_N} samples or a side measured on a busy machine is neither, and a caption does not "
         f"count it as a verdict. Every interval is shown with the confidence it reaches where that is not 95% (a "
         f"median's CI from fewer than {MIN_N} samples is (min, max), which covers less; one sample has no CI); a "
         f"ratio bounded by two CIs covers at least the product of their levels (≥). In the decision table a pair "
         f"of mixers measured in the same processes (interleaved) is decided by its paired interval over processes "
         f"at the confidence the sequential rule reached: faster when it lies above 1 + the tie margin, tied when "
         f"it lies within it, else not resolved; a pair measured on a busy machine is flagged, never a win.")


def _band(k: float) -> str:
    return next(word for top, word in BANDS if k < top)


def _num(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}"


def exponent_reading(fit: dict[str, Any]) -> str:
    """A fit of scaling.fit_exponent read by the rule above: the band word, or 'inconclusive (why)'."""
    k, lo, hi, r2 = (float(fit.get(c, math.nan)) for c in ("exponent", "ci_low", "ci_high", "r2"))
    if not math.isfinite(k):
        return "no fit"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"inconclusive ({int(fit.get('n_sizes', 0))} sizes: no CI)"
    if math.isfinite(r2) and r2 < MIN_R2:
        return f"inconclusive (R² {_num(r2)})"
    if hi - lo > MAX_CI_WIDTH:
        return f"inconclusive (95% CI [{_num(lo)}, {_num(hi)}] wider than {MAX_CI_WIDTH:g})"
    if _band(lo) != _band(hi):
        edge = next(top for top, _ in BANDS if lo < top)
        return f"inconclusive (95% CI [{_num(lo)}, {_num(hi)}] crosses {edge:g})"
    return _band(k)


def _group_text(name: str, fits: list[dict[str, Any]]) -> str:
    """'msla: 1.02 [0.98, 1.06] near linear' for one model; 'msla (3 models): k 0.95 to 1.01; 3 near linear'."""
    words = [exponent_reading(f) for f in fits]
    ks = [f["exponent"] for f in fits]
    if len(fits) == 1:
        f = fits[0]
        ci = f" [{_num(f['ci_low'])}, {_num(f['ci_high'])}]" if math.isfinite(f["ci_low"]) else ""
        return f"{name}: k {_num(f['exponent'])}{ci}, {words[0]}"
    counts = pd.Series([w.split(" (")[0] for w in words]).value_counts()
    span = f"k {_num(min(ks))}" if min(ks) == max(ks) else f"k {_num(min(ks))} to {_num(max(ks))}"
    return f"{name} ({len(fits)} models): {span}; " + ", ".join(f"{n} {w}" for w, n in counts.items())


def scaling_note(d: pd.DataFrame, settings: list[str]) -> str:
    """The caption's reading of latency vs resolution: per setting and mixer, the fitted exponents and how many
    of them read as each band (or inconclusive)."""
    parts = []
    for config in settings:
        sub = d[d["config"] == config]
        groups: dict[str, list[dict[str, Any]]] = {}
        for (variant, _model), g in sub.groupby(["variant", "model"], sort=True):
            f = fit_exponent(g["pixels"], g["latency_ms_median"])
            if f["n_sizes"] >= 2:
                groups.setdefault(str(variant), []).append(f)
        if groups:
            parts.append(f"{config}: " + "; ".join(_group_text(v, fs) for v, fs in groups.items()))
    if not parts:
        return ""
    return (" Fitted exponent k of latency in pixels (95% CI; reading rule in the methodology): "
            + " | ".join(parts) + ".")


def macs_fit(macs: Any, latency_ms: Any) -> dict[str, Any]:
    """Log-log least squares of latency on MACs (slope, R^2) and Spearman's rank correlation, over finite
    positive pairs."""
    x, y = np.asarray(macs, dtype="float64"), np.asarray(latency_ms, dtype="float64")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    f = fit_exponent(x, y)
    rho = float(st.spearmanr(x, y)[0]) if x.size >= 3 and np.unique(x).size > 1 and np.unique(y).size > 1 \
        else math.nan
    return dict(n=int(x.size), slope=f["exponent"], r2=f["r2"], rho=rho)


def macs_reading(fit: dict[str, Any]) -> str:
    """'MACs predict latency well (log-log R² 0.97, Spearman ρ 0.98, n 36 cases)' or the other readings."""
    n, slope, r2, rho = fit["n"], fit["slope"], fit["r2"], fit["rho"]
    if n < MIN_POINTS or not math.isfinite(r2):
        return f"too few cases to say whether MACs predict latency (n {n})"
    nums = f"log-log R² {_num(r2)}, Spearman ρ {_num(rho) if math.isfinite(rho) else 'n/a'}, n {n} cases"
    if slope <= 0 or r2 < POOR_R2:
        return f"MACs do not predict latency ({nums})"
    if r2 >= GOOD_R2:
        return f"MACs predict latency well ({nums})"
    return f"MACs predict latency only roughly ({nums})"


def speedup_verdict(speedup: float, lo: float, hi: float, n_min: float | None = None, noisy: bool = False) -> str:
    """'win', 'loss', 'tie' (the CI spans 1), 'no CI', 'few samples' (a side with fewer than MIN_N samples,
    `n_min`) or 'busy machine' (`noisy`: a side measured while the machine was busy): a ratio is a win only when
    its CI lies above 1, rests on enough samples and was measured on a quiet machine."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or not math.isfinite(speedup):
        return "no CI"
    if n_min is not None and not n_min >= MIN_N:
        return "few samples"
    if not pd.isna(noisy) and bool(noisy):
        return "busy machine"
    return "win" if lo > 1 else "loss" if hi < 1 else "tie"


def level_note(d: pd.DataFrame) -> str:
    """How many plotted medians have a CI below 95% (fewer than MIN_N samples: (min, max)) or none (one sample),
    read off their rows (data.ci_level); '' when every one reaches 95%."""
    if not len(d):
        return ""
    levels = [ci_level(r) for r in d.to_dict("records")]
    n = pd.to_numeric(d["n"], errors="coerce") if "n" in d.columns else pd.Series(math.nan, index=d.index)
    single = int((n <= 1).sum())
    short = sum(1 for x, k in zip(levels, n) if not k <= 1 and not (math.isfinite(x) and x >= 0.95 - 5e-4))
    parts = ([f"{short} plotted point(s) have a CI below 95% or of unrecorded level (fewer than {MIN_N} samples: "
              f"(min, max); or too few processes; the level is in the case table)"] if short else []) + \
        ([f"{single} point(s) rest on one sample: no CI, no bar"] if single else [])
    return (" " + "; ".join(parts) + ".") if parts else ""


def speedup_note(sp: pd.DataFrame) -> str:
    """Per baseline, how many matched points msla is faster, slower, or not told apart (CI spans 1 or is
    missing)."""
    parts = []
    for baseline, g in sp.groupby("baseline", sort=True):
        noisy = g["noisy"] if "noisy" in g.columns else pd.Series(False, index=g.index)
        v = pd.Series([speedup_verdict(s, lo, hi, n, bool(b)) for s, lo, hi, n, b in
                       zip(g["speedup"], g["ci_low"], g["ci_high"], g["n_min"], noisy.fillna(False))])
        c = v.value_counts()
        parts.append(f"vs {baseline}: msla faster at {int(c.get('win', 0))} of {len(v)} points (CI above 1), "
                     f"slower at {int(c.get('loss', 0))} (CI below 1), not told apart at {int(c.get('tie', 0))} "
                     f"(CI spans 1)" + (f", no CI at {int(c['no CI'])}" if c.get("no CI") else "")
                     + (f", fewer than {MIN_N} samples at {int(c['few samples'])}" if c.get("few samples") else "")
                     + (f", a side measured on a busy machine at {int(c['busy machine'])} (no verdict)"
                        if c.get("busy machine") else ""))
    return (" Read off the plotted points: " + "; ".join(parts) + ".") if parts else ""
