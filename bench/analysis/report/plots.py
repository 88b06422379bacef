"""Seaborn-styled figures of the report. Each builder returns (Figure, note), or a reason string when its data are
missing, so a report of a partial run still renders.

Figures are saved as PNG (embedded base64 in the HTML page, so it works offline and as an e-mail attachment) and
as PNG + SVG files in the figures folder beside the report. Layout is fixed in inches (no tight-bbox pass): one
draw per file format, which matters on a loaded CI box.

Encoding, the same in every figure: colour = token mixer, marker and line style = model (size or block), one panel
per device setting (device, backend, precision, batch, threads).
"""
from __future__ import annotations

import base64
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by the CLI and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

from bench.analysis.report.data import Merged  # noqa: E402

DPI = 100
MAX_FACETS = 9
NCOL = 3
PANEL_W, PANEL_H = 3.9, 2.9  # inches
LEGEND_W = 2.3
VARIANT_ORDER = ["msla", "relu-linear", "softmax", "large-kernel", "softmax-sr"]
MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ["-", "--", "-.", ":"]


@dataclass
class Figure:
    key: str  # file stem
    title: str
    caption: str
    png_b64: str = ""
    png_path: Path | None = None
    svg_path: Path | None = None
    missing: str = ""  # why the figure is not there
    width: int = 0
    height: int = 0


def _style() -> None:
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "densebench", "figure.max_open_warning": 0,
                         "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
                         "legend.fontsize": 7.5})


def _wrap(label: str, width: int = 46) -> str:
    """Panel titles are long settings: wrap them on the separators."""
    parts, line, out = str(label).split(" · "), "", []
    for p in parts:
        cand = f"{line} · {p}" if line else p
        if len(cand) > width and line:
            out.append(line)
            line = p
        else:
            line = cand
    out.append(line)
    return "\n".join(out)


def _facets(df: pd.DataFrame, col: str = "config") -> tuple[pd.DataFrame, list[str], str]:
    """At most MAX_FACETS panels (the settings with the most rows), in a stable order; says what was left out."""
    counts = df[col].value_counts()
    keep = sorted(counts.index[:MAX_FACETS], key=str)
    cut = f" ({len(counts) - MAX_FACETS} more settings not plotted: see the tables)" if len(counts) > MAX_FACETS \
        else ""
    return df[df[col].isin(keep)], keep, cut


def _multi_point(df: pd.DataFrame, by: list[str], x: str) -> pd.DataFrame:
    """Rows of the settings (by[0]) that have at least one series (by) with two or more x values."""
    n = df.groupby(by)[x].nunique()
    good = {k[0] for k in n[n >= 2].index}
    return df[df[by[0]].isin(good)]


def _variant_colors(variants) -> dict:
    vals = list(dict.fromkeys(variants))
    order = [v for v in VARIANT_ORDER if v in vals] + sorted(str(v) for v in vals if v not in VARIANT_ORDER)
    pal = sns.color_palette("colorblind", n_colors=max(len(order), len(VARIANT_ORDER)))
    fixed = {v: pal[i] for i, v in enumerate(VARIANT_ORDER)}
    extra = iter(pal[len(VARIANT_ORDER):] + sns.color_palette("dark", 10))
    return {v: fixed[v] if v in fixed else next(extra) for v in order}


def _model_styles(bases) -> dict:
    vals = sorted(dict.fromkeys(str(b) for b in bases))
    return {b: (MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)]) for i, b in enumerate(vals)}


def _panels(n: int, legend: bool = True, panel_h: float = PANEL_H, panel_w: float = PANEL_W,
            ncol_max: int = NCOL, left: float = 0.75, wgap: float = 0.75, right_extra: float = 0.0):
    """A figure with n panels in a grid and a legend column on the right, margins fixed in inches."""
    ncol = max(1, min(ncol_max, n))
    nrow = (n + ncol - 1) // ncol
    right, top, bottom, hgap = (LEGEND_W if legend else 0.2) + right_extra, 0.55, 0.55, 0.95
    fw = left + ncol * panel_w + (ncol - 1) * wgap + right
    fh = top + nrow * panel_h + (nrow - 1) * hgap + bottom
    fig, axs = plt.subplots(nrow, ncol, figsize=(fw, fh), squeeze=False)
    fig.subplots_adjust(left=left / fw, right=1 - right / fw, top=1 - top / fh, bottom=bottom / fh,
                        wspace=wgap / panel_w, hspace=hgap / panel_h)
    axes = list(axs.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _log(ax, x: bool = True, y: bool = True) -> None:
    """Log axes with major tick labels only (minor labels cost drawing time and clutter small panels)."""
    if x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())


