"""The two sides of an A/B compare as the user names them, checked before any process starts.

--a/--b: a registered model name (`evit-b1:msla`) or a builder in a user's file (`path.py:fn`, a zero-argument
function returning an nn.Module). --a-rev REV: the same models at another git revision, checked out as a
temporary `git worktree add --detach` (removed at the end, also on error) whose `models` package the child
imports in place of ours (bench.ab.child.models_from); B is then the working tree.
"""
from __future__ import annotations

import contextlib
import inspect
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench.ab.child import BuilderNotFound, load_builder
from bench.launch.workdir import make_workdir
from bench.plan import PlanError


@dataclass(frozen=True)
class SideArg:
    """A parsed --a/--b: a registered model `name`, or the builder `fn` of the file `path`."""

    text: str
    name: str = ""
    path: str = ""
    fn: str = ""

    @property
    def is_file(self) -> bool:
        return bool(self.path)


def parse_side(text: str, flag: str) -> SideArg:
    """'NAME' or 'PATH.py:FN' (model names contain ':' too, so a file side is told by '.py' before the last ':')."""
    text = str(text).strip()
    head, sep, fn = text.rpartition(":")
    if sep and head.endswith(".py"):
        if not fn.isidentifier():
            raise PlanError(f"{flag}: {text!r}: {fn!r} is not a function name; accepted: PATH.py:FUNCTION")
        return SideArg(text, path=str(Path(head).expanduser().resolve()), fn=fn)
    if text.endswith(".py"):
        raise PlanError(f"{flag}: {text!r} names no builder; accepted: PATH.py:FUNCTION (a zero-argument function "
                        "returning an nn.Module) or a registered model name")
    if not text:
        raise PlanError(f"{flag}: empty; accepted: a registered model name or PATH.py:FUNCTION")
    return SideArg(text, name=text)


def check_builder(side: SideArg, flag: str) -> None:
    """A file side's module imports here and its builder takes no argument (PlanError otherwise); it is not
    called: that happens in the child, where a failure is that case's `failed` row."""
    if not Path(side.path).is_file():
        raise PlanError(f"{flag}: {side.path}: no such file; accepted: PATH.py:FUNCTION with an existing file")
    try:
        builder = load_builder(side.path, side.fn)
    except BuilderNotFound:
        raise PlanError(f"{flag}: {side.path} has no function {side.fn!r}; accepted: PATH.py:FUNCTION naming a "
                        "zero-argument function of that file") from None
    except Exception as e:
        line = (str(e).strip().splitlines() or [""])[0]
        raise PlanError(f"{flag}: {side.path} failed to import ({type(e).__name__}: {line}); accepted: a file "
                        "that imports without error") from None
    try:
        inspect.signature(builder).bind()
    except TypeError:
        raise PlanError(f"{flag}: {side.fn}{inspect.signature(builder)} needs arguments; accepted: a zero-argument "
                        "function returning an nn.Module") from None
    except ValueError:  # no signature to read (a builtin): the child will tell
        pass


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise PlanError("--a-rev: git is not installed; accepted: --a-rev where git is on PATH") from None


def resolve_rev(repo: Path, rev: str, flag: str = "--a-rev") -> tuple[Path, str]:
    """(top of the repository, full commit) of REV; PlanError for a folder outside git or an unknown revision."""
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise PlanError(f"--repo: {repo} is not in a git repository; accepted: a folder of a git checkout")
    if not rev or rev.startswith("-"):
        raise PlanError(f"{flag}: {rev!r} is not accepted; accepted: a commit, branch or tag, e.g. HEAD~1")
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if sha.returncode != 0:
        raise PlanError(f"{flag}: unknown revision {rev!r} in {top.stdout.strip()}; accepted: a commit, branch "
                        "or tag of that repository, e.g. HEAD~1")
    return Path(top.stdout.strip()), sha.stdout.strip()


@contextlib.contextmanager
def worktree(top: Path, commit: str) -> Iterator[Path]:
    """A detached worktree of `commit` in a temporary folder; removed (and pruned) on exit, also on error."""
    tmp = make_workdir("ab-rev")
    path = tmp / "tree"
    add = _git(top, "worktree", "add", "--detach", str(path), commit)
    try:
        if add.returncode != 0:
            line = (add.stderr.strip().splitlines() or ["?"])[-1]
            raise PlanError(f"--a-rev: git worktree add failed ({line}); accepted: a repository where a "
                            "worktree can be added")
        yield path
    finally:
        if path.exists():
            _git(top, "worktree", "remove", "--force", str(path))
        shutil.rmtree(tmp, ignore_errors=True)
        _git(top, "worktree", "prune")
