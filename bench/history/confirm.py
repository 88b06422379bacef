"""Re-measure before believing: a step of the history, or a bisect midpoint, judged by a same-process A/B.

Stored numbers of two commits were taken minutes or days apart, on a runner whose speed moves by more than the
steps sought; a change-point detector over them (asv, Otava) proposes, it cannot confirm. Here both commits are
checked out as worktrees and measured alternately in the same processes (bench.ab: `--a-rev OLD --b-rev NEW`),
which cancels the machine's drift; a step is reported only when that A/B says "slower". For the instructions metric
the A/B counts both sides under valgrind (deterministic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.history.steps import Step

Log = Callable[[str], None]


@dataclass(frozen=True)
class Verdict:
    """One A/B of two commits on one case: bench.ab's verdict, the ratio B/A and the folder of the A/B."""

    verdict: str
    ratio: float
    folder: str
    reason: str = ""


@dataclass(frozen=True)
class CaseSpec:
    """The case a series measures, as the A/B takes it."""

    model: str
    height: int
    width: int
    threads: int
    backend: str
    precision: str

    @classmethod
    def from_row(cls, row: Any) -> "CaseSpec":
        return cls(str(row["model"]), int(row["height"]), int(row["width"]), int(row["threads"]),
                   str(row["backend"]), str(row["precision"]))


def ab_commits(repo: str | Path, old: str, new: str, case: CaseSpec, *, metric: str = "wall_ms",
               threshold: float = 0.05, max_time: float = 120.0, out: str | Path, log: Log | None = None,
               **options: Any) -> Verdict:
    """The A/B of commit `old` (A) against `new` (B) on `case`; metric wall_ms or instructions."""
    from bench.ab.engine import run_ab

    frame, folder = run_ab(a_rev=old, b_rev=new, repo=str(repo), models=case.model,
                           res=f"{case.height}x{case.width}", threads=str(case.threads), backends=case.backend,
                           precision=case.precision, threshold=threshold, max_time=max_time, out=out, log=log,
                           metric="instructions" if metric == "instructions" else "time", **options)
    row = frame.iloc[0]
    if metric == "instructions":
        return Verdict(str(row["instructions_verdict"]), float(row.get("instructions_ratio", math.nan)),
                       str(folder), str(row.get("instructions_reason") or ""))
    return Verdict(str(row["verdict"]), float(row["ratio"]), str(folder), str(row.get("reason") or ""))


def confirm(steps: list[Step], cases: dict[str, CaseSpec], repo: str | Path, *, out: str | Path,
            threshold: float | None = None, max_time: float = 120.0, log: Log | None = None,
            **options: Any) -> list[Step]:
    """Fill each step's `confirmed` with the A/B verdict of its two commits. The A/B's threshold is `threshold`
    or the stored step's own size (at least 1%): its rule's midpoint is then half the step, so "slower" means the
    re-measured slowdown is more than half of what the history shows, and a step that exists only in the stored
    numbers comes back "unchanged"."""
    for s in steps:
        t = threshold if threshold is not None else max(0.01, s.ratio - 1.0)
        if log:
            log(f"confirm {s.case_id} {s.metric}: {s.before[:10]} -> {s.after[:10]} ({s.ratio:.3f}x stored), "
                f"A/B at threshold {t:.1%}")
        v = ab_commits(repo, s.before, s.after, cases[s.case_id], metric=s.metric, threshold=t,
                       max_time=max_time, out=out, log=log, **options)
        s.confirmed, s.ab_ratio, s.ab_folder = v.verdict, v.ratio, v.folder
    return steps
