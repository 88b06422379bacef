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
The per-process interval decides from MIN_PROCESSES (3) values on; below that only pooled cycles can.
Sequential looks: the rule is applied only when the number of per-process values reaches a checkpoint (8, 16,
32, 64 by default) and a case stops at its first decided look. K = the number of looks the case can take
(`planned_looks`: the checkpoints that fit its budget at twice the speed of its first process, plus the final
look at the budget), fixed after the first process from its wall time, never from the ratios (Bonferroni): each
bound is a one-sided bound at level alpha/(2K), so over all K looks a false "slower" (true change <= 0), a false
"faster" or a false "unchanged" (true change >= T) each has probability <= alpha/2. When the time budget ends
before the last checkpoint, one final look is taken at the values there (it stands for an unreached checkpoint,
so there are still at most K looks); a case undecided after it, or after the last checkpoint, is `undecided`
with the reason. Ratios reported are exp() of the log-scale values.

Long calls: the cycles, not the processes, when the processes agree. A 0.6-1.2 s call (evit-b1:msla at 1024x2048,
2 or 1 threads) gives a process of MIN_CYCLES (3) ABBA cycles in 14 s or more (about half of it start-up, two
builds and warm-ups), so two minutes hold 4-8 processes, and a t interval over so few values (3-7 df at
1 - alpha/(2K)) excludes 2.5% only when the processes agree within about 1%. Measured on the development VM
(A/A, per-cycle log ratios of bench.ab's samples, docs/METHODOLOGY.md): the processes of such a case show no
process effect (one-way ANOVA over 6 processes: F 0.76, p 0.58), and the cycles' noise is heavy-tailed (single
calls 13-25% slow while the machine serves something else). So when there are at least POOL_MIN_PROCESSES
processes of at least POOL_MIN_CYCLES cycles each, and the one-way ANOVA of their (winsorized) cycle values finds
no process effect at POOL_P (0.10; Bancroft's "sometimes pool" rule advises a liberal level, 0.25, but with 2-4
processes every false rejection leaves the compare undecided; measured A/A p values: 0.06-0.71), the interval is taken over all cycles: the 20% trimmed mean
with the Tukey-McLaughlin standard error (scipy.stats.mstats.trimmed_mean_ci), robust to the slow calls, becomes
a second interval beside the process-level one; each is then taken at 1 - alpha/(2K), so that the look's error
stays alpha/K (Bonferroni over the two), and a verdict needs one of them to decide and the other not to decide
otherwise. Neither dominates: with OpenMP threads bound (bench.launch.childenv.AB_BIND_ENV) 8 processes of 3
cycles had per-process medians within 0.4% but single cycles 2% apart, where the processes decide; unbound, the
cycles of 2-4 processes decide. Small models (hundreds of cycles a process, whose processes do differ) keep the
process-level interval. The reason names the interval that decided.

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
from scipy.stats import mstats

DECIDED = ("slower", "faster", "unchanged")
VERDICTS = (*DECIDED, "undecided", "failed")
CONTINUE = "continue"  # a look that decides nothing yet
INSTR_TOLERANCE = 0.005  # 0.5%: ~7x the spread of the forwards of one process measured on the development VM
POOL_MIN_PROCESSES, POOL_MIN_CYCLES, POOL_P = 2, 3, 0.10  # when the cycles may stand for the processes
# The per-process t interval decides from 3 values on. At 2 (1 df) it rests on one difference: an A/A of
# evit-b1:msla at 1024x2048 (2.3 s calls on a slow day, per-process SD 2-5%) was called "faster" 0.963, CI
# [0.953, 0.973], from 2 processes whose medians agreed to 0.01% (1 of 6 A/A compares).
MIN_PROCESSES = 3
TRIM = 0.2  # each tail of the pooled cycles trimmed (20%: Wilcox's default for the trimmed-mean interval)


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


def cycle_log_ratios(abba_ms: Sequence[float]) -> list[float]:
    """Per-cycle log(mean(B1, B2) / mean(A1, A2)) of one process's times in A B B A order."""
    c = np.asarray(abba_ms, dtype=np.float64)
    c = c[: c.size - c.size % 4].reshape(-1, 4)
    return np.log((c[:, 1] + c[:, 2]) / (c[:, 0] + c[:, 3])).tolist()


def process_effect_p(cycles: Sequence[Sequence[float]]) -> float:
    """p of the one-way ANOVA F test for a process effect over the processes' winsorized (TRIM) cycle values."""
    w = mstats.winsorize(np.concatenate([np.asarray(c, dtype=np.float64) for c in cycles]), limits=(TRIM, TRIM))
    groups = np.split(np.asarray(w), np.cumsum([len(c) for c in cycles])[:-1])
    if all(float(np.ptp(g)) == 0.0 for g in groups):
        return 0.0 if len({float(g[0]) for g in groups}) > 1 else 1.0
    return float(_st.f_oneway(*groups).pvalue)


