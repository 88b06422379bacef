"""`history bisect GOOD BAD`: the first commit on BAD's first-parent line that is slower than GOOD.

Binary search over the commits after GOOD up to BAD, each midpoint judged by a same-process A/B against GOOD itself
(bench.history.confirm.ab_commits: both as worktrees). Comparing with GOOD, not with the moving lower bound, makes
each look answer one question ("has the slowdown arrived by here?"), so steps that arrive in pieces are found at the
first piece that crosses the threshold. A midpoint the A/B cannot decide stops the search and says between which
commits the answer lies: guessing would name the wrong commit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.history import gitlog
from bench.history.confirm import CaseSpec, Log, Verdict, ab_commits
from bench.history.store import HistoryError


@dataclass
class BisectResult:
    """The commits searched, each look (commit -> the A/B verdict against GOOD) and the outcome: `first_slow` is the
    first commit slower than GOOD, or "" when the search stopped (`reason` says why; the answer then lies in
    (`last_good`, `first_bad`])."""

    good: str
    bad: str
    commits: list[str]
    looks: dict[str, Verdict] = field(default_factory=dict)
    first_slow: str = ""
    last_good: str = ""
    first_bad: str = ""
    reason: str = ""


def bisect(repo: str | Path, good: str, bad: str, case: CaseSpec, *, out: str | Path, metric: str = "wall_ms",
           threshold: float = 0.05, max_time: float = 120.0, check_bad: bool = True, log: Log | None = None,
           **options: Any) -> BisectResult:
    """Search (GOOD, BAD] for the first commit slower than GOOD by the A/B's rule at `threshold`. With `check_bad`,
    BAD itself is measured first: a BAD that is not slower than GOOD is said, not searched."""
    repo = Path(repo)
    commits = gitlog.between(repo, good, bad)
    res = BisectResult(gitlog.resolve(repo, good, "GOOD"), commits[-1], commits)

    def look(commit: str) -> str:
        v = ab_commits(repo, res.good, commit, case, metric=metric, threshold=threshold, max_time=max_time,
                       out=out, log=log, **options)
        res.looks[commit] = v
        if log:
            log(f"bisect: {commit[:10]} vs GOOD {res.good[:10]}: {v.verdict} ({v.ratio:.3f}x)")
        return v.verdict

    lo, hi = -1, len(commits) - 1  # commits[lo] (GOOD when -1) is not slower; commits[hi] is slower
    if check_bad:
        verdict = look(commits[hi])
        if verdict != "slower":
            res.reason = f"BAD is {verdict} against GOOD at {threshold:.1%}: nothing to search"
            return res
    while hi - lo > 1:
        mid = (lo + hi) // 2
        verdict = look(commits[mid])
        if verdict == "slower":
            hi = mid
        elif verdict in ("unchanged", "faster"):
            lo = mid
        else:
            res.reason = f"{commits[mid][:10]} is {verdict} against GOOD: the search stops there"
            break
    res.last_good = res.good if lo < 0 else commits[lo]
    res.first_bad = commits[hi]
    if not res.reason:
        res.first_slow = commits[hi]
    return res
