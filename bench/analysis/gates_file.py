"""The gates file (bench/analysis/gates.toml or `--gates FILE`): read and validate it, one line per mistake.

A gates file is the users' to write, so every key it may hold is checked here, before anything is measured: a
typo or a wrong type is one `GateConfigError` line. The format is described in `bench.analysis.gates`, which
evaluates the gates, and at the top of gates.toml.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

DEFAULT_GATES = Path(__file__).with_name("gates.toml")
KINDS = ("speedup", "scaling_exponent")
MEASURED_FOR = {"devices": str, "backend": str, "precision": str, "batch": int, "threads": int}  # key -> item type


class GateConfigError(ValueError):
    """A gates file that cannot be read or has an invalid gate; one-line message."""


_REQUIRED = {"speedup": ("faster", "slower", "height", "width", "min_ratio"), "scaling_exponent": ("model",)}


def validate_gates(gates: list[dict], source: str = "gates") -> list[dict]:
    names = set()
    for i, g in enumerate(gates):
        where = f"{source}: gate #{i + 1}"
        if not isinstance(g, dict):
            raise GateConfigError(f"{where}: not a table")
        name = g.get("name")
        if not isinstance(name, str) or not name:
            raise GateConfigError(f"{where}: missing name")
        where = f"{source}: gate {name!r}"
        if name in names:
            raise GateConfigError(f"{where}: duplicate name")
        names.add(name)
        kind = g.get("kind")
        if kind not in KINDS:
            raise GateConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        missing = [k for k in _REQUIRED[kind] if k not in g]
        if missing:
            raise GateConfigError(f"{where}: missing {', '.join(missing)}")
        if kind == "scaling_exponent" and "max_exponent" not in g and "min_exponent" not in g:
            raise GateConfigError(f"{where}: needs max_exponent and/or min_exponent")
        for k in ("min_ratio", "max_exponent", "min_exponent"):
            if k in g and not isinstance(g[k], (int, float)):
                raise GateConfigError(f"{where}: {k} must be a number")
        for k in ("height", "width"):
            if k in g and (not isinstance(g[k], int) or g[k] <= 0):
                raise GateConfigError(f"{where}: {k} must be a positive integer")
        res = g.get("resolutions")
        if res is not None and (not isinstance(res, list) or not res or
                                not all(isinstance(r, int) and r > 0 for r in res)):
            raise GateConfigError(f"{where}: resolutions must be a list of positive integers (square sides)")
        devs = g.get("devices")
        if devs is not None and (not isinstance(devs, list) or not all(d in ("cpu", "cuda") for d in devs)):
            raise GateConfigError(f"{where}: devices must be a list of 'cpu'/'cuda'")
        if "measured_for" in g:
            _check_measured_for(g["measured_for"], where)
    return gates


def _check_measured_for(m: Any, where: str) -> None:
    if not isinstance(m, dict) or not m:
        raise GateConfigError(f"{where}: measured_for must be a table of {', '.join(MEASURED_FOR)}")
    for k, v in m.items():
        typ = MEASURED_FOR.get(k)
        if typ is None:
            raise GateConfigError(f"{where}: measured_for.{k} is not one of {', '.join(MEASURED_FOR)}")
        if not isinstance(v, list) or not v or not all(isinstance(x, typ) and not isinstance(x, bool) for x in v):
            raise GateConfigError(f"{where}: measured_for.{k} must be a non-empty list of {typ.__name__}")


def load_gates(path: str | Path | None = None) -> list[dict]:
    """Parse and validate a gates file (tomllib). Raises GateConfigError."""
    p = Path(path) if path else DEFAULT_GATES
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise GateConfigError(f"{p}: no such gates file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GateConfigError(f"{p}: unreadable ({e})".splitlines()[0]) from None
    except tomllib.TOMLDecodeError as e:
        raise GateConfigError(f"{p}: invalid TOML ({e})".splitlines()[0]) from None
    gates = data.get("gate", [])
    if not isinstance(gates, list) or not gates:
        raise GateConfigError(f"{p}: no [[gate]] tables")
    return validate_gates(gates, str(p))
