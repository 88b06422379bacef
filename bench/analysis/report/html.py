"""Render the report: view models (formatted strings) -> jinja2 HTML (autoescape on) and a Markdown summary.

Escaping is never done by hand here: jinja2 escapes every value in the page (and `|tojson` the JSON block the
table script reads), bench.text escapes every Markdown cell.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from bench.analysis.report import decision, int8_view, profile_view, ran_where, readings, runtimes
from bench.analysis.report.data import MOBILE_PROXY, Merged
from bench.analysis.report.formatting import ci_label, ci_text, fnum, missing
from bench.schema import STATUSES
from bench.text import markdown_table, md_escape

TEMPLATES = Path(__file__).resolve().parent / "templates"

# The case table: (column, header, kind). kind: "s" text, "n" number (with decimals), "i" integer, "b" bool.
TABLE_COLUMNS = (
    ("run_id", "run", "s"), ("host", "host", "s"), ("model", "model", "s"), ("variant", "mixer", "s"),
    ("level", "level", "s"), ("device_name", "device", "s"), ("backend", "backend", "s"),
    ("precision", "precision", "s"), ("batch", "batch", "i"), ("threads", "threads", "i"),
    ("resolution", "resolution", "s"), ("status", "status", "s"), ("reason", "reason", "s"),
    ("latency_ms_median", "median ms", "n"), ("latency_ms_ci_low", "CI low", "n"),
    ("latency_ms_ci_high", "CI high", "n"), ("latency_ms_ci_level", "CI level", "p"), ("n", "samples", "i"),
    ("repeats", "processes", "i"), ("design", "design", "s"),
    ("latency_ms_repeat_cv", "process CV %", "n"), ("converged", "converged", "b"),
    ("noisy", "busy machine", "b"), ("noisy_reason", "machine during the case", "s"),
    ("throughput_ips", "images/s", "n"), ("peak_mem_mb", "peak MB", "n"), ("macs", "GMACs", "g"),
    ("gmacs_per_s", "GMAC/s", "n"), ("frac_of_peak", "of peak", "p"), ("energy_j_per_image", "J/image", "n"),
    ("rel_err", "rel. err", "e"), ("numerics_ok", "numerics ok", "b"), ("first_bad_block", "first bad block", "s"),
    ("delegated_macs_share", "MACs delegated", "p"), ("delegated_ops_share", "ops delegated", "p"),
    ("fallback_ops", "fell back", "s"), ("int8_macs_share", "int8 MACs", "p"), ("build_s", "build s", "n"),
)


def _cell(v: Any, kind: str) -> tuple[str, str]:
    """(display text, sort value) of one table cell."""
    if missing(v):
        return "", ""
    if kind == "i":
        return str(int(v)), str(int(v))
    if kind == "b":
        return ("yes" if bool(v) else "no"), ("1" if bool(v) else "0")
    if kind == "g":
        return fnum(float(v) / 1e9), repr(float(v))
    if kind == "p":
        return f"{100 * float(v):.1f}%", repr(float(v))
    if kind == "e":
        return f"{float(v):.1e}", repr(float(v))
    if kind == "n":
        return fnum(v), repr(float(v))
    return str(v), str(v)


def _status_class(s: Any) -> str:
    return f"st-{s}" if isinstance(s, str) and s in STATUSES else "st-other"


def case_table(m: Merged) -> dict:
    rows = []
    res = m.results
    if len(res):
        res = res.sort_values(["config", "model", "pixels", "batch"], kind="stable", na_position="last")
    for r in (res.to_dict("records") if len(res) else []):
        cells = []
        for col, _, kind in TABLE_COLUMNS:
            text, sort = _cell(r.get(col), kind)
            cells.append(dict(text=text, sort=sort, num=kind != "s", col=col))
        by = {c["col"]: c["text"] for c in cells}
        by["setting"] = str(r.get("config") or "")
        rows.append(dict(cells=cells, by=by, status_class=_status_class(r.get("status")),
                         ok=r.get("status") == "ok", mobile=bool(r.get("mobile_proxy")), noisy=bool(r.get("noisy"))))
    return dict(headers=[dict(col=c, label=lab, num=k != "s") for c, lab, k in TABLE_COLUMNS], rows=rows)


def headline(m: Merged, sp: pd.DataFrame, ex: pd.DataFrame) -> list[dict]:
    """Per device setting: the speedup matrix (base model x resolution, per baseline) and the exponent table."""
    configs = list(dict.fromkeys(list(sp["config"]) + list(ex["config"])))
    # order: by device, then the rest of the label
    configs.sort()
    out = []
    for c in configs:
        s = sp[sp["config"] == c]
        e = ex[ex["config"] == c]
        src = s if len(s) else e
        mobile = bool(src["mobile_proxy"].iloc[0]) if len(src) else False
        tables = []
        for baseline in ("softmax", "large-kernel"):
            b = s[s["baseline"] == baseline]
            if not len(b):
                continue
            res = (b[["resolution", "megapixels"]].drop_duplicates().sort_values("megapixels")["resolution"].tolist())
            body = []
            for base, g in b.groupby("base", sort=True):
                cells = []
                for rr in res:
                    x = g[g["resolution"] == rr]
                    if not len(x):
                        cells.append(dict(text="–", ci="", cls="na", title="not measured or not ok"))
                        continue
                    x = x.iloc[0]
                    cells.append(_speedup_cell(x))
                body.append(dict(base=base, cells=cells))
            tables.append(dict(baseline=baseline, resolutions=res, rows=body))
        exps = []
        for r in e.sort_values(["level", "model"]).to_dict("records"):
            exps.append(dict(model=r["model"], variant=r["variant"], exponent=fnum(r["exponent"]),
                             se=fnum(r["se"], 2), ci=ci_text(r["ci_low"], r["ci_high"]),
                             r2=f"{r['r2']:.3f}" if np.isfinite(r["r2"]) else "", n=int(r["n_points"]),
                             resolutions=r["resolutions"], reading=readings.exponent_reading(r)))
        out.append(dict(config=c, mobile=mobile, speedups=tables, exponents=exps))
    return out


def _speedup_cell(x: pd.Series) -> dict:
    """One headline cell: the ratio, its CI with the confidence it reaches, win/loss/tie by the CI; a flagged
    side (fewer than MIN_N samples, no CI, or measured on a busy machine, bench.health) makes it neither a win nor
    a loss, and a busy one is outlined and marked "!"."""
    noisy = bool(x.get("noisy")) if not missing(x.get("noisy")) else False
    verdict = readings.speedup_verdict(x["speedup"], x["ci_low"], x["ci_high"], x.get("n_min"), noisy)
    cls = {"win": "win", "loss": "loss", "tie": "tie", "busy machine": "flag"}.get(verdict, "na")
    title = f"{x['baseline_model']}: {fnum(x['baseline_ms'])} ms; {x['target_model']}: {fnum(x['target_ms'])} ms"
    if verdict in ("no CI", "few samples"):
        title += f"; {verdict} (fewer than {readings.MIN_N} samples or no CI): neither a win nor a loss"
    ci = ci_label(x["ci_low"], x["ci_high"], x.get("ci_level"), n=x.get("n_min"),
                  at_least=x.get("ci_method") == "bounds")
    return dict(text=f"{fnum(x['speedup'])}×" + (" !" if noisy else ""), ci=ci, cls=cls + (" noisy" if noisy else ""),
                title=title + ("; a side was measured on a busy machine (see noisy_reason): neither a win nor a "
                               "loss" if noisy else ""))


def gnum(v: Any) -> str:
    """A published number as printed in the paper (no padding zeros)."""
    return "" if missing(v) else f"{float(v):,.4g}"


def reference_view(refs: list[dict]) -> list[dict]:
    out = []
    for r in refs:
        measured = []
        for x in r["measured"]:
            if x["status"] == "ok" and not missing(x["latency_ms"]):
                ci = ci_label(x.get("ci_low"), x.get("ci_high"), x.get("ci_level"), n=x.get("n"))
                measured.append(f"{fnum(x['latency_ms'])} ms {ci} on {x['config']}".replace("  ", " "))
            else:
                measured.append(f"{x['status']} on {x['config']}" + (f" ({x['reason']})" if x["reason"] else ""))
        out.append(dict(
            name=r["name"], family=r["family"], dataset=r["dataset"], input_size=r["input_size"],
            pub_params=gnum(r["pub_params_m"]) + "M" if not missing(r["pub_params_m"]) else "",
            pub_macs=gnum(r["pub_macs_g"]) + "G" if not missing(r["pub_macs_g"]) else "",
            pub_latency=[dict(ms=gnum(x["ms"]), hardware=x["hardware"], setting=x["setting"])
                         for x in r["pub_latency"]],
            pub_miou=gnum(r["pub_miou"]), source=r["pub_source"],
            params=fnum(r["params_m"]) + "M" if r["params_m"] is not None else "",
            macs=fnum(r["macs_g"]) + "G" if r["macs_g"] is not None else "",
            params_dev=_dev(r["params_dev_pct"], r["counted_as"]), macs_dev=_dev(r["macs_dev_pct"], r["counted_as"]),
            measured=measured if measured else (["not measured at the published input size"] if r["in_results"]
                                                else ["not measured in these runs"])))
    return out


def _dev(pct: float | None, counted_as: str) -> str:
    """Deviation from the published figure (models.zoo's rule); `counted_as`: the configuration the paper counted
    on, when not this one."""
    if missing(pct):
        return ""
    return f"{float(pct):+.1f}%" + (f" (counted as {counted_as})" if counted_as else "")


def render_template(name: str, ctx: dict) -> str:
    """A template of the report's folder, autoescaped (every cell is data), strict about missing keys."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fnum"] = fnum
    return env.get_template(name).render(**ctx)


def render_html(ctx: dict) -> str:
    return render_template("report.html.j2", ctx)


# ---------------------------------------------------------------------------------------------------------------
# Markdown

MD_MAX_NOT_OK = 50


def _md_headline(dev: dict) -> list[str]:
    """One device setting of the headline: its speedup tables and its scaling exponents."""
    e = md_escape
    lines = [f"## {e(dev['config'])}" + (f" ({e(MOBILE_PROXY)})" if dev["mobile"] else ""), ""]
    for t in dev["speedups"]:
        rows = [[row["base"], *(f"{c['text']} {c['ci']}".strip() for c in row["cells"])] for row in t["rows"]]
        lines += [f"Speedup of msla over {e(t['baseline'])} (baseline / msla median; under it the CI, 95% unless "
                  "its level is shown; a cell marked ! has a side measured on a busy machine, no verdict):", "",
                  markdown_table(["model", *t["resolutions"]], rows, align="l" + "r" * len(t["resolutions"])), ""]
    if dev["exponents"]:
        rows = [[x["model"], x["exponent"], x["se"], x["ci"], x["reading"], x["resolutions"]]
                for x in dev["exponents"]]
        lines += ["Scaling exponent of latency vs pixels (log-log least squares):", "",
                  markdown_table(["model", "exponent", "SE", "95% CI", "reading", "resolutions"], rows, align="lrr"),
                  ""]
    return lines


def _md_not_ok(table: dict) -> list[str]:
    bad = [r for r in table["rows"] if not r["ok"]]
    if not bad:
        return []
    cols = ("model", "setting", "resolution", "status", "reason")
    lines = [f"## Cases not ok ({len(bad)})", "",
             markdown_table(list(cols), [[r["by"][c] for c in cols] for r in bad[:MD_MAX_NOT_OK]])]
    if len(bad) > MD_MAX_NOT_OK:
        lines.append(f"\n({len(bad) - MD_MAX_NOT_OK} more in the HTML report)")
    return lines + [""]


def _md_ab(ab: dict | None) -> list[str]:
    """Cases measured in two runs, side by side (two_runs' rows)."""
    if not ab or not ab["rows"]:
        return []
    cols = ["model", "setting", "resolution", "A", "B", "B / A", "reading"]
    rows = [[r["model"], r["setting"], r["resolution"], f"{r['a']['ms']} {r['a']['ci']}".strip(),
             f"{r['b']['ms']} {r['b']['ci']}".strip(), f"{r['ratio']} {r['ratio_ci']}".strip(), r["reading"]]
            for r in ab["rows"][:MD_MAX_NOT_OK]]
    lines = [f"## The same cases in two runs (A/B, {ab['n']}: {ab['summary']})", "", markdown_table(cols, rows)]
    if ab["n"] > MD_MAX_NOT_OK:
        lines.append(f"\n({ab['n'] - MD_MAX_NOT_OK} more in the HTML report)")
    return lines + [""]


def _md_noisy(table: dict) -> list[str]:
    noisy = [r for r in table["rows"] if r["noisy"]]
    if not noisy:
        return []
    cols = ("model", "setting", "resolution", "noisy_reason")
    lines = [f"## Cases measured on a busy machine ({len(noisy)})", "",
             markdown_table(list(cols), [[r["by"][c] for c in cols] for r in noisy[:MD_MAX_NOT_OK]])]
    if len(noisy) > MD_MAX_NOT_OK:
        lines.append(f"\n({len(noisy) - MD_MAX_NOT_OK} more in the HTML report)")
    return lines + [""]


def render_markdown(ctx: dict) -> str:
    e = md_escape
    lines = [f"# {e(ctx['title'])}", "", f"Runs: {', '.join(e(r['run_id']) for r in ctx['method']['runs'])}  ",
             f"Cases: {ctx['n_cases']} ({', '.join(f'{e(k)}: {v}' for k, v in ctx['status_counts'])})", ""]
    if ctx["health"]:
        lines += ["**Warning: measured on a busy machine**", ""] + [f"- {e(x)}" for x in ctx["health"]] + [""]
    if ctx.get("warnings"):
        lines += ["**Warnings about the run**", ""] + [f"- {e(x)}" for x in ctx["warnings"]] + [""]
    if ctx["missing"]:
        lines += ["**What is missing**", ""] + [f"- {e(x)}" for x in ctx["missing"]] + [""]
    lines += decision.markdown(ctx.get("decision") or [], ctx.get("budgets") or [])
    lines += runtimes.markdown(ctx.get("runtimes"), int8_view.DISCLOSURE)
    lines += ran_where.markdown(ctx.get("ran_where"))
    lines += int8_view.markdown(ctx.get("int8"))
    for dev in ctx["headline"]:
        lines += _md_headline(dev)
    lines += profile_view.markdown(ctx.get("profile"))
    lines += _md_ab(ctx["table"].get("ab"))
    lines += _md_not_ok(ctx["table"])
    lines += _md_noisy(ctx["table"])
    lines.append(f"Figures: {e(ctx['figures_dir'])} (PNG and SVG). Full report: {e(ctx['html_name'])}")
    return "\n".join(lines) + "\n"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


