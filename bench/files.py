"""Atomic file writes: a temporary file in the same folder, flushed to disk, renamed into place.

A reader (or a run killed at any moment) sees the previous complete version of a file or the new one, never a
torn one; with `durable` (the default) the data is fsynced before the rename and the folder after it, so a power
loss cannot leave the new name on an empty file either. The file gets the mode a plain open() would give a new
file (0666 & ~umask), not mkstemp's 0600. The one writer for results, samples, meta.json, a child's result and the
report; imports neither torch nor pandas, so the measuring child can use it.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask. Read from /proc/self/status (Linux >= 4.7): os.umask can only be read by setting it,
    and a thread creating a file in between would get the temporary value. Elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)  # the strictest value while it is briefly set
        os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened or synced (Windows, some FS)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _settle(tmp: str, mode: int, durable: bool) -> None:
    """Give the written temporary file its final mode and, if `durable`, flush its data to the disk."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:
            os.chmod(tmp, mode)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it onto `path` (mode 0666 & ~umask);
    `durable`: fsync the file before the rename and the folder after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _settle(tmp, 0o666 & ~current_umask(), durable)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, durable: bool = True, **dump_kw: Any) -> None:
    """JSON with numpy scalars as numbers and anything else unknown as its str()."""
    def write(p: str) -> None:
        with open(p, "w") as f:
            json.dump(obj, f, default=_json_default, **dump_kw)

    atomic_write(path, write, durable=durable)


def _json_default(o: Any) -> Any:
    item = getattr(o, "item", None)  # numpy scalars, 0-d tensors
    if callable(item) and type(o).__module__.split(".")[0] in ("numpy", "torch"):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(o)
