"""The history page: one self-contained HTML file, per case and metric the series across commits, the fitted levels,
the candidate steps and what the confirming A/B said. Rendered by the report's jinja2 setup (autoescape: commit
subjects and model names are users' text) with the figures inline as SVG."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from bench.analysis.report.plot_kit import apply_style, plt
from bench.files import atomic_write_text
from bench.history.steps import Step, fit, series

TEMPLATE = "history.html.j2"
CONFIRM_TEXT = {"slower": "confirmed", "": "not checked"}


def _svg(s: pd.DataFrame, metric: str, steps: list[Step]) -> str:
    """The series (points), the piecewise-constant fit (line) and the steps (dashed: candidate; red: confirmed)."""
    apply_style()
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    x, y = list(range(len(s))), list(s["value"])
    ax.plot(x, y, "o", ms=3.5, color="#0072B2", label="recorded")
    for left, right, level in fit(y):
        ax.hlines(level, left - 0.4, right - 0.6, color="0.25", lw=1.5)
    at = {c: i for i, c in enumerate(s["commit"])}
    for st in steps:
        if st.after in at:
            ax.axvline(at[st.after] - 0.5, color="#D55E00" if st.confirmed == "slower" else "0.55",
                       ls="-" if st.confirmed == "slower" else "--", lw=1.2)
    ax.set_xlabel("recorded commit (oldest first)")
    ax.set_ylabel("ms" if metric == "wall_ms" else "instructions / forward")
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.2, top=0.95)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog


def context(frame: pd.DataFrame, order: list[str], steps: list[Step], title: str) -> dict:
    """What the template shows; every sentence about a step is computed from it."""
    sections = []
    for (machine, case_id, metric), s in series(frame, order).items():
        mine = [st for st in steps if (st.machine, st.case_id, st.metric) == (machine, case_id, metric)]
        sections.append({
            "machine": machine, "case_id": case_id, "metric": metric, "points": len(s),
            "first": s["commit"].iloc[0][:10], "last": s["commit"].iloc[-1][:10], "svg": _svg(s, metric, mine),
            "steps": [{"before": st.before[:10], "after": st.after[:10], "stored": f"{st.ratio:.3f}x",
                       "ab": "-" if st.ab_ratio != st.ab_ratio else f"{st.ab_ratio:.3f}x",
                       "verdict": CONFIRM_TEXT.get(st.confirmed, f"rejected (A/B: {st.confirmed})"),
                       "confirmed": st.confirmed == "slower", "folder": st.ab_folder,
                       "subject": _subject(frame, st.after)} for st in mine]})
    confirmed = sum(st.confirmed == "slower" for st in steps)
    return {"title": title, "sections": sections, "n_commits": len(order), "n_steps": len(steps),
            "n_confirmed": confirmed, "n_checked": sum(bool(st.confirmed) for st in steps)}


def _subject(frame: pd.DataFrame, commit: str) -> str:
    rows = frame.loc[frame["commit"] == commit, "subject"].dropna()
    return str(rows.iloc[0]) if len(rows) else ""


def write_page(path: str | Path, frame: pd.DataFrame, order: list[str], steps: list[Step],
               title: str = "densebench history") -> Path:
    from bench.analysis.report.html import render_template

    atomic_write_text(path, render_template(TEMPLATE, context(frame, order, steps, title)))
    return Path(path)
