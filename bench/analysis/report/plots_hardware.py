"""Figures of how the models use the hardware: achieved GMAC/s against the device's peak, MACs against latency
(whether MACs predict it is computed per setting, readings.macs_reading), and the distribution of the raw samples.
Each returns (figure, caption note), or why it cannot be drawn from these runs."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter

from bench.analysis.report import plot_kit as kit
from bench.analysis.report import readings
from bench.analysis.report.data import Merged

MAX_DIST_CASES = 14


def _peak_axis(ax: Axes, sub: pd.DataFrame) -> None:
    """The device's measured matmul peak as a dashed line, and a right axis in fractions of it."""
    peak = pd.to_numeric(sub["device_peak_gmacs_per_s"], errors="coerce").dropna()
    if not len(peak):
        return
    p = float(peak.median())
    lo = float(sub["gmacs_per_s"][sub["gmacs_per_s"] > 0].min())
    ax.set_ylim(min(lo, p) / 2, max(p, float(sub["gmacs_per_s"].max())) * 2)
    ax.axhline(p, color="0.2", lw=1, ls="--")
    ax.text(0.02, p, f" measured peak {p:,.0f} GMAC/s", transform=ax.get_yaxis_transform(), va="bottom", fontsize=7,
            color="0.2")
    sec = ax.secondary_yaxis("right", functions=(lambda v, p=p: v / p, lambda v, p=p: v * p))
    sec.set_yscale("log")
    sec.yaxis.set_minor_formatter(NullFormatter())
    sec.set_ylabel("fraction of device peak (log)", fontsize=7)
    sec.tick_params(labelsize=7)


