"""`run_bench.py ab`: is B slower than A? Both measured alternately in the same short processes (bench.ab)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.errors import PROG, UsageError
from bench.files import atomic_write_json, atomic_write_text

NAME = "ab"

DESCRIPTION = """\
Compare two builds of the same cases, A and B, measured in the same process: built from the same seed, fed the
same input, warmed up, then timed alternately in ABBA blocks (A B B A) for --process-time seconds. Machine drift
hits both alike and cancels; what is left varies from process to process, so many short processes are run,
interleaved over the cases, and each gives one value: the median over its ABBA cycles of log(B/A).

Decision (T = --threshold, m = log(1 + T/2), CI = the t interval of the mean per-process log ratio at
confidence 1 - alpha/K, K = the number of --checkpoints): slower if the CI is above m, faster if below -m,
unchanged if within (-m, m); looked at only at the checkpoints, a case stops at its first decision; undecided
once --max-time or the last checkpoint is reached without one. Long calls (a process of a few cycles): when the
processes show no process effect (ANOVA), the CI is taken over all their ABBA cycles (20% trimmed mean), so that
two minutes of 2-4 processes can decide; the reason says which. Results: OUT/ab-<date>-<time>-<rand>/ (ab.parquet,
ab_samples.parquet, meta.json).

Exit status: 0 no case slower and none failed (undecided cases included); 1 a case is slower, or failed (its
reason in the table's note: nothing was decided for it); 2 bad input (every output path is checked before anything
is measured); 130 interrupted.
"""

EPILOG = """\
examples:
  run_bench.py ab --a evit-b1:msla --b evit-b1:relu-linear --res 512 --threads 1
  run_bench.py ab --a block:msla --b my_change.py:build --res 1024     (build() returns an nn.Module)
  run_bench.py ab --a-rev HEAD~1 --models evit-b1:msla                  (the models at HEAD~1 vs the working tree)
  run_bench.py ab --a evit-b1:msla --b evit-b1:msla --backend-b compile (pairs of processes)
