"""The one base of densebench's bad-input errors, and the checks of the Python API's arguments.

Every error that means "the caller gave something the suite does not accept" (a run option, a run folder, a case
spec, a command-line flag, an argument of the Python API) derives from `BenchInputError`, so that one `except
bench.BenchInputError` catches them all, while the narrower classes (PlanError, CaseError, RunFolderError, ...)
keep working where they are caught today. It is a ValueError, as they all were. Its message is one line naming
what is accepted; the CLI prints it and exits 2. `UsageError` (a bad command-line flag) and `PROG` (the name the
messages give the command) live here too, so that the commands and bench.fleet raise them without importing
bench.cli back.

This module is a leaf: it imports nothing of bench/, so any stage may raise from it.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable

PROG = "run_bench.py"  # the command as its messages name it (the `densebench` console script is the same)


class BenchInputError(ValueError):
    """Bad input to densebench; the message is one line naming what is accepted."""


class UsageError(BenchInputError):
    """Bad command-line input: one line, exit 2."""


class ArgumentError(BenchInputError):
    """An argument of the Python API (bench.run, resume, load_run, compare, report) of the wrong type or value,
    refused at the door rather than failing deep inside."""


def shown(value: Any, limit: int = 60) -> str:
    """`value` for a one-line message: its repr cut to `limit` characters, its type named when that helps."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a caller's object whose __repr__ fails is still named
        text = f"<{type(value).__name__}>"
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if isinstance(value, (str, int, float, type(None))) else f"{text} ({type(value).__name__})"


def refuse(what: str, value: Any, accepted: str, error: type[BenchInputError] = ArgumentError) -> BenchInputError:
    """The error for `what` = `value`: "what: value is not accepted; accepted: ..." (raise it)."""
    return error(f"{what}: {shown(value)} is not accepted; accepted: {accepted}")


def is_path(value: Any) -> bool:
    """A str or os.PathLike that names something (not '', not bytes)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return isinstance(value, str) and value.strip() != "" and "\0" not in value


def path_arg(what: str, value: Any, error: type[BenchInputError] = ArgumentError) -> str | os.PathLike:
    if not is_path(value):
        raise refuse(what, value, "a non-empty path (str or os.PathLike)", error)
    return value


def bool_arg(what: str, value: Any, error: type[BenchInputError] = ArgumentError) -> bool:
    if not isinstance(value, bool):
        raise refuse(what, value, "True or False", error)
    return value


def callable_arg(what: str, value: Any, error: type[BenchInputError] = ArgumentError) -> Any:
    if value is not None and not callable(value):
        raise refuse(what, value, "None or a callable", error)
    return value


def number_arg(what: str, value: Any, accepted: str, ok: Callable[[float], bool],
               error: type[BenchInputError] = ArgumentError) -> float:
    """A real number (not a bool, not a string) for which `ok` holds, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise refuse(what, value, accepted, error)
    v = float(value)
    if math.isnan(v) or not ok(v):
        raise refuse(what, value, accepted, error)
    return v


def str_items(what: str, value: Any, accepted: str, error: type[BenchInputError] = ArgumentError,
              *, split: bool = True) -> list[str]:
    """A str (a comma list when `split`, else one item) or an iterable of str -> the stripped items, refusing
    any other type (an int, None, bytes, a list holding non-strings) and empty items."""
    if isinstance(value, str):
        items = [t.strip() for t in value.split(",")] if split else [value.strip()]
    elif isinstance(value, (bytes, bytearray, dict)) or not isinstance(value, (list, tuple, set, frozenset)) \
            and not _iterable(value):
        raise refuse(what, value, accepted, error)
    else:
        items = list(value)
        bad = [v for v in items if not isinstance(v, str)]
        if bad:
            raise refuse(what, bad[0], accepted, error)
        items = [v.strip() for v in items]
    if not items or not any(items):
        raise error(f"{what}: empty list; accepted: {accepted}")
    if not all(items):
        raise error(f"{what}: an empty item in {shown(value)}; accepted: {accepted} without empty items")
    return items


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


__all__ = ["PROG", "ArgumentError", "BenchInputError", "UsageError", "bool_arg", "callable_arg", "is_path",
           "number_arg", "path_arg", "refuse", "shown", "str_items"]
