"""The drawing kit shared by every figure of the report: style, panel grid, log axes, series and legend.

Encoding, the same in every figure: colour and marker = token mixer (Okabe-Ito colours, colour-blind safe, and a
marker of its own so that a mixer reads without colour), line style = model (size or block), one panel per device
setting. Layout is fixed in inches (no tight-bbox pass): one draw per file format, which matters on a
loaded CI box.
"""
from __future__ import annotations

import textwrap
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by the CLI and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure as Canvas  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

from models.mixers import MIXERS  # noqa: E402

MAX_FACETS = 9
NCOL = 3
PANEL_W, PANEL_H = 3.9, 2.9  # inches
LEGEND_W = 2.3
# the paper's mixer first, then the others in the zoo's order, then SegFormer's spatial-reduction softmax
VARIANT_ORDER = ["msla", *(m for m in MIXERS if m != "msla"), "softmax-sr"]
MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
# Okabe & Ito (2008): distinct under the common colour-vision deficiencies; fixed per mixer in every figure
OKABE_ITO = ("#0072B2", "#009E73", "#D55E00", "#E69F00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MIXER_COLORS = {"msla": "#0072B2", "relu-linear": "#009E73", "softmax": "#D55E00", "large-kernel": "#E69F00",
                "softmax-sr": "#CC79A7"}
MIXER_MARKERS = {"msla": "o", "relu-linear": "s", "softmax": "^", "large-kernel": "D", "softmax-sr": "v"}
EXTRA_COLORS = ("#56B4E9", "#000000", "#F0E442", "0.45", "0.7")
EXTRA_MARKERS = "PX*hp<>"
# what a figure builder returns: the figure and a note for its caption, or why it cannot be drawn
Drawn = tuple[Canvas, str] | str