def poolable(cycles: Sequence[Sequence[float]]) -> bool:
    """Whether the cycles may stand for the processes (module docstring): enough of both, no process effect."""
    return (len(cycles) >= POOL_MIN_PROCESSES and min(len(c) for c in cycles) >= POOL_MIN_CYCLES
            and process_effect_p(cycles) >= POOL_P)


def pooled_interval(cycles: Sequence[Sequence[float]], confidence: float) -> tuple[float, float, float, float]:
    """(trimmed mean, winsorized SD, low, high) over all cycles: the TRIM trimmed mean's t interval
    (Tukey-McLaughlin)."""
    v = np.concatenate([np.asarray(c, dtype=np.float64) for c in cycles])
    lo, hi = mstats.trimmed_mean_ci(v, limits=(TRIM, TRIM), alpha=1.0 - confidence)
    sd = float(np.std(np.asarray(mstats.winsorize(v, limits=(TRIM, TRIM))), ddof=1))
    return float(mstats.trimmed_mean(v, limits=(TRIM, TRIM))), sd, float(lo), float(hi)


def _verdict(lo: float, hi: float, m: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return CONTINUE
    if lo > m:
        return "slower"
    if hi < -m:
        return "faster"
    return "unchanged" if -m < lo and hi < m else CONTINUE


def judge(values: Sequence[float], threshold: float, alpha: float, looks: int,
          cycles: Sequence[Sequence[float]] = ()) -> Decision:
    """The rule of the module docstring applied to these values now (`continue` when it decides nothing).
    `cycles` (each process's per-cycle log ratios): when poolable, the pooled interval is a second interval, each
    at half the look's error (1 - alpha/(2K)); a verdict needs one of them to decide and the other not to
    decide otherwise."""
    pooled = bool(cycles) and poolable(cycles)
    conf = look_confidence(alpha, looks * (2 if pooled else 1))
    n = len(values)
    mean, sd, lo, hi = t_interval(values, conf)
    units = [(f"{n} processes", (mean, sd, lo, hi) if n >= MIN_PROCESSES else (mean, sd, math.nan, math.nan))]
    if pooled:
        units.append((f"{sum(len(c) for c in cycles)} cycles of {n} processes, {TRIM:.0%} trimmed mean",
                      pooled_interval(cycles, conf)))
    m = midpoint(threshold)
    verdicts = [_verdict(iv[2], iv[3], m) for _, iv in units]
    decided = sorted({v for v in verdicts if v != CONTINUE})
    verdict = decided[0] if len(decided) == 1 else CONTINUE  # none, or two that contradict each other: continue
    shown = [i for i, v in enumerate(verdicts) if v == verdict] or list(range(len(units)))
    pick = min(shown, key=lambda i: _width(units[i][1]))  # the narrower of those that say the verdict
    unit, (mean, sd, lo, hi) = units[pick]
    ci = f"CI [{_r(lo)}, {_r(hi)}] of B/A ({conf:.2%}, {unit})"
    reason = {"slower": f"{ci} lies above the midpoint {_r(m)}", "faster": f"{ci} lies below the midpoint {_r(-m)}",
              "unchanged": f"{ci} lies within ({_r(-m)}, {_r(m)})"}.get(verdict)
    if reason is None:
        reason = (f"no interval from {n} process(es) (a verdict needs {MIN_PROCESSES}, or pooled cycles)"
                  if not (math.isfinite(lo) and math.isfinite(hi)) else
                  f"{ci} still spans a midpoint ({_r(-m)} or {_r(m)})" if len(decided) < 2 else
                  f"the intervals of processes and of cycles disagree ({' vs '.join(verdicts)})")
    return Decision(verdict, n, mean, sd, lo, hi, conf, reason)


def _width(iv: tuple[float, float, float, float]) -> float:
    w = iv[3] - iv[2]
    return w if math.isfinite(w) else math.inf


def planned_looks(checkpoints: Sequence[int], max_processes: int) -> int:
    """K: the looks a case can take when at most `max_processes` processes fit its budget: the checkpoints up to
    there, and the final look at the budget if it comes before the last checkpoint. Long calls reach no
    checkpoint and take one look, so they are not charged for the looks of small models (Bonferroni over looks
    that cannot happen only widens the interval)."""
    reachable = sum(c <= max_processes for c in checkpoints)
    return max(1, reachable + (1 if max_processes < max(checkpoints) else 0))


def decide(values: Sequence[float], *, checkpoints: Sequence[int], threshold: float, alpha: float,
           stop: str = "", cycles: Sequence[Sequence[float]] = (), looks: int | None = None) -> Decision | None:
    """The look after len(values) processes: a Decision at a checkpoint, or at the final look (`stop` says why
    measuring ends, e.g. the time budget), else None. Undecided at the final look or at the last checkpoint:
    `undecided`, the reason saying where it stopped. `looks`: K (default: every checkpoint)."""
    n = len(values)
    if n not in checkpoints and not stop:
        return None
    d = judge(values, threshold, alpha, looks or len(checkpoints), cycles)
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
