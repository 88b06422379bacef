"""The figures of "Where the time goes" (issue 13): time share by op kind per case, time share against MAC share,
and the measured roofline per device setting. Each returns (figure, caption note), or why it cannot be drawn.

Encoding, the same in all three: colour = op kind, one fixed colour per kind of bench.profiling.opkinds.OP_KINDS
(convolutions blue, depthwise convs yellow to red by kernel, matmul/attention/softmax greens, the rest muted),
so a kind reads the same in every figure and every report; marker = token mixer in the scatter and the roofline.
"""
from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from bench.analysis.report import plot_kit as kit
from bench.analysis.report.profile_data import KEY, ordered_kinds
from bench.profiling.opkinds import OP_KINDS, is_depthwise, kind_order

MAX_BAR_CASES = 24
ANNOTATE = 3  # kinds named beside their point in each scatter panel: the furthest above the diagonal
_REST = {"matmul": "#1b9e3a", "attention": "#0b5d1e", "softmax": "#8fd18f", "norm": "#9467bd",
         "elementwise": "#e377c2", "resize": "#bcbd22", "layout": "#8c8c8c", "reduction": "#17becf",
         "conv-unknown": "#c7c7c7", "framework": "#d9d9d9", "other": "#4d4d4d"}


def _table_colors() -> dict[str, Any]:
    """The fixed colour of every kind in OP_KINDS."""
    conv = [k for k in OP_KINDS if k.startswith("conv-") and k != "conv-unknown"]
    dw = [k for k in OP_KINDS if is_depthwise(k)]
    blues, reds = matplotlib.colormaps["Blues"], matplotlib.colormaps["YlOrRd"]
    out: dict[str, Any] = {k: blues(0.9 - 0.25 * i) for i, k in enumerate(conv)}
    out.update({k: reds(0.25 + 0.7 * i / max(1, len(dw) - 1)) for i, k in enumerate(dw)})
    out.update(_REST)
    return out


TABLE_COLORS = _table_colors()


def kind_colors(kinds: list[str]) -> dict[str, Any]:
    """Op kind -> colour for these kinds, in kind order: the table's kinds their fixed colour, other depthwise
    sizes (dw9, dw3x5) shades of purple by kernel order, anything else a grey."""
    extra = [k for k in sorted(set(kinds), key=kind_order) if k not in TABLE_COLORS]
    purples = matplotlib.colormaps["RdPu"]
    out = {}
    for k in sorted(set(kinds), key=kind_order):
        if k in TABLE_COLORS:
            out[k] = TABLE_COLORS[k]
        else:
            out[k] = purples(0.45 + 0.5 * extra.index(k) / max(1, len(extra) - 1)) if is_depthwise(k) else "0.55"
    return out


def mixer_markers(variants: Any) -> dict[str, tuple[str, str]]:
    """Token mixer -> (marker, no line), the known mixers first in the zoo's order."""
    vals = list(dict.fromkeys(str(v) for v in variants))
    order = [v for v in kit.VARIANT_ORDER if v in vals] + sorted(v for v in vals if v not in kit.VARIANT_ORDER)
    return {v: (kit.MARKERS[i % len(kit.MARKERS)], "none") for i, v in enumerate(order)}


def _kind_legend(fig: Any, colors: dict, markers: dict | None = None, extra: list | None = None) -> None:
    """The figure's one legend in the right margin (as kit.legend): op kinds, then mixers' markers, then extras."""
    items = [Line2D([], [], color="none", label="op kind")]
    items += [Line2D([], [], color=c, lw=6, label=kit.plain(k)) for k, c in colors.items()]
    if markers:
        items += [Line2D([], [], color="none", label=" "), Line2D([], [], color="none", label="token mixer")]
        items += [Line2D([], [], color="0.3", marker=mk, ls="none", ms=5, label=kit.plain(v))
                  for v, (mk, _) in markers.items()]
    for label, kw in extra or []:
        items.append(Line2D([], [], label=kit.plain(label), **kw))
    fw = fig.get_figwidth()
    leg = fig.legend(handles=items, loc="upper left", bbox_to_anchor=(1 - (kit.LEGEND_W - 0.15) / fw, 0.97),
                     frameon=False, handlelength=1.6, fontsize=6.5)
    for t, h in zip(leg.get_texts(), items):
        if h.get_color() == "none":
            t.set_fontweight("bold")