def apply_style() -> None:
    """Seaborn's paper theme, small fonts for small panels, stable SVG ids (files diff cleanly run to run)."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "densebench", "figure.max_open_warning": 0,
                         "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
                         "legend.fontsize": 7.5})


def plain(text: object) -> str:
    """A data-derived string (a model, a setting, a case) drawn as itself: matplotlib parses text between two
    unescaped `$` as mathtext, so a name like `a$x_1_2$b` would render as math or fail the whole figure. A
    backslash makes each `$` literal (rcParams["text.parse_math"] = False would also break the log axes' tick
    labels, which are mathtext)."""
    return str(text).replace("$", r"\$")


def wrap(label: str, width: int = 46) -> str:
    """Panel titles are long settings: wrap them between words (and draw them as plain text)."""
    return plain("\n".join(textwrap.wrap(str(label), width)) or str(label))


def facets(df: pd.DataFrame, col: str = "config") -> tuple[pd.DataFrame, list[str], str]:
    """At most MAX_FACETS panels (the settings with the most rows), in a stable order; says what was left out."""
    counts = df[col].value_counts()
    keep = sorted(counts.index[:MAX_FACETS], key=str)
    cut = f" ({len(counts) - MAX_FACETS} more settings not plotted: see the tables)" if len(counts) > MAX_FACETS \
        else ""
    return df[df[col].isin(keep)], keep, cut


def multi_point(df: pd.DataFrame, by: list[str], x: str) -> pd.DataFrame:
    """Rows of the settings (by[0]) that have at least one series (by) with two or more x values."""
    n = df.groupby(by)[x].nunique()
    good = {k[0] for k in n[n >= 2].index}
    return df[df[by[0]].isin(good)]


def _ordered(variants: Iterable[Any]) -> list[Any]:
    vals = list(dict.fromkeys(variants))
    return [v for v in VARIANT_ORDER if v in vals] + sorted((v for v in vals if v not in VARIANT_ORDER), key=str)


def variant_colors(variants: Iterable[Any]) -> dict[Any, Any]:
    """Token mixer -> colour: the known mixers always get the same Okabe-Ito colour, in every figure and report;
    others take the remaining colours in name order."""
    extra = iter(EXTRA_COLORS * 4)
    return {v: MIXER_COLORS.get(str(v)) or next(extra) for v in _ordered(variants)}


def variant_markers(variants: Iterable[Any]) -> dict[Any, str]:
    """Token mixer -> marker, fixed like its colour: a mixer is told apart in greyscale and by colour-blind
    readers too."""
    extra = iter(EXTRA_MARKERS * 4)
    return {v: MIXER_MARKERS.get(str(v)) or next(extra) for v in _ordered(variants)}


def model_styles(bases: Iterable[Any]) -> dict[str, Any]:
    """Base model -> line style (the marker belongs to the mixer)."""
    vals = sorted(dict.fromkeys(str(b) for b in bases))
    return {b: LINESTYLES[i % len(LINESTYLES)] for i, b in enumerate(vals)}


def panels(n: int, legend: bool = True, panel_h: float = PANEL_H, panel_w: float = PANEL_W,
           ncol_max: int = NCOL, left: float = 0.75, wgap: float = 0.75,
           right_extra: float = 0.0) -> tuple[Canvas, list[Axes]]:
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


def log_axes(ax: Axes, x: bool = True, y: bool = True) -> None:
    """Log axes with major tick labels only (minor labels cost drawing time and clutter small panels)."""
    if x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())


def resolution_ticks(ax: Axes, d: pd.DataFrame) -> None:
    """x ticks at the measured image sizes, labelled 512x512 etc. (x is megapixels, log)."""
    t = d[["megapixels", "resolution"]].drop_duplicates("megapixels").sort_values("megapixels")
    if len(t) > 8:
        t = t.iloc[np.linspace(0, len(t) - 1, 8).round().astype(int)]
    ax.xaxis.set_major_locator(FixedLocator(t["megapixels"].to_list()))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(t["megapixels"].to_list(), [plain(str(r).replace("x", "×")) for r in t["resolution"]])
    lo, hi = float(t["megapixels"].min()), float(t["megapixels"].max())
    if lo > 0 and hi > 0:
        ax.set_xlim(lo / 1.35, hi * 1.35)


def series(ax: Axes, d: pd.DataFrame, x: str, y: str, lo: str | None, hi: str | None, colors: dict, styles: dict,
           by: str = "model") -> None:
    """One line per `by` value, coloured and marked by mixer, line style by base model; error bars from the lo/hi
    columns."""
    markers = variant_markers(d["variant"]) if "variant" in d else {}
    for _, s in d.groupby(by, sort=True):
        s = s.sort_values(x)
        variant = s["variant"].iloc[0] if "variant" in s else ""
        marker, ls = markers.get(variant, "o"), styles.get(str(s["base"].iloc[0]), "-")
        yerr = None
        if lo and hi and s[lo].notna().any():
            low = (s[y] - s[lo].fillna(s[y])).clip(lower=0).to_numpy(dtype=float)
            high = (s[hi].fillna(s[y]) - s[y]).clip(lower=0).to_numpy(dtype=float)
            yerr = np.vstack([low, high])
        ax.errorbar(s[x].to_numpy(dtype=float), s[y].to_numpy(dtype=float), yerr=yerr,
                    color=colors.get(variant, "0.4"), marker=marker, ms=4, lw=1.3, ls=ls,
                    capsize=2.5, elinewidth=1.0)


def legend(fig: Canvas, colors: dict, styles: dict, color_title: str = "token mixer", style_title: str = "model",
           extra: list[tuple[str, dict]] | None = None, markers: dict | None = None) -> None:
    """The figure's one legend, in the right margin: mixers (colour and marker; `markers` maps a colour key to
    its marker where the keys are not mixer names), then models (line style), then extras."""
    markers = markers if markers is not None else variant_markers(colors)
    handles = [Line2D([], [], color="none", label=color_title)]
    handles += [Line2D([], [], color=c, lw=1.5, marker=markers.get(v, "o"), ms=5, label=plain(v))
                for v, c in colors.items()]
    if styles:
        handles.append(Line2D([], [], color="none", label=" "))
        handles.append(Line2D([], [], color="none", label=style_title))
        handles += [Line2D([], [], color="0.3", ls=ls, lw=1.3, label=plain(b)) for b, ls in styles.items()]
    for label, kw in extra or []:
        handles.append(Line2D([], [], label=plain(label), **kw))
    fw = fig.get_figwidth()
    leg = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1 - (LEGEND_W - 0.15) / fw, 0.97),
                     frameon=False, handlelength=2.4)
    for t, h in zip(leg.get_texts(), handles):
        if h.get_color() == "none":
            t.set_fontweight("bold")


def titled(ax: Axes, config: str, mobile: bool = False) -> None:
    ax.set_title(wrap(config) + ("\n(mobile-class CPU proxy)" if mobile else ""), fontsize=8)


def is_mobile(d: pd.DataFrame, config: str) -> bool:
    """Whether the setting's rows are the mobile-class CPU proxy (1 thread), for the panel title."""
    sub = d[d["config"] == config]
    return bool(len(sub) and "mobile_proxy" in sub and sub["mobile_proxy"].fillna(False).astype(bool).any())