def _resolution_ticks(ax, d: pd.DataFrame) -> None:
    """x ticks at the measured image sizes, labelled 512x512 etc. (x is megapixels, log)."""
    t = d[["megapixels", "resolution"]].drop_duplicates("megapixels").sort_values("megapixels")
    if len(t) > 8:
        t = t.iloc[np.linspace(0, len(t) - 1, 8).round().astype(int)]
    ax.xaxis.set_major_locator(FixedLocator(t["megapixels"].to_list()))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(t["megapixels"].to_list(), [str(r).replace("x", "×") for r in t["resolution"]])
    lo, hi = float(t["megapixels"].min()), float(t["megapixels"].max())
    if lo > 0 and hi > 0:
        ax.set_xlim(lo / 1.35, hi * 1.35)


def _series(ax, d: pd.DataFrame, x: str, y: str, lo: str | None, hi: str | None, colors: dict, styles: dict,
            by: str = "model", ls_override: str | None = None) -> None:
    for model, s in d.groupby(by, sort=True):
        s = s.sort_values(x)
        variant = s["variant"].iloc[0] if "variant" in s else ""
        marker, ls = styles.get(str(s["base"].iloc[0]), ("o", "-"))
        yerr = None
        if lo and hi and s[lo].notna().any():
            low = (s[y] - s[lo].fillna(s[y])).clip(lower=0).to_numpy(dtype=float)
            high = (s[hi].fillna(s[y]) - s[y]).clip(lower=0).to_numpy(dtype=float)
            yerr = np.vstack([low, high])
        ax.errorbar(s[x].to_numpy(dtype=float), s[y].to_numpy(dtype=float), yerr=yerr,
                    color=colors.get(variant, "0.4"), marker=marker, ms=4, lw=1.3, ls=ls_override or ls,
                    capsize=2.5, elinewidth=1.0)


def _legend(fig, colors: dict, styles: dict, color_title: str = "token mixer", style_title: str = "model",
            extra: list[tuple[str, dict]] | None = None) -> None:
    handles = [Line2D([], [], color="none", label=color_title)]
    handles += [Line2D([], [], color=c, lw=2, label=v) for v, c in colors.items()]
    if styles:
        handles.append(Line2D([], [], color="none", label=" "))
        handles.append(Line2D([], [], color="none", label=style_title))
        handles += [Line2D([], [], color="0.3", marker=mk, ls=ls, ms=4, label=b) for b, (mk, ls) in styles.items()]
    for label, kw in extra or []:
        handles.append(Line2D([], [], label=label, **kw))
    fw = fig.get_figwidth()
    leg = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1 - (LEGEND_W - 0.15) / fw, 0.97),
                     frameon=False, handlelength=2.4)
    for t, h in zip(leg.get_texts(), handles):
        if h.get_color() == "none":
            t.set_fontweight("bold")


def _titled(ax, config: str, mobile: bool = False) -> None:
    ax.set_title(_wrap(config) + ("\n(mobile-class CPU proxy)" if mobile else ""), fontsize=8)


def _mobile(d: pd.DataFrame, config: str) -> bool:
    sub = d[d["config"] == config]
    return bool(len(sub) and "mobile_proxy" in sub and sub["mobile_proxy"].fillna(False).astype(bool).any())


# ---------------------------------------------------------------------------------------------------------------
# the figures

