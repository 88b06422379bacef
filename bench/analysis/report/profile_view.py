"""The "Where the time goes" section (issue 13): its figures, tables and sentences as formatted strings for the
page (templates/_profile.html.j2) and its short Markdown version.

The sentences are made from profile_data's frames only: each names the kind and the numbers the rows give, and
a sentence whose kind is absent is not made. Escaping is left to jinja2 and bench.text, as everywhere else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.report import plots_profile as pp
from bench.analysis.report import profile_data as pdata
from bench.analysis.report.data import Merged
from bench.analysis.report.decision import profile_anchor
from bench.analysis.report.figures import Figure, draw_all, figure_view
from bench.analysis.report.formatting import fnum, missing, text
from bench.text import markdown_table, md_escape

# (key, title, caption, draw(op-kind rows)), in the order of the section
PROFILE_FIGURES = (
    ("profile_time_share", "Time share by op kind",
     "Share of each profiled case's time per op kind, one bar per model and resolution, one panel per setting "
     "(host self time on a CPU, kernel time on CUDA; 'framework' is time inside the profiled forward but in no "
     "op: Python, hooks, dispatch).", pp.time_share_bars),
    ("profile_share_scatter", "Time share against MAC share",
     "Each op kind with MACs in each profiled case, one panel per token mixer: its share of the MACs (x) against "
     "its share of the time (y). On the dotted diagonal a kind runs at the case's average rate; far above it, "
     "the kind is hardware inefficient (little work, much time). The kinds furthest above are named.",
     pp.share_scatter),
    ("profile_roofline", "Roofline per device setting",
     "Each op kind of each profiled case at its arithmetic intensity (MACs per byte; bytes are a lower bound "
     "from shapes and dtypes) and achieved GMAC/s, log-log, one panel per device, precision and threads; the line "
     "is min(peak, bandwidth × intensity) from the setting's calibrated matmul peak and triad bandwidth.",
     pp.roofline),
)
MD_MAX_ROWS = 30


def pct(share: Any) -> str:
    """A share as a percentage with two significant digits ('53%', '4.3%'), '' when missing."""
    return "" if missing(share) or not np.isfinite(float(share)) else f"{fnum(100 * float(share), 2)}%"


def signed_pct(x: Any) -> str:
    if missing(x) or not np.isfinite(float(x)):
        return ""
    return ("+" if float(x) >= 0 else "−") + pct(abs(float(x)))


def case_sentences(gaps: pd.DataFrame, several_settings: bool) -> list[dict]:
    """Per case: the kind whose time share exceeds its MAC share the most, and the depthwise kinds together."""
    out = []
    for r in gaps.to_dict("records"):
        where = f" on {r['config']}" if several_settings else ""
        s = (f"In {r['case']}{where}, {r['op_kind']} takes {pct(r['time_share'])} of the time for "
             f"{pct(r['mac_share'])} of the MACs")
        if r["dw_kinds"] >= 2:
            s += (f"; the {r['dw_kinds']} depthwise conv kinds together take {pct(r['dw_time_share'])} of the time "
                  f"for {pct(r['dw_mac_share'])} of the MACs")
        out.append(dict(case=r["case"], config=r["config"], kind=r["op_kind"], text=s + "."))
    return out


def _against(label: str, rate: float, dw: float, of: str) -> str:
    return f"{label} {fnum(rate)} GMAC/s ({fnum(rate / dw, 2)}×{of})"


def setting_sentences(dw: pd.DataFrame) -> list[dict]:
    """Per device setting: the depthwise convs' achieved GMAC/s against 1x1 convs' and matmuls'."""
    out = []
    for r in dw.to_dict("records"):
        rate = r["dw_gmacs_per_s"]
        if not (np.isfinite(rate) and rate > 0):
            continue
        if r["dw_kinds"] == 1:
            head = f"On {r['roof']}, {r['slowest']} reaches {fnum(rate)} GMAC/s"
            of = ""
        else:
            head = (f"On {r['roof']}, depthwise convs ({r['dw_kinds']} kinds) reach {fnum(rate)} GMAC/s together, "
                    f"the slowest ({r['slowest']}) {fnum(r['slowest_gmacs_per_s'])} GMAC/s")
            of = " the depthwise rate"
        present = [(label, r[col]) for label, col in (("1x1 convs", "conv1x1_gmacs_per_s"),
                                                      ("matmuls", "matmul_gmacs_per_s")) if np.isfinite(r[col])]
        # "the depthwise rate" is said once, after the first comparison
        refs = [_against(label, ref, rate, of if i == 0 else "") for i, (label, ref) in enumerate(present)]
        pooled = f" (pooled over {r['cases']} profiled cases)" if r["cases"] > 1 else ""
        out.append(dict(roof=r["roof"], kind=r["slowest"], text=f"{head}; {' and '.join(refs)}{pooled}."))
    return out


