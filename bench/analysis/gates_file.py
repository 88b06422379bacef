"""The gates file (bench/analysis/gates.toml or `--gates FILE`): read and validate it, one line per mistake.

A gates file is the users' to write, so every key it may hold is checked here by type AND range, before anything
is measured: a typo, a wrong type or a value no gate can use (`min_ratio = nan`, `height = true`) is one
`GateConfigError` line naming the gate, the field and what is accepted, never a false PASS or FAIL later. The
format is described in `bench.analysis.gates`, which evaluates the gates, and at the top of gates.toml.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Callable

from bench import bounded_read
from bench.errors import BenchInputError
from bench.bounded_read import MAX_GATES

DEFAULT_GATES = Path(__file__).with_name("gates.toml")
KINDS = ("speedup", "scaling_exponent")
DEVICE_TYPES = ("cpu", "cuda")
MEASURED_FOR = {"devices": str, "backend": str, "precision": str, "batch": int, "threads": int}  # key -> item type
INT64_MAX = 2**63 - 1  # the results' integer columns are int64: a larger value cannot even be compared with them


class GateConfigError(BenchInputError):
    """A gates file that cannot be read or has an invalid gate; one-line message."""


# a field's check: the value -> "" when accepted, else what is accepted
Check = Callable[[Any], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML's true is no height


def _text(v: Any) -> str:
    return "" if isinstance(v, str) and v.strip() else "a non-empty string"


def _name(v: Any) -> str:
    ok = isinstance(v, str) and v.strip() and v.isprintable()
    return "" if ok else "a non-empty one-line string"


def _int(minimum: int) -> Check:
    return lambda v: "" if _is_int(v) and minimum <= v <= INT64_MAX else f"an integer from {minimum} to {INT64_MAX}"


def _finite(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond any float
        return False


def _number(positive: bool) -> Check:
    def check(v: Any) -> str:
        ok = _finite(v) and (v > 0 or not positive)
        return "" if ok else ("a finite number > 0" if positive else "a finite number")
    return check


def _devices(v: Any) -> str:
    ok = isinstance(v, list) and v and all(isinstance(d, str) and d in DEVICE_TYPES for d in v)
    return "" if ok else f"a non-empty list of {', '.join(map(repr, DEVICE_TYPES))}"


def _sides(v: Any) -> str:
    ok = isinstance(v, list) and all(_is_int(r) and 0 < r <= INT64_MAX for r in v) and len(set(v)) >= 2
    return "" if ok else "a list of at least 2 different positive integers (square sides, e.g. [512, 1024, 2048])"


def _any_string(v: Any) -> str:
    return "" if isinstance(v, str) else "a string"


def _checked_apart(v: Any) -> str:
    return ""  # kind and measured_for have their own checks (the kind decides the keys; a table of lists)


COMMON: dict[str, Check] = {"name": _name, "kind": _checked_apart, "description": _any_string, "devices": _devices,
                            "measured_for": _checked_apart, "backend": _text, "precision": _text, "batch": _int(1),
                            "threads": _int(0)}
FIELDS: dict[str, dict[str, Check]] = {
    "speedup": {"faster": _text, "slower": _text, "height": _int(1), "width": _int(1), "min_ratio": _number(True)},
    "scaling_exponent": {"model": _text, "resolutions": _sides, "max_exponent": _number(False),
                         "min_exponent": _number(False)},
}
_REQUIRED = {"speedup": ("faster", "slower", "height", "width", "min_ratio"), "scaling_exponent": ("model",)}
_ITEM = {"devices": (lambda x: x in DEVICE_TYPES, "str: 'cpu' or 'cuda'"), "batch": (lambda x: x >= 1, "int >= 1"),
         "threads": (lambda x: x >= 0, "int >= 0 (0: CUDA rows)")}


def accepted_keys(kind: str) -> list[str]:
    """Every key a gate of this kind may hold (gates.py reads no other)."""
    return [*COMMON, *FIELDS[kind]]


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _name_of(g: Any, i: int, source: str, names: set[str]) -> str:
    """The gate's `where` prefix for every later message, after its table, name and uniqueness are checked."""
    where = f"{source}: gate #{i + 1}"
    if not isinstance(g, dict):
        raise GateConfigError(f"{where}: not a table; accepted: a [[gate]] table")
    if "name" not in g:
        raise GateConfigError(f"{where}: missing name; accepted: {_name(None)}")
    if _name(g["name"]):
        raise GateConfigError(f"{where}: name {_shown(g['name'])} is not accepted; accepted: {_name(None)}")
    where = f"{source}: gate {g['name']!r}"
    if g["name"] in names:
        raise GateConfigError(f"{where}: duplicate name; accepted: a name no other gate of the file has")
    names.add(g["name"])
    return where


