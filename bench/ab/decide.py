"""The A/B decision: a t interval on the mean per-process log ratio, looked at sequentially.

Unit of replication: one process (same-process design: its median over ABBA cycles of log(tB / tA); pairs
design: log(median B / median A) of one pair of processes). Within a process the machine's drift cancels;
what is left varies from process to process, so the processes, not the cycles, are the sample.

Rule. With T = threshold (0.05: a 5% change) and the midpoint m = log(1 + T/2), halfway between no change and
the threshold on the log scale, so that "changed by T" and "unchanged" are told apart with the same confidence,
and CI = the two-sided Student t interval (scipy.stats.t) of the mean log ratio at confidence 1 - alpha/K:
- slower     when the CI's lower bound > m,
- faster     when the CI's upper bound < -m,
- unchanged  when the CI lies within (-m, m),
- otherwise keep measuring.
Sequential looks: the rule is applied only when the number of per-process values reaches a checkpoint (8, 16,
32, 64 by default) and a case stops at its first decided look. K = the number of checkpoints (Bonferroni): each
bound is a one-sided bound at level alpha/(2K), so over all K looks a false "slower" (true change <= 0), a false
"faster" or a false "unchanged" (true change >= T) each has probability <= alpha/2. When the time budget ends
before the last checkpoint, one final look is taken at the values there (it stands for an unreached checkpoint,
so there are still at most K looks); a case undecided after it, or after the last checkpoint, is `undecided`
with the reason. Ratios reported are exp() of the log-scale values.

`--metric instructions` has its own rule (`judge_counts`): instruction counts of the same code are deterministic to
~0.1% (bench.measure.instructions: forwards of one process agree to 0.06-0.07%, two processes to 0.02%), so no
statistics over processes are needed: with r = instructions B / instructions A, slower if r > 1 + tol, faster if
r < 1 / (1 + tol), else unchanged, tol = max(INSTR_TOLERANCE, 3 x the larger within-process spread of the two). What
a count cannot see (cache and memory-bandwidth effects, more than one thread, GPU work) shows in the wall-time
verdict only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from scipy import stats as _st

DECIDED = ("slower", "faster", "unchanged")
VERDICTS = (*DECIDED, "undecided", "failed")
CONTINUE = "continue"  # a look that decides nothing yet
INSTR_TOLERANCE = 0.005  # 0.5%: ~7x the spread of the forwards of one process measured on the development VM


@dataclass(frozen=True)
class Decision:
    """One look at a case: the verdict (DECIDED, `continue`, or `undecided` at the final look) and its numbers,
    all on the log scale (mean and CI of the per-process log ratios, their SD)."""

    verdict: str
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    confidence: float
    reason: str


def midpoint(threshold: float) -> float:
    """m = log(1 + T/2): halfway between no change and a change of T (log scale)."""
    return math.log1p(threshold / 2.0)


def look_confidence(alpha: float, looks: int) -> float:
    """Two-sided confidence of the CI at each of `looks` looks (Bonferroni): 1 - alpha / looks."""
    return 1.0 - alpha / looks


def t_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float, float]:
    """(mean, sd, low, high): the two-sided Student t interval of the mean; (mean, nan, nan, nan) below 2 values;
    a zero SD gives the point (mean, mean)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(v.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2.0, v.size - 1)) * sd / math.sqrt(v.size)
    return mean, sd, mean - half, mean + half


def judge(values: Sequence[float], threshold: float, alpha: float, looks: int) -> Decision:
    """The rule of the module docstring applied to these values now (`continue` when it decides nothing)."""
    conf = look_confidence(alpha, looks)
    mean, sd, lo, hi = t_interval(values, conf)
    m = midpoint(threshold)
    n = len(values)
    ci = f"CI [{_r(lo)}, {_r(hi)}] of B/A ({conf:.2%}, {n} processes)"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        verdict, reason = CONTINUE, f"no interval from {n} process(es)"
    elif lo > m:
        verdict, reason = "slower", f"{ci} lies above the midpoint {_r(m)}"
    elif hi < -m:
        verdict, reason = "faster", f"{ci} lies below the midpoint {_r(-m)}"
    elif -m < lo and hi < m:
        verdict, reason = "unchanged", f"{ci} lies within ({_r(-m)}, {_r(m)})"
    else:
        verdict, reason = CONTINUE, f"{ci} still spans a midpoint ({_r(-m)} or {_r(m)})"
    return Decision(verdict, n, mean, sd, lo, hi, conf, reason)


def decide(values: Sequence[float], *, checkpoints: Sequence[int], threshold: float, alpha: float,
           stop: str = "") -> Decision | None:
    """The look after len(values) processes: a Decision at a checkpoint, or at the final look (`stop` says why
    measuring ends, e.g. the time budget), else None. Undecided at the final look or at the last checkpoint:
    `undecided`, the reason saying where it stopped."""
    n = len(values)
    if n not in checkpoints and not stop:
        return None
    d = judge(values, threshold, alpha, len(checkpoints))
    if d.verdict != CONTINUE:
        return d
    if n >= max(checkpoints):
        stop = f"the last checkpoint ({max(checkpoints)} processes)"
    if not stop:
        return d
    return replace(d, verdict="undecided", reason=f"{d.reason}; stopped at {stop}")


def judge_counts(a: float, b: float, spread_pct: float) -> tuple[float, str]:
    """(ratio B/A, verdict) of two instruction counts whose forwards spread by `spread_pct` percent at most."""
    r = b / a
    tol = max(INSTR_TOLERANCE, 3 * spread_pct / 100)
    if r > 1 + tol:
        return r, "slower"
    if r < 1 / (1 + tol):
        return r, "faster"
    return r, "unchanged"


def _r(log_value: float) -> str:
    """A log-scale value as the ratio it stands for."""
    return f"{math.exp(log_value):.3f}" if math.isfinite(log_value) else "nan"
