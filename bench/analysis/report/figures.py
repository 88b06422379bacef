"""The report's figures: which ones, their titles and captions, and how each is saved.

Figures are saved as PNG (embedded base64 in the HTML page, so it works offline and as an e-mail attachment) and
as PNG + SVG files in the figures folder beside the report. Each figure is drawn by plots_scaling,
plots_hardware or plots_profile with the drawing kit in plot_kit; a figure whose data are missing says why, so a
report of a partial run still renders. `figure_view` is what the page shows of each.
"""
from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure as Canvas

from bench.analysis.report.readings import MIN_N
from bench.analysis.report import plot_kit as kit
from bench.analysis.report.data import Merged
from bench.analysis.report.plots_hardware import efficiency, latency_distributions, macs_vs_latency
from bench.analysis.report.plots_scaling import latency_vs_resolution, peak_memory, speedup_plot, throughput_vs_batch

DPI = 100


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


# (key, title, caption, draw(merged runs, speedups)), in the order of the page
FIGURES: tuple[tuple[str, str, str, Callable[[Merged, pd.DataFrame], kit.Drawn]], ...] = (
    ("latency_vs_resolution", "Latency vs resolution",
     "Median latency per iteration against image size, log-log, one panel per device setting; error bars: "
     f"the CI of the median, 95% for a case with {MIN_N} or more samples (with fewer, (min, max), which covers "
     "less). A slope of 1 is linear in pixels, 2 quadratic.", lambda m, sp: latency_vs_resolution(m)),
    ("speedup", "Speedup of msla",
     "Baseline median latency / msla median latency at the same model, device, setting and resolution, log "
     "axis (above the dotted line at 1× msla is faster); error bars: the CI of the ratio, at the confidence the "
     "headline table shows beside it (95% unless shown); hollow markers: no verdict (the CI spans 1, there is "
     f"none, a side has fewer than {MIN_N} samples or was measured on a busy machine).",
     lambda m, sp: speedup_plot(sp)),
    ("peak_memory", "Peak memory vs resolution",
     "CUDA peak allocated memory, or CPU peak RSS above the worker's baseline, in MB.",
     lambda m, sp: peak_memory(m)),
    ("throughput_vs_batch", "Throughput vs batch", "Images per second against batch size.",
     lambda m, sp: throughput_vs_batch(m)),
    ("efficiency", "Hardware efficiency: achieved GMAC/s and fraction of the device's peak",
     "GMAC/s achieved by each model; dashed: the device's measured matmul peak in GMAC/s (calibration kernel), "
     "right axis: fraction of that peak.", lambda m, sp: efficiency(m)),
    ("macs_vs_latency", "MACs vs latency",
     "Every ok case with MACs, one panel per device setting, each point labelled with its resolution; the "
     "reading per setting is computed from a least-squares fit of log latency on log MACs (R²) and Spearman's "
     "rank correlation (ρ), by the rule in the methodology.",
     lambda m, sp: macs_vs_latency(m)),
    ("latency_distributions", "Latency distributions",
     "Raw per-iteration samples relative to each case's median (box: quartiles; whiskers: p1 to p99; "
     "dots: beyond); n: samples of the case.", lambda m, sp: latency_distributions(m)),
)


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return 0, 0


def _save(fig: Canvas, f: Figure, folder: Path) -> None:
    """PNG (kept in f as base64 for the page) and SVG files in folder; one draw per format. A figure that fails
    to draw leaves no file of it behind."""
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f.key)
    png, svg = folder / f"{safe}.png", folder / f"{safe}.svg"
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        data = buf.getvalue()
        png.write_bytes(data)
        fig.savefig(svg, format="svg")
    except BaseException:
        png.unlink(missing_ok=True)
        svg.unlink(missing_ok=True)
        raise
    f.png_path, f.svg_path = png, svg
    f.width, f.height = _png_size(data)
    f.png_b64 = base64.b64encode(data).decode("ascii")


def failure_reason(e: BaseException) -> str:
    """'figure failed (Type: first line)': never empty, whatever the message (mathtext's start with a newline)."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"figure failed ({type(e).__name__}: {first})" if first else f"figure failed ({type(e).__name__})"


def draw_all(specs: list[tuple[str, str, str, Callable[[], kit.Drawn]]], folder: Path) -> list[Figure]:
    """Draw each (key, title, caption, draw) into `folder`; a figure that cannot be drawn says why instead."""
    kit.apply_style()
    out: list[Figure] = []
    for key, title, caption, draw in specs:
        f = Figure(key=key, title=title, caption=caption)
        try:
            res = draw()
            if isinstance(res, str):
                f.missing = res
            else:
                fig, note = res
                f.caption += note
                _save(fig, f, folder)
        except Exception as e:  # a figure must never take the report down: say why it is missing
            f.missing = failure_reason(e)
        finally:
            plt.close("all")
        out.append(f)
    return out


def build_figures(m: Merged, sp: pd.DataFrame, folder: Path) -> list[Figure]:
    """The page's Figures section (FIGURES, in order)."""
    return draw_all([(key, title, caption, lambda draw=draw: draw(m, sp)) for key, title, caption, draw in FIGURES],
                    folder)


def figure_view(figs: list[Figure]) -> list[dict]:
    """The figures as the page shows them: title, caption, the embedded PNG, its files, or why it is missing."""
    return [dict(key=f.key, title=f.title, caption=f.caption, png_b64=f.png_b64, missing=f.missing,
                 width=f.width, height=f.height,
                 png=f.png_path.name if f.png_path else "", svg=f.svg_path.name if f.svg_path else "")
            for f in figs]
