"""HTML design-review report (+ Markdown summary and PNG/SVG figures) of one or more saved runs.

    write_report([results/<run-a>, results/<run-b>], reports/x.html)
      -> reports/x.html (self-contained: figures embedded, inline sort/filter script, no network)
         reports/x.md (Markdown summary for PR comments and CI step summaries)
         reports/x_figures/*.png, *.svg

Runs from different hosts merge into one comparison: rows keep their run, host and device; speedups only pair rows
of the same device and setting.

This module owns the inputs (which runs, which budgets, where the report goes) and the files, written all or
nothing; `page` gathers what the report shows and is imported only when one is written (it brings matplotlib and
jinja2), so the report command's arguments are checked without them. Its command line is
bench/commands/report.py.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from bench.files import atomic_write
from bench.results.store import RunFormatError, load_run

__all__ = ["write_report", "default_out", "parse_budgets", "unique_runs", "DEFAULT_BUDGETS"]

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


def write_report(run_dirs: list[Path], out_html: Path, budgets: Sequence[float] | str = DEFAULT_BUDGETS) -> Path:
    """Write the HTML report of `run_dirs` to `out_html`, the Markdown summary to <stem>.md and the figures to
    <stem>_figures/; `budgets`: the latency budgets (ms) of the budget view. Raises ValueError for a bad budget,
    RunFormatError for a run that cannot be read, OSError for a file that cannot be written. Returns out_html.

    All or nothing: the figures are drawn into a hidden folder beside the report and both texts go to temporaries
    (bench.files.atomic_write); only once everything is written are they renamed into place, so a report that
    fails at any step leaves the previous complete one (or nothing) and no temporary file or folder."""
    # imported here, not above: page pulls in matplotlib, seaborn, jinja2 and (for the published numbers) torch,
    # which the CLI's report command and the checks of its arguments do without
    from bench.analysis.report import page

    if not run_dirs:
        raise RunFormatError("no runs given")
    budgets = parse_budgets(budgets)
    out_html = Path(out_html)
    runs = [load_run(p) for p in unique_runs(run_dirs)]
    fig_dir = out_html.parent / f"{out_html.stem}_figures"
    made = not out_html.parent.exists()
    out_html.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{fig_dir.name}.", suffix=".tmp", dir=out_html.parent))
    try:
        texts = page.texts(runs, stage, out_html, fig_dir.name, budgets)
        _check_targets([p for p, _ in texts], fig_dir)
        _write_all(texts)
        _move_figures(stage, fig_dir, page.FIGURE_KEYS)
        made = False
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not any(out_html.parent.iterdir()):
            out_html.parent.rmdir()  # the folder this failed report made for itself
    return out_html


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


def _move_figures(stage: Path, fig_dir: Path, keys: Sequence[str]) -> None:
    """The new figure files into the figures folder (each a rename); the previous report's figures that this one
    no longer has (`keys`: the stems of every figure a report can draw) are removed, so the folder holds this
    report's figures and nothing of ours besides."""
    new = sorted(p for p in stage.iterdir() if p.is_file())
    if new:
        fig_dir.mkdir(exist_ok=True)
    for p in new:
        os.replace(p, fig_dir / p.name)
    if not fig_dir.is_dir():
        return
    stale = {f"{key}{ext}" for key in keys for ext in (".png", ".svg")} - {p.name for p in new}
    for old in fig_dir.iterdir():
        if old.name in stale and old.is_file():
            old.unlink()
