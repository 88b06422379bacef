"""The case table's view for the page: html.case_table's rows and headers, plus which columns are shown by default
(the rest one click away in the column chooser, so the table fits 1400 px without scrolling sideways), the
counts the page header states (taken from the same rows, so that they agree) and the A/B view of cases measured in
more than one run (two_runs).

    table = case_table.case_view(m)   # in place of html.case_table(m): the same keys, and more
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.report import two_runs
from bench.analysis.report.data import CASE_KEY, Merged
from bench.analysis.report.html import case_table as _base_table

# shown at first: what a case is (model, setting, resolution), how it ended and its latency with its CI. The run
# and the host are added when the table has several of them.
DEFAULT_COLUMNS = ("model", "device_name", "backend", "precision", "batch", "threads", "resolution", "status",
                   "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high", "n", "noisy")


def default_columns(m: Merged) -> tuple[str, ...]:
    res = m.results
    extra = []
    if len(res) and res["run_id"].nunique() > 1:
        extra.append("run_id")
    if len(res) and res["host"].dropna().nunique() > 1:
        extra.append("host")
    return (*extra, *DEFAULT_COLUMNS)


def counts(m: Merged, table: dict) -> dict[str, Any]:
    """What the header says, from the table's own rows: rows, ok rows, each status (summing to the rows), the
    distinct cases (a case measured in several runs counted once) and the ok cases with a latency that the
    headline and figures use (m.ok: one row per case)."""
    rows = table["rows"]
    by_status: dict[str, int] = {}
    for r in rows:
        s = r["by"].get("status", "")
        by_status[s] = by_status.get(s, 0) + 1
    res = m.results
    distinct = int(len(res.drop_duplicates(list(CASE_KEY)))) if len(res) else 0
    no_latency = 0
    if len(res):
        lat = pd.to_numeric(res["latency_ms_median"], errors="coerce")
        no_latency = int(((res["status"] == "ok") & ~(np.isfinite(lat) & (lat > 0))).sum())
    return dict(rows=len(rows), ok=sum(1 for r in rows if r["ok"]), distinct=distinct, used=len(m.ok),
                repeated=len(rows) - distinct, no_latency=no_latency, runs=len(m.runs),
                statuses=sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0])))


def case_view(m: Merged) -> dict[str, Any]:
    """html.case_table(m) with `default` on each header (and `defaults`, the list), `counts` and `ab`."""
    table = _base_table(m)
    shown = default_columns(m)
    for h in table["headers"]:
        h["default"] = h["col"] in shown
    table["defaults"] = [h["col"] for h in table["headers"] if h["default"]]
    table["counts"] = counts(m, table)
    table["ab"] = two_runs.view(m)
    return table
