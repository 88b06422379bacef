"""What one report shows, gathered from the merged runs: every view of the page (headline, decision, budgets,
figures, profile, published numbers, case table, methodology) in one context dict, which html renders as the page
and as the Markdown summary.

Apart from the package's entry point (bench.analysis.report.write_report, which owns the files) because this is
where matplotlib, seaborn, jinja2 and (for the published numbers) torch come in: the package imports this module
only when a report is written, so that `import bench.analysis.report` stays cheap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bench.analysis.report import (case_table, data, decision, figures, html, int8_view, methodology, profile_view,
                                   published, ran_where, runtimes)
from bench.analysis.report.data import Merged
from bench.analysis.report.figures import Figure
from bench.analysis.report.scaling import scaling_exponents
from bench.results.store import Run

FIGURE_KEYS = tuple(key for key, *_ in figures.FIGURES + profile_view.PROFILE_FIGURES)  # every figure file's stem


def missing_notes(m: Merged, notes: list[str], figs: list[Figure]) -> list[str]:
    """What the reader must know is absent or not comparable, most basic first, each once."""
    out: list[str] = []
    if not len(m.results):
        out.append("the runs have no rows at all")
    elif not len(m.ok):
        out.append("no case finished ok: no latencies to compare (see the case table for each status and reason)")
    n_bad = int((m.results["status"] != "ok").sum()) if len(m.results) else 0
    if n_bad:
        out.append(f"{n_bad} case(s) not ok: their status and reason are in the case table")
    if len(m.results) and len(m.ok) == 1:
        out.append("a single ok case: no comparison, speedup or scaling fit is possible")
    out += notes + m.notes
    out += [f"figure '{f.title}' not shown: {f.missing}" for f in figs if f.missing]
    return list(dict.fromkeys(out))


def context(runs: list[Run], m: Merged, stage: Path, figures_dir: str, html_name: str,
            budgets: Sequence[float]) -> dict:
    """Everything the page and the summary show; the figures are drawn into `stage`."""
    sp, sp_notes = data.speedups(m)
    ex, ex_notes = scaling_exponents(m)
    refs, ref_notes = published.reference_models(m)
    figs = figures.build_figures(m, sp, stage)
    profile, profile_figs = profile_view.section(m, stage)
    title = ("Token-mixer benchmark: " + ", ".join(r.run_id for r in runs)) if len(runs) <= 3 else \
        f"Token-mixer benchmark: {len(runs)} runs merged"
    table = case_table.case_view(m)
    return dict(
        title=title, generated=html.now_utc(), runs=runs, n_cases=len(m.results), n_ok=len(m.ok),
        status_counts=data.status_counts(m),
        missing=missing_notes(m, sp_notes + ex_notes, figs + profile_figs),
        health=data.health_warnings(m), warnings=decision.run_warnings(m, health=False),
        decision=decision.decision_view(m), budgets=decision.budget_view(m, budgets), min_n=decision.MIN_N,
        runtimes=runtimes.view(m), ran_where=ran_where.view(m), int8=int8_view.view(m),
        headline=html.headline(m, sp, ex), mobile_proxy=data.MOBILE_PROXY,
        figures=figures.figure_view(figs), profile=profile, refs=html.reference_view(refs), ref_notes=ref_notes,
        table=table, method=methodology.methodology(m), figures_dir=figures_dir, html_name=html_name,
        table_meta=dict(columns=[dict(col=h["col"], label=h["label"], num=h["num"]) for h in table["headers"]],
                        runs=[r.run_id for r in runs]),
    )


def texts(runs: list[Run], stage: Path, out_html: Path, figures_dir: str,
          budgets: Sequence[float]) -> list[tuple[Path, str]]:
    """(path, text) of the Markdown summary and the HTML page of `runs`, the figures drawn into `stage`."""
    ctx = context(runs, data.merge_runs(runs), stage, figures_dir, out_html.name, budgets)
    return [(out_html.with_suffix(".md"), html.render_markdown(ctx)), (out_html, html.render_html(ctx))]
