"""What a child writes back, as one typed record: the parent reads a `ChildResult`, never a bare dict.

Every child (a case, a decision group, an A/B process, a calibration, the speed probe) writes one JSON object
atomically (bench.measure.child.run_case_file). The parent reads it through `ChildResult.from_json`, which checks
each field's type, so a result file of the wrong shape (a foreign or truncated file, a child of another version)
is a reason on the row, never a KeyError deep in the runner. Which fields a kind fills:

- a case: `row` (its columns), `samples` (latencies in ms), `profile` (profile.parquet rows, --profile);
- a decision group: `row` (the process's status), `rows` (one per side), `cycles` (ms per side, one list per cycle),
  `samples` ([side, ms] pairs);
- an A/B process: `row`, `samples` ([side, ms] pairs);
- a calibration: `calibration`, or `error`; the speed probe: `health`, or `error`;
- every child: `child` (its pid, the stage it reached and how long its steps took).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping


class ResultFormatError(ValueError):
    """A result file that is not a ChildResult: the field, what it held, what is accepted (one line)."""


@dataclass(frozen=True)
class ChildTimes:
    """Where the child got to and how long its steps took (seconds; None: not reached)."""

    pid: int | None = None
    stage: str = ""
    setup_s: float | None = None
    timing_s: float | None = None
    total_s: float | None = None


@dataclass(frozen=True)
class ChildResult:
    row: dict[str, Any] | None = None
    samples: list[Any] = field(default_factory=list)
    profile: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = None
    cycles: list[list[float]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    error: str | None = None
    child: ChildTimes = field(default_factory=ChildTimes)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the child writes: only the fields this kind of child filled."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "child"
               and getattr(self, f.name) not in (None, [])}
        out["child"] = asdict(self.child)
        return out

    @classmethod
    def from_json(cls, data: Any) -> "ChildResult":
        """The record of a JSON object; ResultFormatError naming the first field of the wrong type."""
        if not isinstance(data, Mapping):
            raise ResultFormatError(f"child result: {type(data).__name__}, not an object")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ResultFormatError(f"child result: unknown field {unknown[0]!r}; accepted: "
                                    + ", ".join(f.name for f in fields(cls)))
        kw: dict[str, Any] = {}
        for name in ("row", "calibration", "health"):
            kw[name] = _optional(data, name, dict)
        kw["rows"] = _optional(data, "rows", list)
        kw["error"] = _optional(data, "error", str)
        for name in ("samples", "profile", "cycles"):
            kw[name] = _optional(data, name, list) or []
        if kw["rows"] is not None and not all(isinstance(r, dict) for r in kw["rows"]):
            raise ResultFormatError("child result: rows must be a list of objects")
        if not all(isinstance(r, dict) for r in kw["profile"]):
            raise ResultFormatError("child result: profile must be a list of objects")
        if not all(isinstance(c, list) and all(_number(v) for v in c) for c in kw["cycles"]):
            raise ResultFormatError("child result: cycles must be a list of lists of numbers (ms per side)")
        kw["child"] = _times(data.get("child"))
        return cls(**kw)


def _optional(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if value is not None and not isinstance(value, kind):
        raise ResultFormatError(f"child result: {name} = {str(value)[:80]!r} is a {type(value).__name__}, "
                                f"not a {kind.__name__}")
    return value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (not isinstance(v, float) or
                                                                       not math.isinf(v))


def _times(data: Any) -> ChildTimes:
    if data is None:
        return ChildTimes()
    if not isinstance(data, Mapping):
        raise ResultFormatError(f"child result: child = {str(data)[:80]!r} is not an object")
    pid, stage = data.get("pid"), data.get("stage", "")
    if (pid is not None and not isinstance(pid, int)) or not isinstance(stage, str):
        raise ResultFormatError("child result: child.pid must be an int and child.stage a str")
    secs = {}
    for name in ("setup_s", "timing_s", "total_s"):
        v = data.get(name)
        if v is not None and not _number(v):
            raise ResultFormatError(f"child result: child.{name} = {v!r} is not a number")
        secs[name] = None if v is None else float(v)
    return ChildTimes(pid=pid, stage=stage, **secs)
