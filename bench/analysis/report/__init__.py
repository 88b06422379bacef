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
import errno
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from bench.files import atomic_write
from bench.results.store import RunFormatError

if TYPE_CHECKING:
    from bench.analysis.report.data import Merged
    from bench.analysis.report.plots import Figure

__all__ = ["write_report", "add_report_arguments", "cmd_report", "default_out", "parse_budgets", "unique_runs",
           "DEFAULT_BUDGETS"]

DEFAULT_BUDGETS = (33.0, 100.0)  # ms: a 30 fps frame, and an interactive response


def parse_budgets(value: str | Sequence[float]) -> tuple[float, ...]:
    """'33,100' (or numbers) -> (33.0, 100.0): positive, finite, each once, in order. ValueError (one line)
    otherwise."""
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else list(value)
    out: list[float] = []
    for t in items:
        try:
            b = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"--budgets: {t!r} is not a number; accepted: comma list of milliseconds > 0, "
                             "e.g. 33,100") from None
        if not (b > 0 and b != float("inf")):
            raise ValueError(f"--budgets: {t!r} is not a positive finite number of milliseconds")
        out.append(b)
    if not out:
        raise ValueError("--budgets: empty list; accepted: comma list of milliseconds > 0, e.g. 33,100")
    return tuple(dict.fromkeys(out))


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


