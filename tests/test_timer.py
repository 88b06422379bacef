import itertools
import time

import numpy as np
import pytest
import torch

from bench.measure.timer import WARMUP_MIN_ITERS, TimingResult, measure, timer_overhead_ns


def test_matmul_converges_with_min_samples_and_raw_samples():
    torch.set_num_threads(1)
    a = torch.randn(96, 96)
    res = measure(lambda: a @ a, min_time_s=0.2, max_time_s=3.0, rel_ci=0.05, min_samples=50)
    assert isinstance(res, TimingResult)
    assert res.n >= 50 and res.samples_ms.dtype == np.float64 and np.all(res.samples_ms > 0)
    assert res.converged
    assert res.warmup_iters >= WARMUP_MIN_ITERS
    assert res.first_call_ms > 0 and res.total_s > 0.2


def test_sleep_samples_are_single_call_latencies():
    res = measure(lambda: time.sleep(0.002), min_time_s=0.1, max_time_s=1.0, rel_ci=0.2, min_samples=10)
    assert res.n >= 10
    assert np.all(res.samples_ms >= 2.0)  # each sample covers one whole call, never a block average
    assert res.converged


def test_time_cap_gives_not_converged_and_at_least_one_sample():
    res = measure(lambda: time.sleep(0.03), min_time_s=0.05, max_time_s=0.05, rel_ci=1e-6, min_samples=1000,
                  warmup_max_s=0.01)
    assert not res.converged
    assert 1 <= res.n < 1000
    assert res.warmup_iters == WARMUP_MIN_ITERS  # warm-up bounded by time, but always a couple of calls


def test_max_samples_bounds_sampling():
    # calls of 1..20 us in turn: the median's CI can never close to 1e-9 (an empty call's can: its samples are a
    # few clock ticks, so the median and its CI bounds can be the same tick), so only max_samples ends the sampling
    calls = itertools.count()

    def spin():
        end = time.perf_counter_ns() + 1000 * (1 + next(calls) % 20)
        while time.perf_counter_ns() < end:
            pass

    res = measure(spin, min_time_s=0.0, max_time_s=5.0, rel_ci=1e-9, min_samples=5, max_samples=200)
    assert res.n == 200 and not res.converged


def test_first_call_apart_and_warmup_until_stable():
    calls = {"n": 0}

    def fn():  # first call slow (lazy init), then decreasing for a few calls, then steady
        calls["n"] += 1
        time.sleep(0.03 if calls["n"] == 1 else 0.001 * max(1, 8 - calls["n"]))

    res = measure(fn, min_time_s=0.05, max_time_s=1.0, rel_ci=0.5, min_samples=10, warmup_max_s=2.0)
    assert res.first_call_ms >= 30
    assert res.warmup_iters >= 6  # kept warming while times decreased
    assert np.median(res.samples_ms) < 3.0  # the slow early calls are not in the samples


def test_bad_arguments():
    with pytest.raises(ValueError):
        measure(lambda: None, device_type="tpu")
    with pytest.raises(ValueError):
        measure(lambda: None, rel_ci=0)


def test_timer_overhead_is_small_positive():
    assert 0 < timer_overhead_ns(seconds=0.05) < 1e6