def efficiency(m: Merged) -> kit.Drawn:
    ok = m.ok
    if not len(ok) or not ok["gmacs_per_s"].notna().any():
        return "no achieved GMAC/s (MACs or latency missing)"
    d = ok[ok["gmacs_per_s"].notna()]
    multi = kit.multi_point(d, ["config", "model"], "pixels")
    d, facets, cut = kit.facets(multi if len(multi) else d)
    has_frac = d["frac_of_peak"].notna().any()
    colors, styles = kit.variant_colors(d["variant"]), kit.model_styles(d["base"])
    fig, axes = kit.panels(len(facets), wgap=1.45 if has_frac else 0.75, right_extra=0.7 if has_frac else 0.0)
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        kit.series(ax, sub, "megapixels", "gmacs_per_s", None, None, colors, styles)
        kit.log_axes(ax)
        kit.resolution_ticks(ax, sub)
        _peak_axis(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("achieved GMAC/s (log)")
        kit.titled(ax, f, kit.is_mobile(d, f))
    kit.legend(fig, colors, styles, extra=[("measured device peak", dict(color="0.2", ls="--"))])
    note = "" if has_frac else " (no device peak calibration recorded: fraction of peak not available)"
    return fig, cut + note


def _macs_panel(ax: Axes, sub: pd.DataFrame, colors: dict, markers: dict) -> str:
    """One setting's cloud, each point labelled with its resolution; returns the setting's computed reading,
    which is also drawn in the panel."""
    for variant, s in sub.groupby("variant", sort=True):
        ax.scatter(s["gmacs"], s["latency_ms_median"], color=colors.get(variant, "0.4"),
                   marker=markers.get(variant, "o"), s=22, alpha=0.9, edgecolor="white", linewidth=0.4)
    for r in sub.itertuples():
        ax.annotate(kit.plain(str(r.resolution).replace("x", "×")), (r.gmacs, r.latency_ms_median),
                    xytext=(3, 2), textcoords="offset points", fontsize=5, color="0.35")
    fit = readings.macs_fit(sub["gmacs"], sub["latency_ms_median"])
    if np.isfinite(fit["r2"]):
        ax.text(0.02, 0.98, f"log-log R² {fit['r2']:.2f}, n {fit['n']}", transform=ax.transAxes, va="top",
                fontsize=7, color="0.2")
    return readings.macs_reading(fit)


def macs_vs_latency(m: Merged) -> kit.Drawn:
    ok = m.ok
    d = ok[ok["macs"].notna() & (ok["macs"].astype("float64") > 0)] if len(ok) else ok
    if not len(d):
        return "no MACs recorded"
    d = d.copy()
    d["gmacs"] = d["macs"].astype("float64") / 1e9
    big = d[d.groupby("config")["model"].transform("size") >= 3]  # settings with a cloud, not 2 points
    d, facets, cut = kit.facets(big if len(big) else d)
    colors, markers = kit.variant_colors(d["variant"]), kit.variant_markers(d["variant"])
    fig, axes = kit.panels(len(facets))
    said = []
    for ax, f in zip(axes, facets):
        said.append(f"{f}: {_macs_panel(ax, d[d['config'] == f], colors, markers)}")
        kit.log_axes(ax)
        ax.set_xlabel("GMACs per batch (log)")
        ax.set_ylabel("median latency, ms (log)")
        kit.titled(ax, f, kit.is_mobile(d, f))
    kit.legend(fig, colors, {})
    return fig, cut + " Per setting, " + "; ".join(said) + "."


def _ok_samples(m: Merged) -> tuple[pd.DataFrame, str] | str:
    """The samples of ok cases with a `case` label; settings with 1-2 cases (batch sweeps) are left out where
    others have more, since they add panels and little else."""
    s = m.samples
    if not len(s):
        return "no raw samples (samples.parquet missing or empty)"
    s = s[s["status"] == "ok"] if "status" in s else s
    if not len(s):
        return "no raw samples of ok cases"
    s = s.assign(case=s["model"].astype(str) + " @ " + s["resolution"].astype(str))
    ncase = s.groupby("config")["case"].transform("nunique")
    small = int(s.loc[ncase < 3, "config"].nunique()) if (ncase >= 3).any() else 0
    if not small:
        return s, ""
    return s[ncase >= 3], f" ({small} settings with fewer than 3 cases not plotted)"


def _boxes(ax: Axes, sub: pd.DataFrame, cases: pd.DataFrame, colors: dict) -> None:
    """Horizontal boxes of each case's samples relative to its median, largest resolution on top."""
    cases = cases.iloc[::-1]
    data = [x / np.median(x) for x in (sub.loc[sub["case"] == c, "latency_ms"].to_numpy(dtype=float)
                                       for c in cases["case"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(whis=(1, 99), widths=0.6, patch_artist=True, medianprops=dict(color="0.1"),
                  flierprops=dict(marker=".", ms=2.5, alpha=0.6))
        try:
            bp = ax.boxplot(data, orientation="horizontal", **kw)  # matplotlib >= 3.10
        except TypeError:
            bp = ax.boxplot(data, vert=False, **kw)
    for patch, v in zip(bp["boxes"], cases["variant"]):
        patch.set_facecolor(colors.get(v, "0.7"))
        patch.set_alpha(0.75)
    labels = [f"{c} (n {len(x)})" for c, x in zip(cases["case"], data)]
    ax.set_yticks(range(1, len(cases) + 1), [kit.plain(c) for c in labels], fontsize=6.5)


def latency_distributions(m: Merged) -> kit.Drawn:
    got = _ok_samples(m)
    if isinstance(got, str):
        return got
    s, note = got
    s, facets, cut = kit.facets(s)
    colors = kit.variant_colors(s["variant"])
    per = {f: (s.loc[s["config"] == f, ["case", "megapixels", "model", "variant"]].drop_duplicates("case")
               .sort_values(["megapixels", "model"], ascending=[False, True])) for f in facets}
    more = sum(max(0, len(c) - MAX_DIST_CASES) for c in per.values())
    per = {f: c.iloc[:MAX_DIST_CASES] for f, c in per.items()}
    ncases = max(len(c) for c in per.values())
    width = max(len(str(c)) + 8 for cs in per.values() for c in cs["case"]) * 0.055 + 0.3  # + " (n 300)"
    fig, axes = kit.panels(len(facets), legend=True, panel_h=max(1.6, 0.2 * ncases + 0.5), panel_w=4.0,
                           ncol_max=2, left=width, wgap=width + 0.2)
    for ax, f in zip(axes, facets):
        _boxes(ax, s[s["config"] == f], per[f], colors)
        ax.axvline(1.0, color="0.3", lw=0.8, ls=":")
        ax.set_xlabel("latency / case median (whiskers p1–p99)")
        kit.titled(ax, f, kit.is_mobile(s, f))
    kit.legend(fig, colors, {})
    more_note = f" ({more} more cases not plotted: the largest resolutions are shown)" if more else ""
    return fig, cut + note + more_note
