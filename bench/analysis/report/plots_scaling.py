"""Figures of how the models scale: latency, memory and the msla speedup against image size, and throughput
against batch size. Each returns (figure, caption note), or why it cannot be drawn from these runs."""
from __future__ import annotations

import pandas as pd
from matplotlib.ticker import NullLocator

from bench.analysis.report import plotting as kit
from bench.analysis.report.data import Merged
from bench.cases import setting_label


def _vs_resolution(d: pd.DataFrame, y: str, lo: str | None, hi: str | None, ylabel: str) -> kit.Drawn:
    """One panel per setting: y against image size, log-log, one line per model."""
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
    return fig, cut


def latency_vs_resolution(m: Merged) -> kit.Drawn:
    if not len(m.ok):
        return "no ok measurements"
    d = kit.multi_point(m.ok, ["config", "model"], "pixels")
    if not len(d):
        return "every model was measured at a single resolution: no scaling to plot"
    return _vs_resolution(d, "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high",
                          "median latency, ms (log)")


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
        sub["variant"] = sub["baseline"]
        sub["series"] = sub["base"] + " vs " + sub["baseline"]
        kit.series(ax, sub, "megapixels", "speedup", "ci_low", "ci_high", bl_colors, styles, by="series")
        ax.axhline(1.0, color="0.25", lw=0.9, ls=":")
        kit.log_axes(ax, y=False)
        kit.resolution_ticks(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("msla speedup (×)")
        kit.titled(ax, f, kit.is_mobile(d, f))
    kit.legend(fig, {f"vs {k}": v for k, v in bl_colors.items()}, styles, color_title="baseline mixer")
    return fig, cut


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
