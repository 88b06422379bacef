"""Users' model files: importing one lets its `@register_model` builders join the zoo.

A source is a path to a .py file or a `package.module` importable from sys.path. The parent process loads the
sources named by --models-from; the processes it starts (the fork server, spawned children) call `load_from_env`
so that they see the same models. Loading is idempotent: a source already imported in this process is not
imported again, so a repeated load (a resumed run, a forked child) registers nothing twice. A path is imported
under a module name derived from its resolved path, stable across processes and distinct for two files that
share a file name.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import stat
import sys
from pathlib import Path
from typing import Iterable

from models.registry import DuplicateModelError, error_line, registering

MODELS_FROM_ENV = "DENSEBENCH_MODELS_FROM"
MAX_SOURCE_BYTES = 16 * 2**20  # a model file is code (it may load weights, not hold them): ~100x a big one

_WHERE = "accepted: a path to a .py file, or a package.module importable from sys.path"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_LOADED: dict[str, tuple[str, list[str]]] = {}  # module name -> (source as given, model names its import added)


class ModelSourceError(ValueError):
    """A model source that cannot be loaded; the message is one line that names what is accepted."""


def load_model_sources(specs: Iterable[str]) -> list[str]:
    """Import each source; the names of the models they register, in order (the same names on a repeated load)."""
    names: list[str] = []
    for spec in specs:
        names.extend(n for n in _load(str(spec).strip()) if n not in names)
    return names


def load_from_env() -> list[str]:
    """Load the sources listed in $DENSEBENCH_MODELS_FROM (os.pathsep-separated), as the parent process did."""
    specs = os.environ.get(MODELS_FROM_ENV, "").split(os.pathsep)
    return load_model_sources(s for s in specs if s.strip())


def _load(spec: str) -> list[str]:
    module_name, path = _locate(spec)
    if module_name in _LOADED:
        return list(_LOADED[module_name][1])
    try:
        with registering() as added:
            if path is None:
                importlib.import_module(module_name)
            else:
                _exec_file(module_name, path)
    except DuplicateModelError as e:
        raise ModelSourceError(f"model source {spec!r} registers {e.name!r}, {_owner(e.name)}; accepted: "
                               f"names not already registered") from None
    except Exception as e:
        raise ModelSourceError(f"model source {spec!r} failed to import: {error_line(e)}; accepted: a source "
                               f"that imports without error") from None
    _LOADED[module_name] = (spec, added)
    return list(added)


def _locate(spec: str) -> tuple[str, Path | None]:
    """(module name, file to execute, or None to import the module by name) of a source."""
    seps = [s for s in (os.sep, os.altsep, "/") if s]
    if spec.endswith(".py") or any(s in spec for s in seps) or Path(spec).is_file():
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelSourceError(f"model source {spec!r}: no such file; {_WHERE}")
        if path.is_dir():
            raise ModelSourceError(f"model source {spec!r} is a folder, not a .py file; {_WHERE}")
        if path.suffix != ".py":
            raise ModelSourceError(f"model source {spec!r} is not a .py file; {_WHERE}")
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO named .py would block the import forever
            raise ModelSourceError(f"model source {spec!r} is not a regular file; {_WHERE}")
        if st.st_size > MAX_SOURCE_BYTES:
            raise ModelSourceError(f"model source {spec!r} is {st.st_size} bytes, over {MAX_SOURCE_BYTES} "
                                   f"(a model file, not a weights file); {_WHERE}")
        path = path.resolve()
        stem = re.sub(r"\W", "_", path.stem)
        return f"densebench_user_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}", path
    if not _DOTTED.fullmatch(spec):
        raise ModelSourceError(f"model source {spec!r} is neither a .py path nor a module name; {_WHERE}")
    return spec, None


def _exec_file(module_name: str, path: Path) -> None:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before executing it: dataclasses and pickle look a module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def _owner(name: str) -> str:
    for spec, names in _LOADED.values():
        if name in names:
            return f"already registered by model source {spec!r}"
    return "the name of a built-in model"
