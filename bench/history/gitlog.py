"""What history needs from git: a commit's identity (parent, date, subject) and the first-parent chain.

Everything runs `git -C REPO ...` with a timeout; a repository or revision that git rejects is one HistoryError line.
The first-parent chain is the order of a main branch (each merge counted once), the order history's series and
bisect follow.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.history.store import HistoryError


@dataclass(frozen=True)
class CommitInfo:
    """One commit as the store names it."""

    commit: str
    parent: str  # the first parent ("" for a root commit)
    committed_at: str  # ISO 8601, the committer's date
    subject: str


def git(repo: Path, *args: str) -> str:
    """stdout of `git -C repo args`; HistoryError with git's last line when it fails."""
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise HistoryError("git is not installed; accepted: a machine with git on PATH") from None
    except subprocess.TimeoutExpired:
        raise HistoryError(f"git {' '.join(args[:2])} in {repo} did not answer in 120 s") from None
    if out.returncode != 0:
        line = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise HistoryError(f"git {' '.join(args[:2])} in {repo} failed ({line[:200]})")
    return out.stdout


def resolve(repo: Path, rev: str, flag: str = "REV") -> str:
    """The full commit id of `rev` in `repo`."""
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True,
                      timeout=120).returncode != 0:
        raise HistoryError(f"--repo: {repo} is not in a git repository; accepted: a folder of a git checkout")
    if not rev or rev.startswith("-"):
        raise HistoryError(f"{flag}: {rev!r} is not accepted; accepted: a commit, branch or tag, e.g. HEAD~3")
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except HistoryError:
        raise HistoryError(f"{flag}: unknown revision {rev!r} in {repo}; accepted: a commit, branch or tag of that "
                           "repository") from None


def info(repo: Path, rev: str = "HEAD") -> CommitInfo:
    """The commit, its first parent, its committer date and subject."""
    commit = resolve(repo, rev)
    fields = git(repo, "show", "-s", "--format=%P%x00%cI%x00%s", commit).rstrip("\n").split("\x00")
    parents = fields[0].split()
    return CommitInfo(commit, parents[0] if parents else "", fields[1], fields[2] if len(fields) > 2 else "")


def is_dirty(repo: Path) -> bool:
    """Tracked files changed: a measurement of such a tree names no commit."""
    return bool(git(repo, "status", "--porcelain", "--untracked-files=no").strip())


def first_parent_chain(repo: Path, tip: str = "HEAD") -> list[str]:
    """Commits of tip's first-parent chain, oldest first."""
    return git(repo, "rev-list", "--first-parent", "--reverse", resolve(repo, tip)).split()


def between(repo: Path, good: str, bad: str) -> list[str]:
    """The first-parent commits after `good` up to and including `bad`, oldest first; HistoryError when `good` is
    not an ancestor of `bad`."""
    g, b = resolve(repo, good, "GOOD"), resolve(repo, bad, "BAD")
    anc = subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", g, b], capture_output=True,
                         timeout=120)
    if anc.returncode != 0 or g == b:
        raise HistoryError(f"GOOD {good!r} is not an ancestor of BAD {bad!r}; accepted: GOOD older than BAD on one "
                           "line of history")
    return git(repo, "rev-list", "--first-parent", "--reverse", f"{g}..{b}").split()
