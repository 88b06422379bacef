"""What ran where (issue 22): per graph-runtime case, the share of the ops and of the MACs the delegate or plugin
ran (XNNPACK for executorch, the CPU plugin for openvino), the ops that fell back, and the backend's verdict.

A case whose verdict is not "delegate" measured the fallback (ExecuTorch's portable kernels, say), not the delegate:
it is flagged in the table and named in a reading, with the verdict the backend computed from its own graph
(bench.backends.delegation, recorded in backend_info["delegation"]). The analysis never recomputes that verdict:
it has neither the graph nor the threshold, only what the run recorded. A row without a verdict says so.

Rows are read from the result columns (delegated_ops_share, delegated_macs_share, fallback_ops) with
backend_info["delegation"] filling what a column lacks. Strings only come out of here; escaping is the page's
(jinja2 autoescape) and the summary's (bench.text.md_escape).
"""
from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from bench.analysis.report.data import Merged
from bench.analysis.report.formatting import missing, number, text
from bench.cases import case_label
from bench.text import markdown_table, md_escape

DELEGATE = "delegate"  # the verdict of a case whose arithmetic ran in the delegate
NO_VERDICT = "verdict not recorded"
MD_MAX_ROWS = 60


def backend_info(row: dict) -> dict:
    """The row's backend_info as a dict ({} when blank, not JSON or not an object: a foreign row reads as one
    without a record, never as an error of the report)."""
    raw = row.get("backend_info")
    if missing(raw) or not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        out = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return out if isinstance(out, dict) else {}


def delegation_record(row: dict) -> dict | None:
    """backend_info["delegation"] when it is a dict, else None."""
    d = backend_info(row).get("delegation")
    return d if isinstance(d, dict) else None


def _fallback_text(fallback: Any) -> str:
    """{"aten.split": 1, "aten.expand_copy": 4} -> "aten.expand_copy x4, aten.split x1" (as the column reads)."""
    if not isinstance(fallback, dict):
        return ""
    items = [(str(k), int(v)) for k, v in fallback.items() if isinstance(v, (int, float)) and not math.isnan(v)]
    return ", ".join(f"{op} x{n}" for op, n in sorted(items, key=lambda kv: (-kv[1], kv[0])))


def verdict(row: dict) -> str:
    """The backend's verdict on the case: "delegate", a sentence starting "not a measurement of ...", or
    NO_VERDICT; "" for a row with no delegation data at all."""
    d = delegation_record(row)
    if d is not None and text(d.get("verdict")):
        return text(d.get("verdict"))
    has_share = math.isfinite(number(row.get("delegated_macs_share"))) or \
        math.isfinite(number(row.get("delegated_ops_share")))
    return NO_VERDICT if (d is not None or has_share) else ""


def flagged(row: dict) -> bool:
    """A case with a recorded verdict other than "delegate": it measured the fallback."""
    v = verdict(row)
    return bool(v) and v not in (DELEGATE, NO_VERDICT)


def _share(row: dict, col: str, d: dict | None, key: str) -> float:
    x = number(row.get(col))
    return x if math.isfinite(x) or d is None else number(d.get(key))


def records(m: Merged) -> list[dict[str, Any]]:
    """Every row with delegation data (a share column or a backend_info record), ordered by setting, model and
    size: its label, delegate, shares, fallback ops, verdict and whether it is flagged."""
    res = m.results
    if not len(res):
        return []
    res = res.sort_values(["config", "model", "pixels"], kind="stable", na_position="last")
    out = []
    for r in res.to_dict("records"):
        v = verdict(r)
        if not v:
            continue
        d = delegation_record(r)
        fallback = text(r.get("fallback_ops")) or _fallback_text((d or {}).get("fallback"))
        out.append(dict(row=r, label=case_label(r), delegate=text((d or {}).get("runtime")) or text(r.get("backend")),
                        ops_share=_share(r, "delegated_ops_share", d, "ops_share"),
                        macs_share=_share(r, "delegated_macs_share", d, "macs_share"),
                        fallback=fallback, verdict=v, flagged=flagged(r)))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "not recorded"


def _span(xs: list[float]) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "not recorded"
    lo, hi = min(xs), max(xs)
    return _pct(lo) if _pct(lo) == _pct(hi) else f"{_pct(lo)} to {_pct(hi)}"


def readings(recs: list[dict]) -> list[str]:
    """Computed sentences: one per backend (how many cases, the spans of the shares, how many measured the
    fallback), then one per flagged case naming it with the backend's verdict."""
    out = []
    by: dict[str, list[dict]] = {}
    for x in recs:
        by.setdefault(f"{text(x['row'].get('backend'))} ({x['delegate']})", []).append(x)
    for name, xs in by.items():
        bad = sum(x["flagged"] for x in xs)
        unknown = sum(x["verdict"] == NO_VERDICT for x in xs)
        out.append(f"{name}: {len(xs)} case{'s' if len(xs) != 1 else ''}, MACs in the delegate "
                   f"{_span([x['macs_share'] for x in xs])}, ops {_span([x['ops_share'] for x in xs])}; "
                   + (f"{bad} measured the fallback, not the delegate" if bad else "every verdict is the delegate"
                      if not unknown else "no case measured the fallback")
                   + (f"; {unknown} without a recorded verdict" if unknown else "") + ".")
    out += [f"{x['label']} is {x['verdict']}" + ("" if x["verdict"].endswith(".") else ".")
            for x in recs if x["flagged"]]
    return out


def view(m: Merged) -> dict | None:
    """The section's strings, or None when no row has delegation data (no section)."""
    recs = records(m)
    if not recs:
        return None
    rows = [dict(model=text(x["row"].get("model")), resolution=text(x["row"].get("resolution")),
                 setting=text(x["row"].get("config")), status=text(x["row"].get("status")), delegate=x["delegate"],
                 ops=_pct(x["ops_share"]), macs=_pct(x["macs_share"]), fallback=x["fallback"] or "none",
                 verdict=x["verdict"], flagged=x["flagged"]) for x in recs]
    return dict(rows=rows, readings=readings(recs), n_flagged=sum(x["flagged"] for x in recs))


def markdown(v: dict | None) -> list[str]:
    """The section in the Markdown summary: readings, then the table (cells escaped by markdown_table)."""
    if not v:
        return []
    rows = [[r["model"], r["setting"], r["resolution"], r["delegate"], r["ops"], r["macs"], r["fallback"],
             "FALLBACK" if r["flagged"] else "", r["verdict"]] for r in v["rows"]]
    lines = ["## What ran where (graph runtimes)", ""] + [f"- {md_escape(s)}" for s in v["readings"]] + [""]
    lines += [markdown_table(["model", "setting", "resolution", "delegate", "ops delegated", "MACs delegated",
                              "fell back", "flag", "verdict"], rows[:MD_MAX_ROWS], align="llllrr"), ""]
    if len(rows) > MD_MAX_ROWS:
        lines += [f"({len(rows) - MD_MAX_ROWS} more in the HTML report)", ""]
    return lines


def frame(m: Merged) -> pd.DataFrame:
    """The records as a frame (tests and tools read it): label, delegate, shares, fallback, verdict, flagged."""
    return pd.DataFrame([{k: v for k, v in x.items() if k != "row"} for x in records(m)])