def latency_vs_resolution(m: Merged):
    ok = m.ok
    if not len(ok):
        return "no ok measurements"
    d = _multi_point(ok, ["config", "model"], "pixels")
    if not len(d):
        return "every model was measured at a single resolution: no scaling to plot"
    d, facets, cut = _facets(d)
    colors, styles = _variant_colors(d["variant"]), _model_styles(d["base"])
    fig, axes = _panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        _series(ax, sub, "megapixels", "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high", colors,
                styles)
        _log(ax)
        _resolution_ticks(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("median latency, ms (log)")
        _titled(ax, f, _mobile(d, f))
    _legend(fig, colors, styles)
    return fig, cut


def speedup_plot(sp: pd.DataFrame):
    if not len(sp):
        return "no msla rows matched with softmax or large-kernel rows"
    d = _multi_point(sp, ["config", "base", "baseline"], "megapixels")
    d = d if len(d) else sp
    d, facets, cut = _facets(d)
    styles = _model_styles(d["base"])
    bl_colors = _variant_colors(["softmax", "large-kernel"])
    fig, axes = _panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f].copy()
        sub["variant"] = sub["baseline"]
        sub["series"] = sub["base"] + " vs " + sub["baseline"]
        _series(ax, sub, "megapixels", "speedup", "ci_low", "ci_high", bl_colors, styles, by="series")
        ax.axhline(1.0, color="0.25", lw=0.9, ls=":")
        _log(ax, y=False)
        _resolution_ticks(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("msla speedup (×)")
        _titled(ax, f, _mobile(d, f))
    _legend(fig, {f"vs {k}": v for k, v in bl_colors.items()}, styles, color_title="baseline mixer")
    return fig, cut


def peak_memory(m: Merged):
    ok = m.ok
    if not len(ok) or "peak_mem_mb" not in ok or not ok["peak_mem_mb"].notna().any():
        return "no peak-memory measurements"
    d = ok[ok["peak_mem_mb"].notna() & (ok["peak_mem_mb"] > 0)]
    if not len(d):
        return "no positive peak-memory measurements"
    d = _multi_point(d, ["config", "model"], "pixels")
    if not len(d):
        return "every model was measured at a single resolution: no memory scaling to plot"
    d, facets, cut = _facets(d)
    colors, styles = _variant_colors(d["variant"]), _model_styles(d["base"])
    fig, axes = _panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        _series(ax, sub, "megapixels", "peak_mem_mb", None, None, colors, styles)
        _log(ax)
        _resolution_ticks(ax, sub)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("peak memory, MB (log)")
        _titled(ax, f, _mobile(d, f))
    _legend(fig, colors, styles)
    return fig, cut


def throughput_vs_batch(m: Merged):
    ok = m.ok
    if not len(ok) or not ok["throughput_ips"].notna().any():
        return "no throughput measurements"
    d = ok[ok["throughput_ips"].notna()].copy()
    # one series per model and resolution within a setting that leaves the batch size out
    d["config"] = [c.replace(f" · b{int(b)}", "") for c, b in zip(d["config"], d["batch"])]
    d["series"] = d["model"].astype(str) + " @ " + d["resolution"].astype(str)
    d = _multi_point(d, ["config", "series"], "batch")
    if not len(d):
        return "every case was measured at a single batch size: throughput vs batch not available"
    nb = d.groupby(["config", "series"])["batch"].transform("nunique")
    d = d[nb >= 2]
    d, facets, cut = _facets(d)
    colors, styles = _variant_colors(d["variant"]), _model_styles(d["base"])
    fig, axes = _panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        _series(ax, sub, "batch", "throughput_ips", None, None, colors, styles, by="series")
        ax.set_xscale("log", base=2)
        b = sorted(sub["batch"].dropna().astype(int).unique())
        ax.set_xticks(b, [str(x) for x in b])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("batch size (log)")
        ax.set_ylabel("throughput, images/s")
        res = ", ".join(sorted(sub["resolution"].unique()))
        ax.set_title(_wrap(f) + f"\nat {res}", fontsize=8)
    _legend(fig, colors, styles)
    return fig, cut


def efficiency(m: Merged):
    ok = m.ok
    if not len(ok) or not ok["gmacs_per_s"].notna().any():
        return "no achieved GMAC/s (MACs or latency missing)"
    d = ok[ok["gmacs_per_s"].notna()]
    multi = _multi_point(d, ["config", "model"], "pixels")
    d = multi if len(multi) else d
    d, facets, cut = _facets(d)
    has_frac = d["frac_of_peak"].notna().any()
    colors, styles = _variant_colors(d["variant"]), _model_styles(d["base"])
    fig, axes = _panels(len(facets), wgap=1.45 if has_frac else 0.75, right_extra=0.7 if has_frac else 0.0)
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        _series(ax, sub, "megapixels", "gmacs_per_s", None, None, colors, styles)
        _log(ax)
        _resolution_ticks(ax, sub)
        peak = pd.to_numeric(sub["device_peak_gmacs_per_s"], errors="coerce").dropna()
        if len(peak):
            p = float(peak.median())
            lo = float(sub["gmacs_per_s"][sub["gmacs_per_s"] > 0].min())
            ax.set_ylim(min(lo, p) / 2, max(p, float(sub["gmacs_per_s"].max())) * 2)
            ax.axhline(p, color="0.2", lw=1, ls="--")
            ax.text(0.02, p, f" measured peak {p:,.0f}", transform=ax.get_yaxis_transform(), va="bottom",
                    fontsize=7, color="0.2")
            sec = ax.secondary_yaxis("right", functions=(lambda v, p=p: v / p, lambda v, p=p: v * p))
            sec.set_yscale("log")
            sec.yaxis.set_minor_formatter(NullFormatter())
            sec.set_ylabel("fraction of device peak (log)", fontsize=7)
            sec.tick_params(labelsize=7)
        ax.set_xlabel("image size (log pixels)")
        ax.set_ylabel("achieved GMAC/s (log)")
        _titled(ax, f, _mobile(d, f))
    _legend(fig, colors, styles, extra=[("measured device peak", dict(color="0.2", ls="--"))])
    note = "" if has_frac else " (no device peak calibration recorded: fraction of peak not available)"
    return fig, cut + note


def macs_vs_latency(m: Merged):
    ok = m.ok
    d = ok[ok["macs"].notna() & (ok["macs"].astype("float64") > 0)] if len(ok) else ok
    if not len(d):
        return "no MACs recorded"
    d = d.copy()
    d["gmacs"] = d["macs"].astype("float64") / 1e9
    big = d[d.groupby("config")["model"].transform("size") >= 3]  # settings with a cloud, not 2 points
    d = big if len(big) else d
    d, facets, cut = _facets(d)
    colors, styles = _variant_colors(d["variant"]), _model_styles(d["base"])
    fig, axes = _panels(len(facets))
    for ax, f in zip(axes, facets):
        sub = d[d["config"] == f]
        for (variant, base), s in sub.groupby(["variant", "base"], sort=True):
            ax.scatter(s["gmacs"], s["latency_ms_median"], color=colors.get(variant, "0.4"),
                       marker=styles.get(str(base), ("o", "-"))[0], s=22, alpha=0.9, edgecolor="white",
                       linewidth=0.4)
        _log(ax)
        ax.set_xlabel("GMACs per batch (log)")
        ax.set_ylabel("median latency, ms (log)")
        _titled(ax, f, _mobile(d, f))
    _legend(fig, colors, styles)
    return fig, cut


MAX_DIST_CASES = 14


def latency_distributions(m: Merged):
    s = m.samples
    if not len(s):
        return "no raw samples (samples.parquet missing or empty)"
    s = s[s["status"] == "ok"] if "status" in s else s
    if not len(s):
        return "no raw samples of ok cases"
    s = s.copy()
    s["case"] = s["model"].astype(str) + " @ " + s["resolution"].astype(str)
    ncase = s.groupby("config")["case"].transform("nunique")
    small = int(s.loc[ncase < 3, "config"].nunique()) if (ncase >= 3).any() else 0
    s = s[ncase >= 3] if small else s  # settings with 1-2 cases (batch sweeps) add panels and little else
    s, facets, cut = _facets(s)
    if small:
        cut += f" ({small} settings with fewer than 3 cases not plotted)"
    colors = _variant_colors(s["variant"])
    more, per = 0, {}
    for f in facets:
        sub = s[s["config"] == f]
        cases = (sub[["case", "megapixels", "model", "variant"]].drop_duplicates("case")
                 .sort_values(["megapixels", "model"], ascending=[False, True]))
        more += max(0, len(cases) - MAX_DIST_CASES)
        per[f] = cases.iloc[:MAX_DIST_CASES]
    ncases = max(len(c) for c in per.values())
    width = max(len(str(c)) for cs in per.values() for c in cs["case"]) * 0.055 + 0.3
    fig, axes = _panels(len(facets), legend=True, panel_h=max(1.6, 0.2 * ncases + 0.5), panel_w=4.0, ncol_max=2,
                        left=width, wgap=width + 0.2)
    for ax, f in zip(axes, facets):
        sub = s[s["config"] == f]
        cases = per[f].iloc[::-1]  # largest on top
        data = []
        for c in cases["case"]:
            x = sub.loc[sub["case"] == c, "latency_ms"].to_numpy(dtype=float)
            data.append(x / np.median(x))
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
        ax.set_yticks(range(1, len(cases) + 1), list(cases["case"]), fontsize=6.5)
        ax.axvline(1.0, color="0.3", lw=0.8, ls=":")
        ax.set_xlabel("latency / case median (whiskers p1–p99)")
        _titled(ax, f, _mobile(s, f))
    _legend(fig, colors, {})
    note = cut + (f" ({more} more cases not plotted: the largest resolutions are shown)" if more else "")
    return fig, note


def _save(fig, key: str, folder: Path) -> tuple[str, Path, Path, int, int]:
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    png, svg = folder / f"{safe}.png", folder / f"{safe}.svg"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = buf.getvalue()
    png.write_bytes(data)
    fig.savefig(svg, format="svg")
    w, h = _png_size(data)
    plt.close(fig)
    return base64.b64encode(data).decode("ascii"), png, svg, w, h


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return 0, 0


def build_figures(m: Merged, sp: pd.DataFrame, folder: Path) -> list[Figure]:
    _style()
    specs: list[tuple[str, str, str, Callable]] = [
        ("latency_vs_resolution", "Latency vs resolution",
         "Median latency per iteration against image size, log-log, one panel per device setting; error bars: "
         "95% CI of the median. A slope of 1 is linear in pixels, 2 quadratic.", lambda: latency_vs_resolution(m)),
        ("speedup", "Speedup of msla",
         "Baseline median latency / msla median latency at the same model, device, setting and resolution "
         "(above the dotted line msla is faster); error bars: 95% CI of the ratio.", lambda: speedup_plot(sp)),
        ("peak_memory", "Peak memory vs resolution",
         "CUDA peak allocated memory, or CPU peak RSS above the worker's baseline.", lambda: peak_memory(m)),
        ("throughput_vs_batch", "Throughput vs batch", "Images per second against batch size.",
         lambda: throughput_vs_batch(m)),
        ("efficiency", "Hardware efficiency: achieved GMAC/s and fraction of the device's peak",
         "MACs per second achieved by each model; dashed: the device's measured matmul peak (calibration kernel), "
         "right axis: fraction of that peak.", lambda: efficiency(m)),
        ("macs_vs_latency", "MACs vs latency",
         "Every ok case: MACs do not predict latency (similar MACs, different mixers, different latencies).",
         lambda: macs_vs_latency(m)),
        ("latency_distributions", "Latency distributions",
         "Raw per-iteration samples relative to each case's median (box: quartiles; whiskers: p1 to p99; "
         "dots: beyond).", lambda: latency_distributions(m)),
    ]
    out: list[Figure] = []
    for key, title, caption, fn in specs:
        f = Figure(key=key, title=title, caption=caption)
        try:
            res = fn()
            if isinstance(res, str):
                f.missing = res
            else:
                fig, note = res
                f.caption += note
                f.png_b64, f.png_path, f.svg_path, f.width, f.height = _save(fig, key, folder)
        except Exception as e:  # a figure must never take the report down: say why it is missing
            msg = str(e).splitlines()[0] if str(e) else ""
            f.missing = f"figure failed ({type(e).__name__}: {msg})"
        finally:
            plt.close("all")
        out.append(f)
    return out
