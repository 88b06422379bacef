"""`run_bench.py compare BASELINE CURRENT`: per-case ratio of medians, its CI, a test and a verdict.

BASELINE and CURRENT are named as `--resume` and `--baseline` name runs: a run id in the folder of run folders
(--out, default results/), a run folder, or a results.parquet / results.csv file; anything else is one line and
exit 2 before anything is loaded."""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.bounded_read import TABLE_MAX_BYTES, check_file
from bench.errors import UsageError

NAME = "compare"
RESULTS_FILES = ("results.parquet", "results.csv")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bench.analysis import compare  # for its docstring: it loads pandas and scipy

    p = sub.add_parser(NAME, help="compare two runs (ratio, CI, test, verdict); exit 1 on a regression",
                       description=(compare.__doc__ or "").split("\n\n")[0])
    accepted = "a run id in --out, a run folder or a results.parquet/.csv file"
    p.add_argument("baseline", metavar="BASELINE", help=f"the baseline run: {accepted}")
    p.add_argument("current", metavar="CURRENT", help=f"the current run: {accepted}")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="folder of run folders where run ids are looked up, as run's --out (default results/)")
    add_compare_options(p)
    p.set_defaults(func=main)
    return p


def add_compare_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of the comparison (bench.analysis.compare.run_compare's keywords)."""
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="minimum effect: flag a case only if the ratio of medians is beyond 1 +- this "
                             "(default 0.05 = 5%%)")
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="significance level of the Mann-Whitney test and of the (1-alpha) ratio CI "
                             "(default 0.01)")
    parser.add_argument("--normalize", action="store_true",
                        help="scale the current run by the ratio of the two runs' calibration rates per device "
                             "(corrects uniform machine speed drift only)")
    parser.add_argument("--allow-noisy", action="store_true",
                        help="judge cases measured on a busy machine (flagged noisy) instead of leaving them "
                             "'noisy' and exiting 3; the output says they were judged on noisy data")
    parser.add_argument("--markdown", metavar="FILE", help="also write a Markdown summary (CI step summary / PR)")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    return parser


def main(a: argparse.Namespace) -> int:
    """Resolve both runs (UsageError: one line, exit 2), then compare as bench.analysis.compare does."""
    from bench.analysis.compare import run_compare

    out = Path(a.out)
    baseline = resolve_run(a.baseline, out, "BASELINE")
    current = resolve_run(a.current, out, "CURRENT")
    return run_compare(baseline, current, threshold=a.threshold, alpha=a.alpha, normalize=a.normalize,
                       markdown=a.markdown, json_path=a.json, allow_noisy=a.allow_noisy)


def resolve_run(value: str, out: Path, flag: str) -> str:
    """The path of a run named by `value`: a run id in `out` first (as --resume reads it), else a run folder or a
    results file as given. Checked now, so that `run --baseline` refuses a bad name before measuring anything."""
    accepted = f"accepted: a run id from {out}/, a run folder or a results.parquet/.csv file"
    if not value or not value.strip():
        raise UsageError(f"{flag}: empty; {accepted}")
    candidates = list(dict.fromkeys([out / value, Path(value)]))
    for path in candidates:
        if path.exists() and not path.is_dir():  # a FIFO or a device is refused here, without being opened
            if path.suffix not in (".parquet", ".csv"):
                raise UsageError(f"{flag}: {path} is not a results file; {accepted}")
            try:
                check_file(path, limit=TABLE_MAX_BYTES, what="a results file", error=UsageError)
            except UsageError as e:
                raise UsageError(f"{flag}: {e}") from None
            return str(path)
        if path.is_dir():
            if not any((path / f).is_file() for f in RESULTS_FILES):
                raise UsageError(f"{flag}: {path} is not a run folder (no {' or '.join(RESULTS_FILES)} in it); "
                                 f"{accepted}")
            return str(path)
    raise UsageError(f"{flag}: no run {value!r} in {out}/ and no such folder or file; {accepted}")