def _check_gate(g: dict, where: str) -> None:
    kind = g.get("kind")
    if kind not in KINDS:
        raise GateConfigError(f"{where}: kind {_shown(kind)} is not one of {', '.join(KINDS)}")
    unknown = [k for k in g if k not in COMMON and k not in FIELDS[kind]]
    if unknown:
        raise GateConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; accepted for kind "
                              f"{kind!r}: {', '.join(accepted_keys(kind))}")
    missing = [k for k in _REQUIRED[kind] if k not in g]
    if missing:
        raise GateConfigError(f"{where}: missing {', '.join(missing)}; a {kind} gate needs "
                              f"{', '.join(_REQUIRED[kind])}")
    if kind == "scaling_exponent" and "max_exponent" not in g and "min_exponent" not in g:
        raise GateConfigError(f"{where}: needs max_exponent and/or min_exponent")
    for k, v in g.items():
        accepted = {**COMMON, **FIELDS[kind]}[k](v)
        if accepted:
            raise GateConfigError(f"{where}: {k} {_shown(v)} is not accepted; accepted: {accepted}")
    lo, hi = g.get("min_exponent"), g.get("max_exponent")
    if lo is not None and hi is not None and lo > hi:
        raise GateConfigError(f"{where}: min_exponent {lo:g} is above max_exponent {hi:g}; accepted: "
                              "min_exponent <= max_exponent")
    if "measured_for" in g:
        _check_measured_for(g["measured_for"], where)


def validate_gates(gates: list[dict], source: str = "gates") -> list[dict]:
    """Every gate checked field by field (see the module doc); the gates, unchanged. Raises GateConfigError."""
    if not isinstance(gates, list):
        raise GateConfigError(f"{source}: {_shown(gates)} is not accepted; accepted: a list of gate tables")
    if len(gates) > MAX_GATES:
        raise GateConfigError(f"{source}: {len(gates):,} gates; accepted: at most {MAX_GATES:,} gates (each is "
                              "evaluated against every row of the run)")
    names: set[str] = set()
    for i, g in enumerate(gates):
        _check_gate(g, _name_of(g, i, source, names))
    return gates


def _check_measured_for(m: Any, where: str) -> None:
    if not isinstance(m, dict) or not m:
        raise GateConfigError(f"{where}: measured_for must be a table of {', '.join(MEASURED_FOR)}")
    for k, v in m.items():
        typ = MEASURED_FOR.get(k)
        if typ is None:
            raise GateConfigError(f"{where}: measured_for.{k} is not one of {', '.join(MEASURED_FOR)}")
        in_range, what = _ITEM.get(k, (lambda x: bool(x.strip()), "str (non-empty)"))
        if not isinstance(v, list) or not v or not all(isinstance(x, typ) and not isinstance(x, bool) and
                                                       in_range(x) for x in v):
            raise GateConfigError(f"{where}: measured_for.{k} must be a non-empty list of {what}, not {_shown(v)}")


def load_gates(path: str | Path | None = None) -> list[dict]:
    """Parse and validate a gates file (tomllib). Raises GateConfigError."""
    p = Path(path) if path else DEFAULT_GATES
    try:
        text = bounded_read.read_text(p, limit=bounded_read.TOML_MAX_BYTES, what="a gates file",
                                      error=GateConfigError)
        data = bounded_read.parse_nested(tomllib.loads, text, p, "a gates file", GateConfigError)
    except FileNotFoundError:
        raise GateConfigError(f"{p}: no such gates file") from None
    except OSError as e:
        raise GateConfigError(f"{p}: unreadable ({e})".splitlines()[0]) from None
    except tomllib.TOMLDecodeError as e:
        raise GateConfigError(f"{p}: invalid TOML ({e})".splitlines()[0]) from None
    other = [k for k in data if k != "gate"]
    if other:
        raise GateConfigError(f"{p}: unknown top-level key(s) {', '.join(other)}; accepted: [[gate]] tables")
    gates = data.get("gate", [])
    if not isinstance(gates, list) or not gates:
        raise GateConfigError(f"{p}: no [[gate]] tables")
    return validate_gates(gates, str(p))
