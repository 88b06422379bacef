"""The record one A/B process is started with: the case, its two sides and what to measure, as JSON.

It crosses the process boundary like `bench.cases.Case` (the parent writes `to_spec()`, the child reads
`ABSpec.from_spec`, which checks every field), so it lives apart from the parent's scheduling and imports only
`bench.cases`: the measuring child (bench.ab.child) reads it without pulling in pandas or the launcher.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from bench.cases import Case, CaseError

KIND = "ab"  # spec["kind"] that bench.measure.child.run_case_file dispatches on
SIDE_KINDS = ("model", "file", "tree")
MODES = ("abba", "a", "b")  # abba: both sides interleaved in one process; a / b: that side alone (pairs design)


@dataclass(frozen=True)
class Side:
    """What one side builds. model: a registered name (`model`); file: the zero-argument builder `fn` of the .py
    file `path`; tree: the registered name `model` from the `models` package of the checkout at `path` (another
    git revision). `label` is how tables name the side; `backend` runs it."""

    kind: str
    label: str
    backend: str
    model: str = ""
    path: str = ""
    fn: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SIDE_KINDS:
            raise CaseError(f"ab spec: side kind {self.kind!r}; accepted: {', '.join(SIDE_KINDS)}")
        if self.kind in ("model", "tree") and not self.model:
            raise CaseError(f"ab spec: a {self.kind} side needs a model name")
        if self.kind in ("file", "tree") and not self.path:
            raise CaseError(f"ab spec: a {self.kind} side needs a path")
        if self.kind == "file" and not self.fn:
            raise CaseError("ab spec: a file side needs the builder's name")


@dataclass(frozen=True)
class ABSpec:
    """One process: `case` (A's; its model decides the input both sides get), the sides, the mode and the
    seconds of timing."""

    case: Case
    a: Side
    b: Side
    mode: str = "abba"
    process_time_s: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CaseError(f"ab spec: mode {self.mode!r}; accepted: {', '.join(MODES)}")
        if self.mode == "abba" and self.a.backend != self.b.backend:
            raise CaseError("ab spec: A and B share a process only with the same backend (use the pairs design)")
        if not self.process_time_s > 0:
            raise CaseError("ab spec: process_time_s must be > 0")

    def side(self, key: str) -> Side:
        return self.a if key == "a" else self.b

    def to_spec(self) -> dict[str, Any]:
        return {"kind": KIND, "case": self.case.to_spec(), "a": asdict(self.a), "b": asdict(self.b),
                "mode": self.mode, "process_time_s": self.process_time_s}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "ABSpec":
        """The spec from its JSON form; a missing or wrongly typed field raises CaseError."""
        if spec.get("kind") != KIND:
            raise CaseError(f"ab spec: kind {spec.get('kind')!r}, expected {KIND!r}")
        try:
            pt = spec["process_time_s"]
            if isinstance(pt, bool) or not isinstance(pt, (int, float)):
                raise CaseError(f"ab spec: process_time_s = {pt!r} is not a number")
            return cls(case=Case.from_spec(spec["case"]), a=_side(spec["a"]), b=_side(spec["b"]),
                       mode=str(spec["mode"]), process_time_s=float(pt))
        except KeyError as e:
            raise CaseError(f"ab spec: missing field {e.args[0]!r}") from None


def _side(value: Any) -> Side:
    if not isinstance(value, Mapping):
        raise CaseError(f"ab spec: side {value!r} is not a mapping")
    names = {f.name for f in fields(Side)}
    bad = [k for k, v in value.items() if k in names and not isinstance(v, str)]
    if bad:
        raise CaseError(f"ab spec: side field {bad[0]!r} is not a string")
    try:
        return Side(**{k: v for k, v in value.items() if k in names})
    except TypeError as e:
        raise CaseError(f"ab spec: side: {e}") from None
