"""Figures of how the models scale: latency, memory and the msla speedup against image size, and throughput
against batch size. Each returns (figure, caption note), or why it cannot be drawn from these runs; the caption
note carries the readings computed from the plotted data (readings), never a conclusion typed in."""
from __future__ import annotations

import pandas as pd
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from bench.analysis.report import plot_kit as kit
from bench.analysis.report import readings
from bench.analysis.report.data import Merged
from bench.cases import setting_label


def _vs_resolution(d: pd.DataFrame, y: str, lo: str | None, hi: str | None, ylabel: str,
                   reading: bool = False) -> kit.Drawn:
    """One panel per setting: y against image size, log-log, one line per model; `reading` adds the fitted
    scaling exponents of the plotted settings to the caption note."""
    d, facets, cut = kit.facets(d)
    colors, styles = kit.variant_colors(d["variant"]), kit.model_styles(d["base"])
    fig, axes = kit.panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        kit.series(ax, sub, "megapixels", y, lo, hi, colors, styles)
        kit.log_axes(ax)
        kit.resolution_ticks(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel(ylabel)
        kit.titled(ax, f, kit.is_mobile(d, f))
    kit.legend(fig, colors, styles)
    return fig, cut + (readings.scaling_note(d, facets) if reading else "")


def latency_vs_resolution(m: Merged) -> kit.Drawn:
    if not len(m.ok):
        return "no ok measurements"
    d = kit.multi_point(m.ok, ["config", "model"], "pixels")
    if not len(d):
        return "every model was measured at a single resolution: no scaling to plot"
    fig, note = _vs_resolution(d, "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high",
                               "median latency, ms (log)", reading=True)
    return fig, note + readings.level_note(d)


def peak_memory(m: Merged) -> kit.Drawn:
    ok = m.ok
    if not len(ok) or "peak_mem_mb" not in ok or not ok["peak_mem_mb"].notna().any():
        return "no peak-memory measurements"
    d = ok[ok["peak_mem_mb"].notna() & (ok["peak_mem_mb"] > 0)]
    if not len(d):
        return "no positive peak-memory measurements"
    d = kit.multi_point(d, ["config", "model"], "pixels")
    if not len(d):
        return "every model was measured at a single resolution: no memory scaling to plot"
    return _vs_resolution(d, "peak_mem_mb", None, None, "peak memory, MB (log)")


def _ratio_axis(ax, values: pd.Series) -> None:
    """A log y axis for ratios (2x faster and 2x slower are the same distance from 1), ticks labelled 0.5×, 2×."""
    v = pd.to_numeric(values, errors="coerce")
    v = v[v > 0]
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (1.0, 1.0)
    lo, hi = min(lo, 1.0) / 1.25, max(hi, 1.0) * 1.25
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    cand = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 4, 5, 10, 20, 50, 100, 200, 500, 1000]
    ticks = [t for t in cand if lo <= t <= hi]
    if len(ticks) > 7:
        ticks = [t for t in ticks if t in (0.01, 0.1, 0.5, 1, 2, 10, 100, 1000)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])


def _undecided(ax, sub: pd.DataFrame, colors: dict) -> None:
    """Points without a verdict drawn hollow (the CI spans 1 or is missing, a side has few samples or was measured
    on a busy machine): only a CI above 1 from quiet, well-sampled sides reads as msla faster."""
    noisy = sub["noisy"].fillna(False) if "noisy" in sub.columns else pd.Series(False, index=sub.index)
    verdict = [readings.speedup_verdict(s, lo, hi, n, bool(b)) for s, lo, hi, n, b in
               zip(sub["speedup"], sub["ci_low"], sub["ci_high"], sub["n_min"], noisy)]
    u = sub[[v not in ("win", "loss") for v in verdict]]
    markers = kit.variant_markers(u["baseline"])
    for baseline, g in u.groupby("baseline"):
        ax.scatter(g["megapixels"], g["speedup"], s=22, facecolor="white", edgecolor=colors.get(baseline, "0.4"),
                   marker=markers[baseline], linewidth=1.0, zorder=5)


def speedup_plot(sp: pd.DataFrame) -> kit.Drawn:
    if not len(sp):
        return "no msla rows matched with softmax or large-kernel rows"
    d = kit.multi_point(sp, ["config", "base", "baseline"], "megapixels")
    d = d if len(d) else sp
    d, facets, cut = kit.facets(d)
    styles = kit.model_styles(d["base"])
    bl_colors = kit.variant_colors(["softmax", "large-kernel"])
    fig, axes = kit.panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f].copy()
        sub["series"] = sub["base"] + " vs " + sub["baseline"]
        sub["variant"] = sub["baseline"]
        kit.series(ax, sub, "megapixels", "speedup", "ci_low", "ci_high", bl_colors, styles, by="series")
        _undecided(ax, sub, bl_colors)
        ax.axhline(1.0, color="0.25", lw=0.9, ls=":")
        kit.log_axes(ax, y=False)
        _ratio_axis(ax, pd.concat([sub["speedup"], sub["ci_low"], sub["ci_high"]]))
        kit.resolution_ticks(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("msla speedup, × (log)")
        kit.titled(ax, f, kit.is_mobile(d, f))
    kit.legend(fig, {f"vs {k}": v for k, v in bl_colors.items()}, styles, color_title="baseline mixer",
               markers={f"vs {k}": mk for k, mk in kit.variant_markers(bl_colors).items()},
               extra=[("no verdict (see caption)", dict(color="0.3", marker="o", mfc="white", ls="none", ms=5))])
    return fig, cut + readings.speedup_note(d)


def _batch_series(ok: pd.DataFrame) -> pd.DataFrame:
    """Rows with a throughput, one series per model and resolution within a setting that leaves the batch size
    out; only series measured at two or more batch sizes."""
    d = ok[ok["throughput_ips"].notna()].copy()
    d["config"] = [setting_label({**r, "batch": None}, device="device_key") for r in d.to_dict("records")]
    d["series"] = d["model"].astype(str) + " @ " + d["resolution"].astype(str)
    d = kit.multi_point(d, ["config", "series"], "batch")
    return d[d.groupby(["config", "series"])["batch"].transform("nunique") >= 2] if len(d) else d


def throughput_vs_batch(m: Merged) -> kit.Drawn:
    if not len(m.ok) or not m.ok["throughput_ips"].notna().any():
        return "no throughput measurements"
    d = _batch_series(m.ok)
    if not len(d):
        return "every case was measured at a single batch size: throughput vs batch not available"
    d, facets, cut = kit.facets(d)
    colors, styles = kit.variant_colors(d["variant"]), kit.model_styles(d["base"])
    fig, axes = kit.panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        kit.series(ax, sub, "batch", "throughput_ips", None, None, colors, styles, by="series")
        ax.set_xscale("log", base=2)
        b = sorted(sub["batch"].dropna().astype(int).unique())
        ax.set_xticks(b, [str(x) for x in b])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("batch size (log)")
        ax.set_ylabel("throughput, images/s")
        res = ", ".join(sorted(sub["resolution"].unique()))
        ax.set_title(kit.wrap(f) + kit.plain(f"\nat {res}"), fontsize=8)
    kit.legend(fig, colors, styles)
    return fig, cut