def unique_runs(run_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Each run once, in the order given: a run named twice (the same folder, two spellings of its path, or the
    folder and its results file) is one run, so that one run given 50 times is reported as that run, not as "50
    runs merged" with every case 50 times over."""
    seen: set[str] = set()
    out: list[Path] = []
    for p in map(Path, run_dirs):
        key = os.path.realpath(p.parent if p.suffix in (".parquet", ".csv") and p.is_file() else p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


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


def write_report(run_dirs: list[Path], out_html: Path, budgets: Sequence[float] | str = DEFAULT_BUDGETS) -> Path:
    """Write the HTML report of `run_dirs` to `out_html`, the Markdown summary to <stem>.md and the figures to
    <stem>_figures/; `budgets`: the latency budgets (ms) of the budget view. Raises ValueError for a bad budget,
    RunFormatError for a run that cannot be read, OSError for a file that cannot be written. Returns out_html.

    All or nothing: the figures are drawn into a hidden folder beside the report and both texts go to temporaries
    (bench.files.atomic_write); only once everything is written are they renamed into place, so a report that
    fails at any step leaves the previous complete one (or nothing) and no temporary file or folder."""
    # imported here, not above: the CLI imports this package for its arguments, and these pull in matplotlib,
    # seaborn, jinja2 and (for the published numbers) torch
    from bench.analysis.report import data, html

    if not run_dirs:
        raise RunFormatError("no runs given")
    budgets = parse_budgets(budgets)
    out_html = Path(out_html)
    runs = data.load_runs(unique_runs(run_dirs))
    fig_dir = out_html.parent / f"{out_html.stem}_figures"
    made = not out_html.parent.exists()
    out_html.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{fig_dir.name}.", suffix=".tmp", dir=out_html.parent))
    try:
        ctx = _context(runs, data.merge_runs(runs), stage, fig_dir.name, out_html.name, budgets)
        texts = [(out_html.with_suffix(".md"), html.render_markdown(ctx)), (out_html, html.render_html(ctx))]
        _check_targets([p for p, _ in texts], fig_dir)
        _write_all(texts)
        _move_figures(stage, fig_dir)
        made = False
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not any(out_html.parent.iterdir()):
            out_html.parent.rmdir()  # the folder this failed report made for itself
    return out_html


def _context(runs: list, m: Merged, stage: Path, figures_dir: str, html_name: str,
             budgets: Sequence[float] = DEFAULT_BUDGETS) -> dict:
    """Everything the page and the summary show; the figures are drawn into `stage`."""
    from bench.analysis.report import case_table, data, decision, html, methodology, plots, profile_view, published

    sp, sp_notes = data.speedups(m)
    ex, ex_notes = data.scaling_exponents(m)
    refs, ref_notes = published.reference_models(m)
    figs = plots.build_figures(m, sp, stage)
    profile, profile_figs = profile_view.section(m, stage)
    title = ("Token-mixer benchmark: " + ", ".join(r.run_id for r in runs)) if len(runs) <= 3 else \
        f"Token-mixer benchmark: {len(runs)} runs merged"
    table = case_table.case_view(m)
    return dict(
        title=title, generated=html.now_utc(), runs=runs, n_cases=len(m.results), n_ok=len(m.ok),
        status_counts=data.status_counts(m),
        missing=_missing_notes(m, sp_notes + ex_notes, figs + profile_figs),
        health=data.health_warnings(m), warnings=decision.run_warnings(m, health=False),
        decision=decision.decision_view(m), budgets=decision.budget_view(m, budgets), min_n=decision.MIN_N,
        headline=html.headline(m, sp, ex), mobile_proxy=data.MOBILE_PROXY,
        figures=html.figure_view(figs), profile=profile, refs=html.reference_view(refs), ref_notes=ref_notes,
        table=table, method=methodology.methodology(m), figures_dir=figures_dir, html_name=html_name,
        table_meta=dict(columns=[dict(col=h["col"], label=h["label"], num=h["num"]) for h in table["headers"]],
                        runs=[r.run_id for r in runs]),
    )


def _check_targets(files: list[Path], fig_dir: Path) -> None:
    """A folder where a file goes (or the reverse) is refused before any rename, not half way through them."""
    for path in files:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if fig_dir.exists() and not fig_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(fig_dir))


def _write_all(texts: list[tuple[Path, str]]) -> None:
    """Each text to a temporary beside its file, nested so that every temporary is complete before the first
    rename: a failure while writing any of them leaves all the files as they were (atomic_write removes its
    temporary)."""
    if not texts:
        return
    (path, text), rest = texts[0], texts[1:]

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")  # UTF-8 whatever the locale: ×, …, names
        _write_all(rest)

    atomic_write(path, write)


def _move_figures(stage: Path, fig_dir: Path) -> None:
    """The new figure files into the figures folder (each a rename); the previous report's figures that this one
    no longer has are removed, so the folder holds this report's figures and nothing of ours besides."""
    from bench.analysis.report.plots import FIGURES
    from bench.analysis.report.profile_view import PROFILE_FIGURES

    new = sorted(p for p in stage.iterdir() if p.is_file())
    if new:
        fig_dir.mkdir(exist_ok=True)
    for p in new:
        os.replace(p, fig_dir / p.name)
    if not fig_dir.is_dir():
        return
    stale = {f"{key}{ext}" for key, *_ in FIGURES + PROFILE_FIGURES for ext in (".png", ".svg")} - \
        {p.name for p in new}
    for old in fig_dir.iterdir():
        if old.name in stale and old.is_file():
            old.unlink()


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", type=Path,
                        help="run folders (results/<run-id>) or their results.parquet/.csv; several runs, e.g. "
                             "from different hosts, are merged into one comparison")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default reports/<run-id>.html, or reports/merged-<ids>.html); "
                             "the Markdown summary <stem>.md and figures <stem>_figures/ go beside it")
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS), metavar="MS[,MS...]",
                        help="latency budgets in ms for the budget view: which models and settings fit each "
                             "(default %(default)s)")


def cmd_report(args: argparse.Namespace) -> int:
    """`run_bench.py report RUN [RUN ...] [--out X.html]`: exit 0, or 2 with one line on bad input."""
    runs = unique_runs(args.runs)
    out = args.out if getattr(args, "out", None) else default_out(runs)
    try:
        budgets = parse_budgets(getattr(args, "budgets", None) or DEFAULT_BUDGETS)
    except ValueError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    try:
        path = write_report(runs, out, budgets)
    except RunFormatError as e:
        print(f"report: error: {str(e).splitlines()[0] if str(e) else 'bad run'}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"report: error: cannot write {e.filename or out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"report: {path}  (summary {path.with_suffix('.md')}, figures {path.parent / (path.stem + '_figures')})")
    return 0
