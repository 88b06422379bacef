"""Atomic file writes: a temporary file in the same folder, renamed into place.

A reader (or a run killed at any moment) sees the previous complete version of a file or the new one, never a
torn one. The one writer for results, samples, meta.json, a child's result and the report; imports neither torch
nor pandas, so the measuring child can use it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) for a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kw: Any) -> None:
    """JSON with numpy scalars as numbers and anything else unknown as its str()."""
    def write(p: str) -> None:
        with open(p, "w") as f:
            json.dump(obj, f, default=_json_default, **dump_kw)

    atomic_write(path, write)


def _json_default(o: Any) -> Any:
    item = getattr(o, "item", None)  # numpy scalars, 0-d tensors
    if callable(item) and type(o).__module__.split(".")[0] in ("numpy", "torch"):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(o)