def _legend_height(n_items: int) -> float:
    """Inches the legend column needs (the figure is made at least this tall)."""
    return 0.17 * n_items + 0.4


def time_share_bars(k: pd.DataFrame) -> kit.Drawn:
    """One stacked horizontal bar per case (model x resolution), one panel per setting: the share of the time
    in each op kind."""
    if not len(k) or not np.isfinite(k["time_share"]).any():
        return "no op-kind time shares in the profiles"
    d, facets, cut = kit.facets(k)
    colors = kind_colors(ordered_kinds(d))
    every = {f: d[d["config"] == f].drop_duplicates(KEY)[[*KEY, "case", "megapixels", "model"]]
             .sort_values(["model", "megapixels"]) for f in facets}
    more = sum(max(0, len(c) - MAX_BAR_CASES) for c in every.values())
    per = {f: c.iloc[:MAX_BAR_CASES] for f, c in every.items()}
    n = max(len(c) for c in per.values())
    left = max(len(str(c)) for cs in per.values() for c in cs["case"]) * 0.055 + 0.3
    fig, axes = kit.panels(len(facets), panel_h=max(1.2, 0.26 * n + 0.4, _legend_height(len(colors)) / 1.5),
                           panel_w=4.2, ncol_max=2, left=left, wgap=left + 0.25)
    for ax, f in zip(axes, facets):
        sub, cs = d[d["config"] == f], per[f].iloc[::-1]
        for y, (run_id, case_id) in enumerate(zip(cs["run_id"], cs["case_id"])):
            rows = sub[(sub["run_id"] == run_id) & (sub["case_id"] == case_id)]
            start = 0.0
            for kind in colors:
                share = float(rows.loc[rows["op_kind"] == kind, "time_share"].fillna(0).sum())
                if share > 0:
                    ax.barh(y, share, left=start, color=colors[kind], height=0.7, edgecolor="white", linewidth=0.3)
                    start += share
        ax.set_yticks(range(len(cs)), [kit.plain(c) for c in cs["case"]], fontsize=6.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the profiled time")
        kit.titled(ax, f, kit.is_mobile(d, f))
    _kind_legend(fig, colors)
    return fig, cut + (f" ({more} more cases not plotted: see the tables)" if more else "")


def _annotate(ax: Axes, sub: pd.DataFrame) -> None:
    """The kinds furthest above the diagonal, named beside their points."""
    above = sub.assign(gap=sub["time_share"] - sub["mac_share"])
    for r in above[above["gap"] > 0].nlargest(ANNOTATE, "gap").to_dict("records"):
        ax.annotate(kit.plain(r["op_kind"]), (r["mac_share"], r["time_share"]), xytext=(4, 2),
                    textcoords="offset points", fontsize=6, color="0.2")


def share_scatter(k: pd.DataFrame) -> kit.Drawn:
    """Time share against MAC share per op kind, one panel per token mixer (every profiled case of it a set of
    points); above the diagonal a kind takes more of the time than its share of the work."""
    d = k[np.isfinite(k["time_share"]) & np.isfinite(k["mac_share"])] if len(k) else k
    d = d[d["macs"].fillna(0) > 0] if len(d) else d
    if not len(d):
        return "no op kind with MACs in the profiles (no MAC shares to set time against)"
    d, facets, cut = kit.facets(d, col="variant")
    colors, markers = kind_colors(ordered_kinds(d)), mixer_markers(d["variant"])
    fig, axes = kit.panels(len(facets), panel_w=3.2, panel_h=max(3.0, _legend_height(len(colors) + len(markers))))
    for ax, f in zip(axes, facets):
        sub = d[d["variant"] == f]
        for kind, g in sub.groupby("op_kind", sort=False):
            ax.scatter(g["mac_share"], g["time_share"], color=colors.get(kind, "0.5"), marker=markers[f][0], s=24,
                       edgecolor="0.2", linewidth=0.3, zorder=3)
        top = max(0.05, float(sub[["mac_share", "time_share"]].max().max()) * 1.1)
        ax.plot([0, top], [0, top], color="0.3", lw=0.9, ls=":", zorder=1)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        _annotate(ax, sub)
        ax.set_xlabel("share of the MACs")
        ax.set_ylabel("share of the time")
        ax.set_title(kit.wrap(f"mixer {f}"), fontsize=8)
    _kind_legend(fig, colors, markers, extra=[("time = MAC share", dict(color="0.3", ls=":"))])
    return fig, cut.replace("settings", "mixers")


def _roof(ax: Axes, sub: pd.DataFrame, xs: np.ndarray) -> bool:
    """min(peak, bandwidth x intensity) from the setting's rows; False when they give no calibrated roof."""
    peak = pd.to_numeric(sub["peak_gmacs_per_s"], errors="coerce").dropna()
    bw = pd.to_numeric(sub["bandwidth_gb_per_s"], errors="coerce").dropna()
    peak, bw = peak[peak > 0], bw[bw > 0]
    if not len(peak) or not len(bw):
        return False
    p, b = float(peak.median()), float(bw.median())
    lo, hi = min(float(xs.min()) / 2, p / b / 4), max(float(xs.max()) * 2, p / b * 4)
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(p, b * x), color="0.15", lw=1.3, zorder=2)
    ax.annotate(f"peak {p:,.3g} GMAC/s", (hi, p), xytext=(-2, 3), textcoords="offset points", ha="right",
                va="bottom", fontsize=6.5, color="0.15")
    ax.annotate(f"{b:,.3g} GB/s", (lo, b * lo), xytext=(2, 4), textcoords="offset points", ha="left",
                va="bottom", fontsize=6.5, color="0.15")
    return True


