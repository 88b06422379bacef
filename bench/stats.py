"""Statistics of latency samples: summaries, distribution-free CIs, ratio CIs and a rank test.

All functions take raw per-iteration latencies (milliseconds, any order) and use numpy/scipy for the work:
`np.percentile` for quantiles, `scipy.stats.quantile_test` for the order-statistic CI of the median,
`scipy.stats.bootstrap` for the CI of a ratio of medians and `scipy.stats.mannwhitneyu` for the rank test; a
two-level (process, then sample) bootstrap for cases measured in several processes (`--repeats`).
Non-finite values (NaN, inf) are dropped before anything is computed. Every CI of a median comes with the
confidence it actually reaches (`median_ci_level`, `hierarchical_ci_level`): below 6 samples the order-statistic
interval is (min, max), whose coverage is below 95%, and the analysis lets no verdict rest on it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats as _st

SUMMARY_KEYS = ("n", "median", "mean", "std", "min", "max", "p90", "p95", "p99", "iqr", "ci_low", "ci_high",
                "ci_level")
NOMINAL = 0.95  # the confidence every CI of a median is asked for; a verdict needs an interval that reaches it


def _clean(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def min_n_for_median_ci(conf: float = 0.95) -> int:
    """Smallest sample size for which the order-statistic CI of the median reaches `conf` (6 for 95%)."""
    n = 1
    while 1.0 - 2.0 * 0.5 ** n < conf:  # coverage of (min, max) is 1 - 2 * 0.5**n
        n += 1
    return n


def median_ci_level(n: int, conf: float = 0.95) -> float:
    """Confidence the interval `median_ci(x, conf)` guarantees for n samples, so that no one reads (min, max) of
    a tiny sample as a `conf` CI.

    From `min_n_for_median_ci(conf)` samples on: `conf` (the order statistics are chosen to reach it). Below:
    the exact coverage of (min, max) for any continuous distribution, P(x(1) <= median <= x(n)) = P(1 <= B <= n-1)
    with B ~ Binomial(n, 1/2), i.e. 1 - 2 * 0.5**n: 0.9375 for n = 5, 0.75 for n = 3, 0 for n = 1 (the interval
    (x, x)). nan for n = 0.
    """
    if n <= 0:
        return float("nan")
    if n >= min_n_for_median_ci(conf):
        return float(conf)
    return 1.0 - 2.0 * 0.5 ** n


def median_ci(x, conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from binomial order statistics.

    With the sorted sample x(1) <= ... <= x(n) and B ~ Binomial(n, 1/2), the interval is (x(j), x(n-j+1)) with
    the largest j such that P(B <= j - 1) <= (1 - conf) / 2, so its coverage is at least `conf` for any
    continuous distribution (computed by `scipy.stats.quantile_test(...).confidence_interval`).

    Tiny samples: below `min_n_for_median_ci(conf)` samples (n < 6 at 95%) no pair of order statistics
    reaches `conf`; the widest interval, (min, max), is returned instead (its coverage, `median_ci_level(n)`, is
    1 - 2 * 0.5**n, e.g. 94% for n = 5, 75% for n = 3) and n = 1 gives (x, x). An empty sample gives (nan, nan).
    """
    a = _clean(x)
    if a.size == 0:
        return float("nan"), float("nan")
    if a.size < min_n_for_median_ci(conf):
        return float(a.min()), float(a.max())
    ci = _st.quantile_test(a, q=float(np.median(a)), p=0.5).confidence_interval(confidence_level=conf)
    lo, hi = float(ci.low), float(ci.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # defensive: scipy gives nan when no order statistic fits
        return float(a.min()), float(a.max())
    return lo, hi


def summarize(samples_ms) -> dict:
    """Summary of per-iteration latencies: exactly the keys in SUMMARY_KEYS.

    n: finite samples kept; median/mean/min/max; std: sample standard deviation (ddof=1, nan when n < 2);
    p90/p95/p99: `np.percentile` (linear interpolation); iqr: p75 - p25; ci_low/ci_high: CI of the median from
    binomial order statistics asked at NOMINAL (95%); ci_level: the confidence it actually reaches
    (`median_ci_level`: 0.95, or below 95% with n < 6, where the interval is (min, max)).
    An empty input gives n = 0 and nan everywhere else.
    """
    a = _clean(samples_ms)
    n = int(a.size)
    if n == 0:
        return {"n": 0, **{k: float("nan") for k in SUMMARY_KEYS[1:]}}
    p25, p50, p75, p90, p95, p99 = np.percentile(a, [25, 50, 75, 90, 95, 99])
    lo, hi = median_ci(a, NOMINAL)
    return {
        "n": n,
        "median": float(p50),
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if n > 1 else float("nan"),
        "min": float(a.min()),
        "max": float(a.max()),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "iqr": float(p75 - p25),
        "ci_low": lo,
        "ci_high": hi,
        "ci_level": median_ci_level(n, NOMINAL),
    }


def bootstrap_ratio_ci(a, b, stat: Callable = np.median, conf: float = 0.95, n_boot: int = 2000,
                       seed: int | None = 0, max_elements: int = 4_000_000) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap CI of stat(b) / stat(a) (e.g. current / baseline medians).

    a and b are resampled independently (unpaired), `n_boot` times, with `scipy.stats.bootstrap`
    (`method="percentile"`: BCa's jackknife is quadratic in the sample size). `stat` must accept `axis=`
    (numpy reductions do). `max_elements` bounds the memory of one vectorised batch. Returns
    (ratio, lo, hi); with fewer than 2 samples on either side the CI is (nan, nan); deterministic for a fixed seed.
    """
    a, b = _clean(a), _clean(b)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan"), float("nan")
    ratio = float(stat(b) / stat(a))
    if a.size < 2 or b.size < 2:
        return ratio, float("nan"), float("nan")

    def _ratio(x, y, axis=-1):
        return stat(y, axis=axis) / stat(x, axis=axis)

    batch = max(1, min(n_boot, max_elements // max(a.size, b.size)))
    res = _st.bootstrap((a, b), _ratio, n_resamples=n_boot, confidence_level=conf, method="percentile",
                        vectorized=True, paired=False, batch=batch, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return ratio, float(ci.low), float(ci.high)


def mann_whitney_p(a, b) -> float:
    """Two-sided Mann-Whitney U p-value (`scipy.stats.mannwhitneyu`); nan when either side is empty.

    Identical constant samples (all values tied) give p = 1.
    """
    a, b = _clean(a), _clean(b)
    if a.size == 0 or b.size == 0:
        return float("nan")
    if np.ptp(np.concatenate([a, b])) == 0:
        return 1.0
    return float(_st.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def repeat_cv(groups) -> float:
    """Coefficient of variation (%) of the per-process medians: how far separate processes of one case disagree.

    `groups`: one array of samples per process. Sample standard deviation (ddof=1) of the group medians over their
    mean, in percent; nan with fewer than two non-empty groups.
    """
    meds = np.array([np.median(g) for g in _groups(groups)])
    if meds.size < 2 or meds.mean() <= 0:
        return float("nan")
    return float(meds.std(ddof=1) / meds.mean() * 100.0)


def _groups(groups) -> list[np.ndarray]:
    return [g for g in (_clean(g) for g in groups) if g.size]


def _percentile_ci(replicates: np.ndarray, conf: float) -> tuple[float, float]:
    tail = (1.0 - conf) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _hier_replicates(groups: list[np.ndarray], stat: Callable, n_boot: int, rng) -> np.ndarray:
    """stat of n_boot two-level resamples: processes with replacement, then samples within each drawn process."""
    out = np.empty(n_boot)
    k = len(groups)
    for j in range(n_boot):
        pick = rng.integers(0, k, k)
        out[j] = stat(np.concatenate([groups[i][rng.integers(0, groups[i].size, groups[i].size)] for i in pick]))
    return out


def hierarchical_ci(groups, stat: Callable = np.median, conf: float = 0.95, n_boot: int = 1000,
                    seed: int | None = 0) -> tuple[float, float]:
    """Two-level bootstrap percentile CI of stat(pooled samples) for samples taken in several processes (see
    `hierarchical_ratio_ci` for why and how). (nan, nan) without samples."""
    g = _groups(groups)
    if not g:
        return float("nan"), float("nan")
    return _percentile_ci(_hier_replicates(g, stat, n_boot, np.random.default_rng(seed)), conf)


def hierarchical_ci_level(groups, conf: float = 0.95) -> float:
    """Confidence the two-level bootstrap CI (`hierarchical_ci`) is taken to reach.

    A percentile bootstrap has no exact coverage; it is taken at its nominal `conf` when two or more processes hold
    `min_n_for_median_ci(conf)` samples or more (6 at 95%). With fewer, the resampled processes are too small to
    stand for their process: the level is that of the order-statistic interval of the second-largest process
    (`median_ci_level`), below `conf`, so no verdict rests on it. One process: that process's level; nan with none.
    """
    sizes = sorted((g.size for g in _groups(groups)), reverse=True)
    return median_ci_level(sizes[min(1, len(sizes) - 1)] if sizes else 0, conf)


def hierarchical_ratio_ci(a_groups, b_groups, stat: Callable = np.median, conf: float = 0.95, n_boot: int = 2000,
                          seed: int | None = 0) -> tuple[float, float, float]:
    """Point estimate and two-level bootstrap CI of stat(pooled b) / stat(pooled a) for samples in processes.

    Samples of one process are not independent of each other (they share the process's memory layout, thread
    placement and the machine's state during those seconds), so resampling samples alone gives a CI far too
    narrow when processes disagree. Each bootstrap replicate draws the processes with replacement, then the
    samples within each drawn process with replacement (the hierarchical bootstrap of Davison & Hinkley 1997,
    sec. 3.8), pools them and takes `stat`; the CI is the percentile interval of the ratio, both sides resampled
    independently. With few processes (2-3 per side) the interval is coarse and conservative: it spans roughly
    the spread of the process medians. Returns (ratio, lo, hi); (ratio, nan, nan) when either side has fewer than
    two samples in all.
    """
    ga, gb = _groups(a_groups), _groups(b_groups)
    if not ga or not gb:
        return float("nan"), float("nan"), float("nan")
    pa, pb = np.concatenate(ga), np.concatenate(gb)
    ratio = float(stat(pb) / stat(pa))
    if pa.size < 2 or pb.size < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    lo, hi = _percentile_ci(_hier_replicates(gb, stat, n_boot, rng) / _hier_replicates(ga, stat, n_boot, rng), conf)
    return ratio, lo, hi


def ratio_ci(a_groups, b_groups, stat: Callable = np.median, conf: float = 0.95, n_boot: int = 2000,
             seed: int | None = 0) -> tuple[float, float, float, bool]:
    """(ratio, lo, hi, two_level) of stat(b) / stat(a) for samples given per process: the two-level bootstrap when
    both sides have two or more processes (`hierarchical_ratio_ci`), else the one-level bootstrap of the pooled
    samples (`bootstrap_ratio_ci`)."""
    ga, gb = _groups(a_groups), _groups(b_groups)
    if len(ga) >= 2 and len(gb) >= 2:
        return (*hierarchical_ratio_ci(ga, gb, stat, conf=conf, n_boot=n_boot, seed=seed), True)
    a = np.concatenate(ga) if ga else np.array([])
    b = np.concatenate(gb) if gb else np.array([])
    return (*bootstrap_ratio_ci(a, b, stat, conf=conf, n_boot=n_boot, seed=seed), False)


def process_welch_p(a_groups, b_groups) -> float:
    """Two-sided Welch t-test p-value on the log medians of the processes of two runs (`scipy.stats.ttest_ind`).

    The unit of replication is the process, not the sample: a rank test on pooled samples treats thousands of
    correlated samples as independent and calls a 3% difference between two groups of processes "significant"
    when the processes themselves disagree by 5%. nan with fewer than two processes on either side; 1.0 when all
    process medians are equal.
    """
    la = np.log([np.median(g) for g in _groups(a_groups)])
    lb = np.log([np.median(g) for g in _groups(b_groups)])
    if la.size < 2 or lb.size < 2:
        return float("nan")
    if np.ptp(np.concatenate([la, lb])) == 0:
        return 1.0
    p = _st.ttest_ind(lb, la, equal_var=False).pvalue
    return float(p) if np.isfinite(p) else 1.0
