"""A run's scratch folder in the temp dir, and the sweep of the ones that killed runs left behind.

A run's workdir (case specs and results, the children's stderr, backends' files such as ONNX exports) is removed
when the run ends, but a run killed with SIGKILL or a power cut cannot remove it. So the folder names its owner,
`densebench-<run_id>-<pid>-XXXXXXXX`, and holds an `.owner` record (pid, PID namespace, boot id), and the next
`make_workdir` removes the folders whose owner is gone. Removed only: real folders of this scheme (never a
symlink, nothing followed inside) owned by the current user, with an `.owner` record naming the same pid, whose pid
is not alive in our PID namespace (or that come from an earlier boot). A folder whose pid was reused by another
process stays until that one ends; one made in another PID namespace (a container sharing /tmp) is never judged.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

PREFIX = "densebench-"
OWNER = ".owner"
_NAME = re.compile(rf"^{PREFIX}(?P<run>.+)-(?P<pid>\d+)-[a-z0-9_]+$")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _identity() -> dict[str, str]:
    """What makes a pid mean this process here: the PID namespace and the boot."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return {"pidns": pidns, "boot_id": _read("/proc/sys/kernel/random/boot_id")}


@contextlib.contextmanager
def temporary_workdir(name: str) -> Iterator[Path]:
    """`make_workdir(name)`, removed on exit; one a kill -9 leaves behind is swept by a later run."""
    path = make_workdir(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_workdir(run_id: str, root: str | os.PathLike | None = None) -> Path:
    """A fresh private folder for a run (mode 0700) in `root` (default: the temp dir), after removing the ones
    dead runs left there (`sweep_stale`)."""
    root = Path(root or tempfile.gettempdir())
    sweep_stale(root)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(run_id))[:100] or "run"
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{safe}-{os.getpid()}-", dir=root))
    fd = os.open(path / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), **_identity()}, f)
    return path


def _owner(folder: Path) -> dict | None:
    """The folder's `.owner` record, read without following a symlink; None if absent or malformed."""
    try:
        fd = os.open(folder / OWNER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd) as f:
            rec = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's included; a zombie counts as alive)."""
    if pid <= 0:
        return True  # never signal a process group; such a folder is not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(folder: Path, me: dict[str, str] | None = None) -> bool:
    """Whether `folder` is a workdir of this scheme, ours, whose owner is certainly gone."""
    m = _NAME.match(folder.name)
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    if not m or not stat.S_ISDIR(st.st_mode) or st.st_uid != getattr(os, "getuid", lambda: st.st_uid)():
        return False
    rec = _owner(folder)
    pid = int(m.group("pid"))
    if rec is None or rec["pid"] != pid:
        return False  # not made by make_workdir (an older scheme, someone else's name): leave it
    me = me or _identity()
    if rec.get("boot_id") and me["boot_id"] and rec["boot_id"] != me["boot_id"]:
        return True  # made before the last boot: its owner is gone
    if rec.get("pidns") != me["pidns"] or not me["pidns"]:
        return False  # another PID namespace: its pid means nothing here
    return not pid_alive(pid)


def sweep_stale(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the workdirs in `root` (default: the temp dir) whose owning run is gone; the ones removed."""
    root = Path(root or tempfile.gettempdir())
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return []
    me, removed = _identity(), []
    for name in names:
        folder = root / name
        if is_stale(folder, me):
            shutil.rmtree(folder, ignore_errors=True)  # fd-based on Linux: symlinks inside are not followed
            if not os.path.lexists(folder):
                removed.append(folder)
    return removed