def roofline(k: pd.DataFrame) -> kit.Drawn:
    """Achieved GMAC/s against arithmetic intensity, log-log, one panel per device setting (device, precision,
    threads), each op kind of each case a point; the measured roof where the setting was calibrated."""
    d = k.copy() if len(k) else k
    if len(d):
        for col in ("intensity_macs_per_byte", "gmacs_per_s"):
            d[col] = pd.to_numeric(d[col], errors="coerce")
        d = d[(d["intensity_macs_per_byte"] > 0) & (d["gmacs_per_s"] > 0)]
    if not len(d):
        return "no op kind with both MACs and bytes counted (no intensity or achieved rate to place)"
    d, facets, cut = kit.facets(d, col="roof")
    colors, markers = kind_colors(ordered_kinds(d)), mixer_markers(d["variant"])
    fig, axes = kit.panels(len(facets), panel_h=max(kit.PANEL_H, _legend_height(len(colors) + len(markers))))
    no_roof = []
    for ax, f in zip(axes, facets):
        sub = d[d["roof"] == f]
        for (kind, variant), g in sub.groupby(["op_kind", "variant"], sort=False):
            ax.scatter(g["intensity_macs_per_byte"], g["gmacs_per_s"], color=colors.get(kind, "0.5"),
                       marker=markers[str(variant)][0], s=22, edgecolor="0.2", linewidth=0.3, zorder=3)
        if not _roof(ax, sub, sub["intensity_macs_per_byte"].to_numpy(float)):
            no_roof.append(f)
        kit.log_axes(ax)
        ax.set_xlabel("arithmetic intensity, MACs/byte (log)")
        ax.set_ylabel("achieved GMAC/s (log)")
        ax.set_title(kit.wrap(f), fontsize=8)
    _kind_legend(fig, colors, markers, extra=[("measured roof", dict(color="0.15", lw=1.3))])
    note = (f" No roof drawn for {', '.join(no_roof)}: its rows carry no calibrated peak and bandwidth "
            "(peak_gmacs_per_s, bandwidth_gb_per_s), so only the points are shown.") if no_roof else ""
    return fig, cut + note

