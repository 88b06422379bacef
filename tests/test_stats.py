import numpy as np
import pytest
from scipy import stats as st

from bench.stats import (SUMMARY_KEYS, bootstrap_ratio_ci, mann_whitney_p, median_ci, min_n_for_median_ci,
                         summarize)


def _binom_ranks(n, conf=0.95):
    """Independent reference: 0-based indices (j, n-1-j) of the symmetric order-statistic CI via scipy binom."""
    cdf = st.binom.cdf(np.arange(n + 1), n, 0.5)
    m = int(np.nonzero(cdf <= (1 - conf) / 2)[0].max())  # largest m with P(B <= m) <= alpha/2
    return m, n - 1 - m


@pytest.mark.parametrize("n", [6, 7, 10, 11, 20, 51, 100, 1000])
def test_median_ci_matches_binomial_order_statistics(n):
    x = np.random.default_rng(n).lognormal(0, 0.3, n)
    xs = np.sort(x)
    lo_i, hi_i = _binom_ranks(n)
    assert median_ci(x) == (xs[lo_i], xs[hi_i])
    cov = st.binom.cdf(hi_i, n, 0.5) - st.binom.cdf(lo_i, n, 0.5)  # P(lo_i+1 <= B <= hi_i)
    assert cov >= 0.95


def test_median_ci_tiny_samples():
    assert min_n_for_median_ci(0.95) == 6
    assert median_ci([]) != median_ci([])  # nan
    assert median_ci([2.0]) == (2.0, 2.0)
    assert median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)
    assert median_ci([3.0, 1.0, 2.0], conf=0.5) == (1.0, 3.0)  # 75% coverage >= 50%: a real CI (still min/max)


def test_summarize_against_numpy():
    x = np.random.default_rng(1).gamma(2.0, 1.0, 997)
    s = summarize(x)
    assert tuple(s) == SUMMARY_KEYS
    assert s["n"] == 997
    assert s["median"] == pytest.approx(np.median(x))
    assert s["mean"] == pytest.approx(x.mean())
    assert s["std"] == pytest.approx(x.std(ddof=1))
    for q in (90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(x, q))
    assert s["iqr"] == pytest.approx(st.iqr(x))
    assert (s["min"], s["max"]) == (x.min(), x.max())
    assert s["ci_low"] <= s["median"] <= s["ci_high"]
    assert (s["ci_low"], s["ci_high"]) == median_ci(x)


def test_summarize_degenerate():
    e = summarize(np.array([]))
    assert e["n"] == 0 and np.isnan(e["median"])
    one = summarize([5.0, np.nan])
    assert one["n"] == 1 and one["median"] == 5.0 and np.isnan(one["std"])
    assert (one["ci_low"], one["ci_high"]) == (5.0, 5.0)


def test_bootstrap_ratio_ci_covers_true_ratio_and_is_seeded():
    rng = np.random.default_rng(2)
    a = rng.lognormal(0, 0.05, 400)
    b = rng.lognormal(np.log(1.2), 0.05, 400)
    r, lo, hi = bootstrap_ratio_ci(a, b, n_boot=500, seed=3)
    assert r == pytest.approx(np.median(b) / np.median(a))
    assert lo < r < hi and lo < 1.2 < hi and lo > 1.1
    assert bootstrap_ratio_ci(a, b, n_boot=500, seed=3) == (r, lo, hi)
    r2, lo2, hi2 = bootstrap_ratio_ci(a, b, stat=np.mean, n_boot=300, seed=3)
    assert r2 == pytest.approx(b.mean() / a.mean()) and lo2 < r2 < hi2
    r1, lo1, hi1 = bootstrap_ratio_ci([1.0], [2.0])
    assert r1 == 2.0 and np.isnan(lo1) and np.isnan(hi1)


