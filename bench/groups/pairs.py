"""The paired decision of an interleaved group: per-process log ratios -> faster, tied or not resolved.

Unit of replication: one process. In process p, a pair (i, j) of sides measured there gives
v_p = median over the process's cycles of log(t_j / t_i); within a cycle both sides straddle the same midpoint, so
the machine's drift cancels, and what is left varies from process to process. The pair's ratio is exp(mean v_p),
its interval the Student t interval of that mean over processes (scipy.stats.t), so the interval includes how
far processes disagree (the ~7% that separate processes of one case differ by on a 2-vCPU VM is what this design
pays for once per pair, not once per side).

Rule, with the equivalence margin M = log(1 + tie) (tie 0.02: 2%), oriented so that the slower side is on top
(interval [lo, hi] of log(slow / fast)):
- faster        when lo > M: the faster side is faster by more than the margin;
- tied          when -M < lo and hi < M: whatever the difference, it is inside the margin;
- not resolved  otherwise (measure on, or stop when the budget is spent).
Sequential looks: the rule is applied when the number of processes reaches a checkpoint (3, 4, 6, 8, 12, 16, 24,
32) and once more when measuring stops between checkpoints; each look's interval is taken at confidence
1 - alpha / K, K = the number of checkpoints (Bonferroni), so over all looks a false "faster" or a false "tied"
has probability <= alpha (0.05). The reported interval carries that confidence in `ci_level`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bench.ab.decide import t_interval

CHECKPOINTS = (3, 4, 6, 8, 12, 16, 24, 32)
ALPHA = 0.05
DEFAULT_TIE = 0.02


@dataclass(frozen=True)
class PairDecision:
    """One pair of sides (indices into the group) oriented fast -> slow, with the rule's verdict."""

    fast: int
    slow: int
    n: int
    mean: float  # mean log(t_slow / t_fast) over processes (>= 0 by orientation)
    sd: float
    lo: float
    hi: float
    confidence: float
    verdict: str  # faster | tied | not resolved
    reason: str

    @property
    def ratio(self) -> float:
        return math.exp(self.mean)


def process_log_ratio(cycles: np.ndarray, i: int, j: int) -> float:
    """median over cycles of log(t_j / t_i) in one process (`cycles`: rows = cycles, columns = sides, NaN where a
    side was not in the process); NaN when the process did not measure both."""
    a, b = cycles[:, i], cycles[:, j]
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    return float(np.median(np.log(b[ok] / a[ok]))) if ok.any() else math.nan


def pair_values(processes: Sequence[np.ndarray], i: int, j: int) -> list[float]:
    """The per-process log(t_j / t_i) of every process that measured both sides, in process order."""
    vals = [process_log_ratio(c, i, j) for c in processes]
    return [v for v in vals if math.isfinite(v)]


def look_confidence(alpha: float = ALPHA, looks: int = len(CHECKPOINTS)) -> float:
    return 1.0 - alpha / looks


def judge_pair(values: Sequence[float], i: int, j: int, tie: float, *, alpha: float = ALPHA,
               looks: int = len(CHECKPOINTS)) -> PairDecision:
    """The rule of the module docstring on the per-process log(t_j / t_i) values, oriented fast -> slow."""
    conf = look_confidence(alpha, looks)
    mean, sd, lo, hi = t_interval(values, conf)
    fast, slow = (i, j) if not (mean < 0) else (j, i)
    if mean < 0:
        mean, lo, hi = -mean, -hi, -lo
    m = math.log1p(tie)
    n = len(values)
    ci = f"[{_r(lo)}, {_r(hi)}] ({conf:.1%}, {n} processes)"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        verdict, reason = "not resolved", f"no interval from {n} process(es)"
    elif lo > m:
        verdict, reason = "faster", f"ratio {ci} lies above 1 + tie = {1 + tie:g}"
    elif -m < lo and hi < m:
        verdict, reason = "tied", f"ratio {ci} lies within 1 +- {tie:g}"
    else:
        verdict, reason = "not resolved", f"ratio {ci} reaches across 1 + tie = {1 + tie:g}" \
            if lo <= m < hi else f"ratio {ci} reaches across the margin 1 +- {tie:g}"
    return PairDecision(fast, slow, n, mean, sd, lo, hi, conf, verdict, reason)


def at_checkpoint(n: int) -> bool:
    return n in CHECKPOINTS


def side_times(processes: Sequence[np.ndarray], n_sides: int) -> list[float]:
    """A rank of the sides by time: the geometric mean over processes of each side's median cycle time (NaN for a
    side never measured). Only its order is used (which side is the fastest)."""
    out = []
    for s in range(n_sides):
        meds = [float(np.nanmedian(c[:, s])) for c in processes if np.isfinite(c[:, s]).any()]
        out.append(float(np.exp(np.mean(np.log(meds)))) if meds else math.nan)
    return out


def fastest_side(processes: Sequence[np.ndarray], n_sides: int, usable: Sequence[int]) -> int | None:
    """The usable side with the lowest time rank (None when none was measured)."""
    times = side_times(processes, n_sides)
    cands = [s for s in usable if math.isfinite(times[s])]
    return min(cands, key=lambda s: times[s]) if cands else None


def against_fastest(processes: Sequence[np.ndarray], n_sides: int, usable: Sequence[int],
                    tie: float) -> tuple[int | None, dict[int, PairDecision]]:
    """(fastest side, its decision against each other usable side), from every process so far."""
    best = fastest_side(processes, n_sides, usable)
    if best is None:
        return None, {}
    out = {}
    for s in usable:
        if s != best:
            out[s] = judge_pair(pair_values(processes, best, s), best, s, tie)
    return best, out


def all_pairs(processes: Sequence[np.ndarray], usable: Sequence[int], tie: float) -> list[PairDecision]:
    """Every pair of usable sides (i < j in usable order), each from the processes that measured both."""
    return [judge_pair(pair_values(processes, i, j), i, j, tie) for k, i in enumerate(usable) for j in usable[k + 1:]]


def _r(log_value: float) -> str:
    return f"{math.exp(log_value):.3f}" if math.isfinite(log_value) else "nan"