"""


def _side_arguments(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("sides")
    s.add_argument("--a", metavar="SIDE", help="A: a registered model name, or PATH.py:FUNCTION (a zero-argument "
                   "builder returning an nn.Module)")
    s.add_argument("--b", metavar="SIDE", help="B: as --a; with two model names B's case is A's with B's model")
    s.add_argument("--a-rev", nargs="?", const="HEAD~1", metavar="REV",
                   help="A: the same models at git revision REV (default HEAD~1), from a temporary worktree; B: "
                        "the working tree")
    s.add_argument("--b-rev", metavar="REV", help="with --a-rev: B at git revision REV too (its own temporary "
                   "worktree) instead of the working tree")
    s.add_argument("--repo", metavar="DIR", help="the git repository of --a-rev (default: this suite's own)")
    s.add_argument("--models", metavar="LIST", help="with --a-rev (default: evit-b1:msla,relu-linear,softmax,"
                   "large-kernel) or two builder files: the registered models of the cases")
    s.add_argument("--models-from", action="append", default=[], metavar="SOURCE",
                   help="import users' models from a .py file or a package.module (repeatable)")


def _matrix_arguments(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("matrix")
    m.add_argument("--res", default="512", metavar="LIST", help="comma list of N or HxW; default 512")
    m.add_argument("--threads", metavar="LIST", help="comma list of CPU thread counts; default: the physical cores")
    m.add_argument("--backends", "--backend", dest="backends", default="eager", metavar="LIST",
                   help="comma list of backends both sides run (eager, compile, ...); default eager")
    m.add_argument("--backend-b", metavar="NAME", help="a different backend for B (forces --design pairs)")
    m.add_argument("--precision", metavar="LIST", help="comma list of fp32, tf32, fp16, bf16")
    m.add_argument("--devices", default="cpu", metavar="LIST", help="comma list of cpu, cuda, cuda:N; default cpu")
    m.add_argument("--design", choices=("same-process", "pairs"),
                   help="same-process (default): A and B in ABBA blocks in one process; pairs: a process of A and "
                        "one of B (ABBA order of processes), for sides that cannot share a process")


def _decision_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("decision")
    d.add_argument("--threshold", type=float, default=0.05, metavar="T",
                   help="the change that matters (0.05 = 5%%); the rule's midpoint is log(1 + T/2)")
    d.add_argument("--alpha", type=float, default=0.01, help="error rate over all looks (default 0.01)")
    d.add_argument("--checkpoints", default="8,16,32,64", metavar="LIST",
                   help="process counts at which a case is looked at (default 8,16,32,64)")
    d.add_argument("--metric", choices=("time", "instructions"), default="time",
                   help="instructions: also count both sides' CPU instructions per forward under valgrind, a "
                        "process a side (deterministic; B slower when its count is above A's by more than 0.5%% or 3x the "
                        "counting spread; cpu cases, about a minute or more per case)")
    d.add_argument("--max-time", type=float, default=120.0, metavar="S",
                   help="seconds of processes per case; the last look comes when one more process (as long as "
                        "the last) would end past it (default 120: on a 2-core VM about 60 one-second processes, "
                        "enough to reach the 64 checkpoint for small models)")
    d.add_argument("--process-time", type=float, default=1.0, metavar="S",
                   help="seconds of ABBA timing per process, and at least 3 ABBA cycles (default 1; a long call's "
                        "later processes are lengthened to fill --max-time when fewer than the first checkpoint fit)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="A vs B in the same processes (ABBA); exit 1 when B is slower or a case failed",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _side_arguments(p)
    _matrix_arguments(p)
    _decision_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", default="results", metavar="DIR", help="folder of result folders (default results/)")
    o.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    o.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=main)
    return p


def _output_file(flag: str, path: str) -> Path:
    """--json / --markdown: a regular file (or none yet) in an existing writable folder; checked before the
    measuring, which would otherwise end in a traceback minutes later."""
    accepted = "accepted: a file path in an existing, writable folder"
    if not path.strip():
        raise UsageError(f"{flag}: empty; {accepted}")
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UsageError(f"{flag}: {path} cannot be resolved ({e}); {accepted}") from None
    if target.is_dir():
        raise UsageError(f"{flag}: {path} is a folder; {accepted}")
    if target.exists() and not target.is_file():
        raise UsageError(f"{flag}: {path} is not a regular file (a FIFO or a device); {accepted}")
    if not target.parent.is_dir():
        raise UsageError(f"{flag}: the folder of {path} does not exist; {accepted}")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: {path} cannot be written (its folder {target.parent} denies writing); {accepted}")
    return target


def _out_dir(path: str) -> None:
    """--out: a writable folder, or one that can be made under the nearest existing folder."""
    if not path.strip():
        raise UsageError("--out: empty; accepted: a writable folder")
    try:
        probe = Path(path).resolve()
    except (OSError, RuntimeError) as e:
        raise UsageError(f"--out: {path} cannot be resolved ({e}); accepted: a writable folder") from None
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out: {probe} is not a folder; accepted: a writable folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {path} cannot be written ({probe} denies writing); accepted: a writable folder")


def check_outputs(a: argparse.Namespace) -> None:
    """Every path `ab` writes, before anything is built or measured: one line, exit 2."""
    _out_dir(a.out)
    files = {flag: _output_file(flag, path) for flag, path in (("--markdown", a.markdown), ("--json", a.json))
             if path is not None}
    if len(files) == 2 and len(set(files.values())) == 1:
        raise UsageError(f"--markdown and --json: the same file {a.json}; accepted: two different files")


def _write_outputs(a: argparse.Namespace, frame, folder: Path) -> None:
    """--markdown / --json after the measuring; a write that fails now (the disk filled) is one line naming where
    the results are."""
    from bench.ab import output

    for flag, path, write in (
            ("--markdown", a.markdown, lambda p: atomic_write_text(p, output.to_markdown(frame, folder))),
            ("--json", a.json, lambda p: atomic_write_json(p, output.to_json_dict(frame, folder), indent=2))):
        if path is None:
            continue
        try:
            write(path)
        except OSError as e:
            raise UsageError(f"{flag}: cannot write {path} ({e.strerror or e}); the results are in {folder}") \
                from None


def exit_status(frame) -> int:
    """1 when a case is slower, or failed (nothing decided for it: run's rule for an `error` row), else 0."""
    bad = frame["verdict"].isin(("slower", "failed"))
    if "instructions_verdict" in frame.columns:
        bad |= frame["instructions_verdict"] == "slower"
    return 1 if bad.any() else 0


def main(a: argparse.Namespace) -> int:
    from bench.ab import output
    from bench.ab.engine import run_ab

    check_outputs(a)
    log = None if a.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    frame, folder = run_ab(a=a.a, b=a.b, a_rev=a.a_rev, b_rev=a.b_rev, repo=a.repo, models=a.models, models_from=a.models_from,
                           res=a.res, threads=a.threads, backends=a.backends, backend_b=a.backend_b,
                           precision=a.precision, devices=a.devices, design=a.design, threshold=a.threshold,
                           alpha=a.alpha, max_time=a.max_time, checkpoints=a.checkpoints,
                           process_time=a.process_time, out=a.out, log=log, argv=[PROG, *a.argv],
                           metric=a.metric)
    print(output.format_table(frame))
    print(f"{output.summary(frame)}\nresults: {folder}")
    _write_outputs(a, frame, folder)
    return exit_status(frame)