def test_mann_whitney_matches_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 60), rng.normal(0.5, 1, 70)
    assert mann_whitney_p(a, b) == pytest.approx(st.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    assert mann_whitney_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert np.isnan(mann_whitney_p([], [1.0]))


def test_repeat_cv_matches_numpy():
    from bench.stats import repeat_cv

    rng = np.random.default_rng(0)
    groups = [rng.normal(m, 1.0, 101) for m in (100.0, 110.0, 95.0)]
    meds = np.array([np.median(g) for g in groups])
    assert repeat_cv(groups) == pytest.approx(meds.std(ddof=1) / meds.mean() * 100)
    assert np.isnan(repeat_cv(groups[:1])) and np.isnan(repeat_cv([[], [1.0]]))


def _processes(rng, center, k=3, n=200, between=0.05, within=0.01):
    """k processes of n samples: each process has its own offset (lognormal, sd `between`), samples +-`within`."""
    return [center * np.exp(rng.normal(0, between)) * rng.lognormal(0, within, n) for _ in range(k)]


def test_hierarchical_ci_accounts_for_process_spread():
    """A/A where processes disagree by ~5%: resampling samples alone excludes 1 most of the time (false alarms);
    resampling processes then samples keeps 1 inside at about the nominal rate."""
    from bench.stats import hierarchical_ratio_ci

    rng = np.random.default_rng(7)
    flat_excl = hier_excl = 0
    trials = 40
    for t in range(trials):
        a, b = _processes(rng, 10.0), _processes(rng, 10.0)
        _, lo, hi = bootstrap_ratio_ci(np.concatenate(a), np.concatenate(b), n_boot=300, seed=t)
        flat_excl += not (lo <= 1.0 <= hi)
        _, lo, hi = hierarchical_ratio_ci(a, b, n_boot=300, seed=t)
        hier_excl += not (lo <= 1.0 <= hi)
    assert flat_excl / trials > 0.5
    assert hier_excl / trials <= 0.15


def test_hierarchical_ci_detects_a_real_shift_and_reduces_to_one_level():
    from bench.stats import hierarchical_ci, hierarchical_ratio_ci

    rng = np.random.default_rng(3)
    a = _processes(rng, 10.0, k=4, between=0.01)
    b = _processes(rng, 13.0, k=4, between=0.01)
    r, lo, hi = hierarchical_ratio_ci(a, b, n_boot=500, seed=0)
    assert r == pytest.approx(np.median(np.concatenate(b)) / np.median(np.concatenate(a)))
    assert 1.0 < lo <= r <= hi and r == pytest.approx(1.3, rel=0.05)
    # one process: the two-level bootstrap is the ordinary bootstrap of the median; its CI is close to the
    # order-statistic CI of the median
    x = rng.lognormal(0, 0.05, 400) * 10
    lo, hi = hierarchical_ci([x], n_boot=2000, seed=1)
    olo, ohi = median_ci(x)
    assert lo == pytest.approx(olo, rel=0.01) and hi == pytest.approx(ohi, rel=0.01)
    # seeded, and nan without samples
    assert hierarchical_ci(a, n_boot=200, seed=5) == hierarchical_ci(a, n_boot=200, seed=5)
    assert all(np.isnan(v) for v in hierarchical_ci([[], []]))


def test_process_welch_p_matches_scipy_on_log_medians():
    from bench.stats import process_welch_p

    rng = np.random.default_rng(2)
    a = [rng.normal(m, 0.1, 51) for m in (10.0, 10.4, 9.8)]
    b = [rng.normal(m, 0.1, 51) for m in (11.0, 11.5, 10.9, 11.2)]
    want = st.ttest_ind(np.log([np.median(g) for g in b]), np.log([np.median(g) for g in a]), equal_var=False)
    assert process_welch_p(a, b) == pytest.approx(want.pvalue)
    assert np.isnan(process_welch_p(a[:1], b)) and process_welch_p([[1.0], [1.0]], [[1.0], [1.0]]) == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_ci_level_below_6_samples_is_the_exact_binomial_coverage(n):
    """(min, max) of n samples covers the median when 1 <= B <= n-1 samples fall below it, B ~ Binomial(n, 1/2):
    the level reported is that coverage, below 95%, never the nominal 0.95."""
    from bench.stats import median_ci_level

    want = st.binom.cdf(n - 1, n, 0.5) - st.binom.cdf(0, n, 0.5)
    assert median_ci_level(n) == pytest.approx(want) and median_ci_level(n) < 0.95
    x = np.random.default_rng(n).lognormal(0, 0.3, n)
    s = summarize(x)
    assert (s["ci_low"], s["ci_high"]) == (x.min(), x.max()) and s["ci_level"] == pytest.approx(want)


def test_ci_level_matches_simulated_coverage_and_is_nominal_from_6():
    from bench.stats import median_ci_level

    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, (20000, 5))  # true median ln 2
    covered = np.mean([lo <= np.log(2) <= hi for lo, hi in map(median_ci, x)])
    assert covered == pytest.approx(median_ci_level(5), abs=0.01)  # 0.9375, not 0.95
    assert [median_ci_level(n) for n in (6, 7, 100)] == [0.95, 0.95, 0.95]
    assert np.isnan(median_ci_level(0)) and np.isnan(summarize([])["ci_level"])
    assert median_ci_level(3, conf=0.5) == 0.5  # 75% coverage reaches a 50% CI


def test_pooled_ci_level_needs_two_processes_with_6_samples():
    from bench.results.repeats import pool_rows
    from bench.stats import hierarchical_ci_level

    rng = np.random.default_rng(1)
    big, small = (list(rng.lognormal(0, 0.05, k) * 10) for k in (200, 3))
    assert hierarchical_ci_level([big, big, big]) == 0.95
    assert hierarchical_ci_level([big, small]) == pytest.approx(0.75)  # second-largest process: 3 samples
    assert hierarchical_ci_level([big, small[:2], big[:5]]) == pytest.approx(0.9375)
    row = {"status": "ok", "batch": 1, "macs": 10**9, "converged": True}
    assert pool_rows([row, row], [big, big[:100]])["latency_ms_ci_level"] == 0.95
    assert pool_rows([row, row], [big, small])["latency_ms_ci_level"] == pytest.approx(0.75)