def _top_ops_view(p: pd.DataFrame, cases: pd.DataFrame, several: bool) -> list[dict]:
    ops = pdata.top_ops(p)
    out = []
    for c in cases.to_dict("records"):
        g = ops[(ops["run_id"] == c["run_id"]) & (ops["case_id"] == c["case_id"])] if len(ops) else ops
        rows = [dict(op=text(r["op"]), op_kind=text(r["op_kind"]), module=text(r["module"]),
                     shapes=text(r["shapes"]), time_ms=fnum(r["time_ms"]), time_share=pct(r["time_share"]),
                     gmacs=fnum(r["gmacs_per_s"]) if (r["macs"] or 0) > 0 else "")
                for r in g.to_dict("records")]
        out.append(dict(case=c["case"], config=c["config"], source=text(c["source"]), rows=rows, open=not several,
                        anchor=profile_anchor(c["run_id"], c["case_id"])))
    return out


def _modules_view(p: pd.DataFrame, cases: pd.DataFrame) -> list[dict]:
    split = pdata.module_split(p)
    out = []
    for c in cases.to_dict("records"):
        g = split[(split["run_id"] == c["run_id"]) & (split["case_id"] == c["case_id"])]
        if not len(g):
            continue
        parts = g.groupby("part")["time_share"].sum()
        stages = []
        for stage, s in g.groupby("stage", sort=False):
            by = s.groupby("part")["time_share"].sum()
            stages.append(dict(stage=stage, **{k: pct(by[k]) if k in by else "–" for k in pdata.PARTS}))
        out.append(dict(case=c["case"], config=c["config"], stages=stages,
                        **{k: pct(parts[k]) if k in parts else "–" for k in pdata.PARTS}))
    return out


def _overhead_view(m: Merged, p: pd.DataFrame) -> dict:
    profiled, without = pdata.overhead(m, p)
    rows = [dict(case=f"{r['model']} {r['resolution']}", config=r["config"], source=text(r.get("profile_source")),
                 median=fnum(r.get("latency_ms_median")), profiled=fnum(r.get("profiled_ms")),
                 overhead=signed_pct(r.get("profile_overhead")))
            for r in profiled.sort_values(["config", "model", "pixels"], kind="stable").to_dict("records")]
    no = [dict(case=f"{r['model']} {r['resolution']}", config=r["config"], status=text(r["status"]), why=r["why"])
          for r in without.sort_values(["config", "model", "pixels"], kind="stable").to_dict("records")]
    return dict(rows=rows, without=no)


def section(m: Merged, stage: Path) -> tuple[dict | None, list[Figure]]:
    """The section's view and its figures (drawn into `stage`), or (None, []) when no run has a profile."""
    if not pdata.has_profile(m):
        return None, []
    p = pdata.profile_table(m)
    k = pdata.kinds(p)
    cases = pdata.cases(p)
    several = cases["config"].nunique() > 1 if len(cases) else False
    figs = draw_all([(key, title, caption, lambda draw=draw: draw(k)) for key, title, caption, draw
                     in PROFILE_FIGURES], stage) if len(p) else []
    notes = [] if len(p) else ["the runs' profile rows match no ok case of the report (nothing to explain)"]
    view = dict(
        n_cases=len(cases), sources=sorted({text(s) for s in cases["source"]} - {""}) if len(cases) else [],
        figures=figure_view(figs), notes=notes,
        case_sentences=case_sentences(pdata.share_gaps(k), several),
        setting_sentences=setting_sentences(pdata.depthwise_rates(pdata.kind_rates(k))),
        top_ops=_top_ops_view(p, cases, len(cases) > 3) if len(p) else [],
        modules=_modules_view(p, cases) if len(p) else [], overhead=_overhead_view(m, p), top_n=pdata.TOP_N)
    return view, figs


def markdown(view: dict | None) -> list[str]:
    """The short version for the summary: the sentences, the profiler's overhead, the cases without a profile."""
    if view is None:
        return []
    e = md_escape
    lines = ["## Where the time goes", ""]
    lines += [f"- {e(x)}" for x in view["notes"]]
    said = view["case_sentences"][:MD_MAX_ROWS] + view["setting_sentences"]
    lines += [f"- {e(s['text'])}" for s in said]
    if len(view["case_sentences"]) > MD_MAX_ROWS:
        lines.append(f"- ({len(view['case_sentences']) - MD_MAX_ROWS} more cases in the HTML report)")
    if len(lines) > 2:
        lines.append("")
    rows = view["overhead"]["rows"]
    if rows:
        lines += ["Profiled pass against the timed median:", "",
                  markdown_table(["case", "setting", "profiler", "median ms", "profiled ms", "overhead"],
                                 [[r["case"], r["config"], r["source"], r["median"], r["profiled"], r["overhead"]]
                                  for r in rows[:MD_MAX_ROWS]], align="lllrrr"), ""]
    no = view["overhead"]["without"]
    if no:
        lines += [f"Cases without a profile ({len(no)}):", "",
                  markdown_table(["case", "setting", "status", "why"],
                                 [[r["case"], r["config"], r["status"], r["why"]] for r in no[:MD_MAX_ROWS]]), ""]
    if len(rows) > MD_MAX_ROWS or len(no) > MD_MAX_ROWS:
        lines += ["(more rows in the HTML report)", ""]
    return lines
