"""What ran where in a graph runtime: the share of ops and of MACs the delegate (or plugin) ran, and the ops that
fell back. ExecuTorch lowers what the XNNPACK partitioner takes and runs the rest on its portable kernels;
a case whose MAC-carrying ops fell back is a measurement of the fallback, not of the delegate, and says so.

Each graph backend counts its own graph (`Delegation`) and records `as_info()` in backend_info["delegation"];
the engine copies the shares into the result columns (`columns`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# Below this share of the MACs run by the delegate, the case does not measure the delegate.
DELEGATE_MIN_MACS_SHARE = 0.95


@dataclass
class Delegation:
    """Counts over one lowered graph. `fallback` maps an op name to how many of its nodes fell back;
    `fallback_macs` the MACs those nodes carry (conv / matmul arithmetic)."""

    runtime: str  # who ran the delegated part: "XNNPACK", "OpenVINO CPU plugin", ...
    ops_total: int
    ops_delegated: int
    macs_total: int
    macs_delegated: int
    fallback: dict[str, int] = field(default_factory=dict)
    fallback_macs: dict[str, int] = field(default_factory=dict)

    @property
    def ops_share(self) -> float:
        return self.ops_delegated / self.ops_total if self.ops_total else math.nan

    @property
    def macs_share(self) -> float:
        return self.macs_delegated / self.macs_total if self.macs_total else math.nan

    def verdict(self) -> str:
        """"delegate" when the delegate ran (nearly) all the arithmetic, else why the case measures the fallback."""
        share = self.macs_share
        if math.isnan(share) or share >= DELEGATE_MIN_MACS_SHARE:
            return "delegate"
        hot = ", ".join(f"{op} ({m / self.macs_total:.0%} of MACs)"
                        for op, m in sorted(self.fallback_macs.items(), key=lambda kv: -kv[1]) if m)
        return (f"not a measurement of {self.runtime}: only {share:.0%} of the MACs ran in it; fell back: "
                f"{hot or fallback_text(self.fallback)}")

    def as_info(self) -> dict:
        return {"runtime": self.runtime, "ops_total": self.ops_total, "ops_delegated": self.ops_delegated,
                "ops_share": round(self.ops_share, 4) if self.ops_total else None,
                "macs_total": self.macs_total, "macs_delegated": self.macs_delegated,
                "macs_share": round(self.macs_share, 4) if self.macs_total else None,
                "fallback": dict(sorted(self.fallback.items())), "fallback_macs": dict(sorted(self.fallback_macs.items())),
                "verdict": self.verdict()}


def fallback_text(fallback: dict[str, int]) -> str:
    """{"aten.split": 1, "aten.expand_copy": 4} -> "aten.expand_copy x4, aten.split x1" (most first)."""
    return ", ".join(f"{op} x{n}" for op, n in sorted(fallback.items(), key=lambda kv: (-kv[1], kv[0])))


def columns(info: dict) -> dict:
    """The result columns from a backend's info: delegation shares and fallback ops, the int8 MAC share."""
    out: dict = {}
    d = info.get("delegation")
    if isinstance(d, dict):
        out["delegated_ops_share"] = _num(d.get("ops_share"))
        out["delegated_macs_share"] = _num(d.get("macs_share"))
        out["fallback_ops"] = fallback_text(d.get("fallback") or {})
    q = info.get("int8")
    if isinstance(q, dict) and q.get("macs_share") is not None:
        out["int8_macs_share"] = _num(q["macs_share"])
    return out


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan
