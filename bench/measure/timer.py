"""Adaptive latency timer: first call apart, warm-up until stable, then sampling until the median is known.

Reads like `torch.utils.benchmark.Timer.adaptive_autorange`, with two differences that matter for a benchmark
suite: every sample is the latency of ONE call (never a block average), and every raw sample is kept.

    res = measure(lambda: model(x), device_type="cpu", min_time_s=1.0, max_time_s=10.0)
    res.samples_ms           # np.ndarray, one entry per timed call, in call order
    summarize(res.samples_ms)

Phases (wall clock, `time.perf_counter_ns`):

1. First call: timed on its own (`first_call_ms`; lazy initialisation, allocation, autotuning). On CUDA it is
   host wall time between two `torch.cuda.synchronize()` calls, since first-call costs are mostly on the host.
2. Warm-up: at least `WARMUP_MIN_ITERS` calls, then until the median of the last `WARMUP_WINDOW` calls is no
   longer below the median of the window before by more than `WARMUP_TOL` (times stopped decreasing), bounded
   by `warmup_max_s` (default: 30% of `max_time_s`, at least 0.5 s) and `WARMUP_MAX_ITERS` calls. A slow function
   may therefore get only the minimum two warm-up calls.
3. Sampling: every call timed individually until at least `min_samples` samples AND `min_time_s` of sampling AND
   the 95% CI of the median (binomial order statistics, `bench.stats.median_ci`) lies within
   median * (1 +- rel_ci) -> converged=True; or until `max_time_s` of sampling or `max_samples` samples, whichever
   first -> converged=False (the CI is checked one last time). At least one sample is always taken, so a call
   slower than `max_time_s` yields one sample. `max_time_s` is checked between calls: it bounds the sampling phase,
   not the warm-up (which has its own bound) and not one call.

CPU: `time.perf_counter_ns()` around each call (the loop's own cost is `timer_overhead_ns()`, ~100s of ns).
CUDA: a `torch.cuda.Event(enable_timing=True)` pair is recorded on the current stream around each call; events are
recorded for a batch of calls (sized to ~50 ms of GPU time), then the host synchronises once and reads every pair
with `elapsed_time`. Each sample is thus the GPU time of a single call, without a per-call synchronisation. Work
that a callable runs on another stream is not covered by the events unless it joins the current stream.

The garbage collector is disabled during warm-up and sampling (as `timeit` does) and restored afterwards.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bench.stats import median_ci

WARMUP_MIN_ITERS = 2
WARMUP_WINDOW = 3
WARMUP_TOL = 0.02
WARMUP_MAX_ITERS = 10_000
CUDA_BATCH_TARGET_S = 0.05
CUDA_MAX_BATCH = 1000


@dataclass
class TimingResult:
    samples_ms: np.ndarray = field(repr=False)
    first_call_ms: float
    warmup_iters: int
    converged: bool
    total_s: float

    @property
    def n(self) -> int:
        return int(self.samples_ms.size)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms)) if self.samples_ms.size else float("nan")


def _ci_within(samples: np.ndarray, rel_ci: float) -> bool:
    if samples.size == 0:
        return False
    med = float(np.median(samples))
    lo, hi = median_ci(samples, 0.95)
    return med * (1 - rel_ci) <= lo and hi <= med * (1 + rel_ci)


@dataclass(frozen=True)
class _Budget:
    """When sampling stops: enough samples, enough time and a tight CI (converged), or out of time or samples."""

    min_time_s: float
    max_time_s: float
    rel_ci: float
    min_samples: int
    max_samples: int

    def check(self, samples: list[float], n: int, el: float, next_check: int) -> tuple[bool, bool, int]:
        """-> (stop, converged, next_check). The CI is computed at most every ~10% growth of the sample."""
        out_of_budget = el >= self.max_time_s or n >= self.max_samples
        if not out_of_budget and (n < next_check or el < self.min_time_s):
            return False, False, next_check
        if n >= self.min_samples and el >= self.min_time_s and _ci_within(np.asarray(samples), self.rel_ci):
            return True, True, next_check
        return out_of_budget, False, n + max(1, n // 10)


def _warm_done(times: list[float]) -> bool:
    w = WARMUP_WINDOW
    if len(times) < max(WARMUP_MIN_ITERS, 2 * w):
        return False
    last = float(np.median(times[-w:]))
    prev = float(np.median(times[-2 * w:-w]))
    return last >= prev * (1 - WARMUP_TOL)


class CpuClock:
    """Times one call at a time with perf_counter_ns."""

    def __init__(self, fn: Callable[[], object]):
        self.fn = fn

    def first(self) -> float:
        t = time.perf_counter_ns()
        self.fn()
        return (time.perf_counter_ns() - t) / 1e6

    def batch(self, k: int) -> list[float]:
        fn, clock = self.fn, time.perf_counter_ns
        out = [0] * k
        for i in range(k):
            t = clock()
            fn()
            out[i] = clock() - t
        return [v / 1e6 for v in out]


class CudaClock:
    """Times a batch of single calls with CUDA event pairs and one synchronisation per batch."""

    def __init__(self, fn: Callable[[], object]):
        import torch

        self.fn, self.torch = fn, torch

    def first(self) -> float:
        sync = self.torch.cuda.synchronize
        sync()
        t = time.perf_counter_ns()
        self.fn()
        sync()
        return (time.perf_counter_ns() - t) / 1e6

    def batch(self, k: int) -> list[float]:
        Event = self.torch.cuda.Event
        starts = [Event(enable_timing=True) for _ in range(k)]
        ends = [Event(enable_timing=True) for _ in range(k)]
        fn = self.fn
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        ends[-1].synchronize()  # all earlier events on the stream are complete too
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def clock(fn: Callable[[], object], device_type: str) -> CpuClock | CudaClock:
    """The clock of a device type: `first()` times the first call, `batch(k)` k single calls (ms each)."""
    if device_type == "cpu":
        return CpuClock(fn)
    if device_type == "cuda":
        return CudaClock(fn)
    raise ValueError(f"device_type must be 'cpu' or 'cuda', not {device_type!r}")


def measure(fn: Callable[[], object], *, device_type: str = "cpu", min_time_s: float = 1.0,
            max_time_s: float = 10.0, rel_ci: float = 0.01, min_samples: int = 10, max_samples: int = 100_000,
            warmup_max_s: float | None = None) -> TimingResult:
    """Time `fn()` (no arguments; its result is dropped): first call, warm-up, adaptive sampling (see module doc)."""
    if max_time_s <= 0 or min_time_s < 0 or rel_ci <= 0 or min_samples < 1 or max_samples < 1:
        raise ValueError("measure: need max_time_s > 0, min_time_s >= 0, rel_ci > 0, min_samples/max_samples >= 1")
    budget = _Budget(min(min_time_s, max_time_s), max_time_s, rel_ci, min(min_samples, max_samples), max_samples)
    if warmup_max_s is None:
        warmup_max_s = max(0.5, 0.3 * max_time_s)
    timer = clock(fn, device_type)
    t_begin = time.perf_counter()
    first_ms = timer.first()
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        warm = warm_up(timer, warmup_max_s)
        if device_type == "cuda":
            samples, converged = _sample_batched(timer, warm, budget)
        else:
            samples, converged = _sample_each(fn, budget)
    finally:
        if gc_was_enabled:
            gc.enable()
    return TimingResult(samples_ms=np.asarray(samples, dtype=np.float64), first_call_ms=float(first_ms),
                        warmup_iters=len(warm), converged=converged, total_s=time.perf_counter() - t_begin)


def warm_up(clock: CpuClock | CudaClock, warmup_max_s: float) -> list[float]:
    """Warm-up call times: until they stop decreasing (_warm_done), bounded by time and count (the rule every
    timed design uses: this timer, the A/B child and the interleaved child)."""
    warm: list[float] = []
    t0 = time.perf_counter()
    while True:
        warm.extend(clock.batch(1))
        if len(warm) < WARMUP_MIN_ITERS:
            continue
        if _warm_done(warm) or time.perf_counter() - t0 >= warmup_max_s or len(warm) >= WARMUP_MAX_ITERS:
            return warm


def _sample_batched(clock: CudaClock, warm: list[float], budget: _Budget) -> tuple[list[float], bool]:
    """CUDA: batches of single-call event timings, each batch sized to ~CUDA_BATCH_TARGET_S of GPU time."""
    samples: list[float] = []
    next_check = budget.min_samples
    t0 = time.perf_counter()
    while True:
        est = float(np.median(samples[-50:] or warm[-WARMUP_WINDOW:])) / 1e3  # seconds per call
        k = int(min(CUDA_MAX_BATCH, max(1, CUDA_BATCH_TARGET_S / max(est, 1e-7))))
        samples.extend(clock.batch(min(k, budget.max_samples - len(samples))))
        done, converged, next_check = budget.check(samples, len(samples), time.perf_counter() - t0, next_check)
        if done:
            return samples, converged


def _sample_each(fn: Callable[[], object], budget: _Budget) -> tuple[list[float], bool]:
    """CPU: one call per sample, the clock read inline around it (no call between the reads but fn itself); the
    budget is checked only when it could say stop."""
    samples: list[float] = []
    next_check = budget.min_samples
    max_time_s, max_samples = budget.max_time_s, budget.max_samples
    ns = time.perf_counter_ns
    t0_ns = ns()
    while True:
        t = ns()
        fn()
        t_end = ns()
        samples.append((t_end - t) / 1e6)
        n, el = len(samples), (t_end - t0_ns) / 1e9
        if n >= next_check or el >= max_time_s or n >= max_samples:
            done, converged, next_check = budget.check(samples, n, el, next_check)
            if done:
                return samples, converged


def timer_overhead_ns(device_type: str = "cpu", seconds: float = 0.3) -> float:
    """Median cost in nanoseconds of timing an empty callable with `measure` (the floor of any sample)."""
    res = measure(lambda: None, device_type=device_type, min_time_s=seconds, max_time_s=seconds,
                  rel_ci=1e-9, min_samples=10, max_samples=100_000, warmup_max_s=0.05)
    return float(np.median(res.samples_ms) * 1e6)
