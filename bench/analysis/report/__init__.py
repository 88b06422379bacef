"""HTML design-review report (+ Markdown summary and PNG/SVG figures) of one or more saved runs.

    write_report([results/<run-a>, results/<run-b>], reports/x.html)
      -> reports/x.html (self-contained: figures embedded, inline sort/filter script, no network)
         reports/x.md (Markdown summary for PR comments and CI step summaries)
         reports/x_figures/*.png, *.svg

Runs from different hosts merge into one comparison: rows keep their run, host and device; speedups only pair rows
of the same device and setting.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.files import atomic_write
from bench.results.store import RunFormatError

if TYPE_CHECKING:
    from bench.analysis.report.data import Merged
    from bench.analysis.report.plots import Figure

__all__ = ["write_report", "add_report_arguments", "cmd_report", "default_out"]


def default_out(run_dirs: list[Path], reports_dir: Path = Path("reports")) -> Path:
    """reports/<run-id>.html for one run; reports/merged-<ids>.html for several."""
    ids = [Path(p).parent.name if Path(p).suffix in (".parquet", ".csv") else Path(p).name for p in run_dirs]
    ids = [re.sub(r"[^A-Za-z0-9_.-]", "_", i) or "run" for i in ids]
    if len(ids) == 1:
        return reports_dir / f"{ids[0]}.html"
    name = "merged-" + "+".join(ids)
    if len(name) > 100:
        h = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:8]
        name = f"merged-{ids[0][:40]}-and-{len(ids) - 1}-more-{h}"
    return reports_dir / f"{name}.html"


def _missing_notes(m: Merged, notes: list[str], figs: list[Figure]) -> list[str]:
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


def write_report(run_dirs: list[Path], out_html: Path) -> Path:
    """Write the HTML report of `run_dirs` to `out_html`, the Markdown summary to <stem>.md and the figures to
    <stem>_figures/. Raises RunFormatError for a run that cannot be read. Returns out_html."""
    # imported here, not above: the CLI imports this package for its arguments, and these pull in matplotlib,
    # seaborn, jinja2 and (for the published numbers) torch
    from bench.analysis.report import data, html, methodology, plots, published

    if not run_dirs:
        raise RunFormatError("no runs given")
    out_html = Path(out_html)
    runs = data.load_runs([Path(p) for p in run_dirs])
    m = data.merge_runs(runs)
    sp, sp_notes = data.speedups(m)
    ex, ex_notes = data.scaling_exponents(m)
    refs, ref_notes = published.reference_models(m)
    fig_dir = out_html.parent / f"{out_html.stem}_figures"
    figs = plots.build_figures(m, sp, fig_dir)
    title = ("Token-mixer benchmark: " + ", ".join(r.run_id for r in runs)) if len(runs) <= 3 else \
        f"Token-mixer benchmark: {len(runs)} runs merged"
    table = html.case_table(m)
    ctx = dict(
        title=title, generated=html.now_utc(), runs=runs, n_cases=len(m.results), n_ok=len(m.ok),
        status_counts=data.status_counts(m), missing=_missing_notes(m, sp_notes + ex_notes, figs),
        health=data.health_warnings(m),
        headline=html.headline(m, sp, ex), mobile_proxy=data.MOBILE_PROXY,
        figures=html.figure_view(figs), refs=html.reference_view(refs), ref_notes=ref_notes,
        table=table, method=methodology.methodology(m), figures_dir=fig_dir.name, html_name=out_html.name,
        table_meta=dict(columns=[dict(col=h["col"], label=h["label"], num=h["num"]) for h in table["headers"]],
                        runs=[r.run_id for r in runs]),
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    _write_utf8(out_html, html.render_html(ctx))
    _write_utf8(out_html.with_suffix(".md"), html.render_markdown(ctx))
    return out_html


def _write_utf8(path: Path, text: str) -> None:
    """The page and the summary hold non-ASCII (×, …, names): UTF-8 whatever the locale, written atomically."""
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", type=Path,
                        help="run folders (results/<run-id>) or their results.parquet/.csv; several runs, e.g. "
                             "from different hosts, are merged into one comparison")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default reports/<run-id>.html, or reports/merged-<ids>.html); "
                             "the Markdown summary <stem>.md and figures <stem>_figures/ go beside it")


def cmd_report(args: argparse.Namespace) -> int:
    """`run_bench.py report RUN [RUN ...] [--out X.html]`: exit 0, or 2 with one line on bad input."""
    runs = list(args.runs)
    out = args.out if getattr(args, "out", None) else default_out(runs)
    try:
        path = write_report(runs, out)
    except RunFormatError as e:
        print(f"report: error: {str(e).splitlines()[0] if str(e) else 'bad run'}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"report: error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"report: {path}  (summary {path.with_suffix('.md')}, figures {path.parent / (path.stem + '_figures')})")
    return 0
