"""Bandwidth calibration (a STREAM-like triad) and the measured roofline it makes with the matmul peak.

Mirrors bench.measure.calibrate: one number per (device, precision, threads), measured in the process that will
use it. CPU: `torch.add(b, c, alpha=q, out=a)` (a = b + q*c) over three arrays each at least 4x the last-level
cache (and 64 MiB), best of `runs` timed calls after a warm-up. Bytes credited per call: 3 arrays x n x element
size (read b, read c, write a), STREAM's convention. On a CPU without streaming stores the write of `a` first
reads its cache lines (write-allocate), so the memory system moves ~4/3 of the credited bytes: the figure is what
a kernel can count as useful traffic, and is below the DRAM's raw rate. CUDA: a large `copy_` (credited 2 x n x
element size: read + write), timed with CUDA events.

Roofline (Williams, Waterman, Patterson): attainable GMAC/s at intensity I (MACs per byte) =
min(peak GMAC/s, bandwidth GB/s x I); the ridge point peak / bandwidth is the intensity above which an op can be
compute bound. The peak is bench.measure.calibrate's large-matmul rate, so both roofs are measured.
"""
from __future__ import annotations

import pathlib
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from bench.measure.calibrate import calibrate

_DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}
MIN_ARRAY_MB = 64


def last_level_cache_bytes(default: int = 64 << 20) -> int:
    """The largest CPU cache of cpu0 (sysfs), else `default`."""
    sizes = []
    for f in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * mult)
    return max(sizes) if sizes else default


def _array_elems(array_mb: float | None, elem: int) -> int:
    if array_mb is None:
        array_mb = max(MIN_ARRAY_MB, 4 * last_level_cache_bytes() / 2**20)
    return int(array_mb * 2**20) // elem


def _cpu_triad(torch: Any, n: int, dtype: Any, runs: int) -> list[float]:
    a = torch.empty(n, dtype=dtype)
    b = torch.full((n,), 1.0, dtype=dtype)
    c = torch.full((n,), 2.0, dtype=dtype)
    a.zero_()  # first touch: the pages exist before timing
    torch.add(b, c, alpha=3.0, out=a)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        times.append(time.perf_counter() - t0)
    return times


def _cuda_copy(torch: Any, n: int, dtype: Any, runs: int, device: str) -> list[float]:
    src = torch.ones(n, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def triad_bandwidth(device: str = "cpu", precision: str = "fp32", threads: int = 0, *,
                    array_mb: float | None = None, runs: int = 20) -> dict:
    """Best-of-`runs` GB/s (1e9 bytes/s) of the triad (CPU) or a copy (CUDA); see the module docstring for the
    bytes credited. `array_mb`: the size of each array (default: 4x the last-level cache, >= 64 MiB; on CUDA
    1 GiB). threads > 0 sets torch's CPU threads, as the cases do."""
    import torch

    dev_type = device.split(":")[0]
    dtype = getattr(torch, _DTYPES.get(precision, "float32"))
    elem = torch.empty((), dtype=dtype).element_size()
    if dev_type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if dev_type == "cuda":
        n = _array_elems(array_mb or 1024, elem)
        times, arrays, kernel = _cuda_copy(torch, n, dtype, runs, device), 2, "copy_"
    else:
        n = _array_elems(array_mb, elem)
        times, arrays, kernel = _cpu_triad(torch, n, dtype, runs), 3, "triad a = b + q*c (torch.add out=)"
    credited = arrays * n * elem
    best = min(times)
    return {"device": device, "precision": precision, "threads": threads if dev_type == "cpu" else 0,
            "kernel": f"{kernel}, {n} x {str(dtype).replace('torch.', '')}", "gb_per_s": credited / best / 1e9,
            "median_gb_per_s": credited / statistics.median(times) / 1e9, "bytes_credited": credited,
            "array_mb": n * elem / 2**20, "best_ms": best * 1e3, "runs": len(times),
            "llc_mb": last_level_cache_bytes() / 2**20 if dev_type == "cpu" else None,
            "seconds": time.perf_counter() - t0}


@dataclass(frozen=True)
class Roofline:
    """Two measured roofs: the matmul peak (GMAC/s) and the bandwidth (GB/s)."""
    peak_gmacs_per_s: float
    bandwidth_gb_per_s: float

    @property
    def ridge_macs_per_byte(self) -> float:
        return self.peak_gmacs_per_s / self.bandwidth_gb_per_s

    def attainable(self, intensity: Any) -> Any:
        """min(peak, bandwidth x intensity) in GMAC/s, for a number or an array of MACs per byte."""
        return attainable(intensity, self.peak_gmacs_per_s, self.bandwidth_gb_per_s)


def attainable(intensity: Any, peak_gmacs_per_s: float, bandwidth_gb_per_s: float) -> Any:
    """The roofline: GB/s x MAC/byte = GMAC/s, capped at the peak. NaN intensity stays NaN."""
    return np.minimum(peak_gmacs_per_s, bandwidth_gb_per_s * np.asarray(intensity, dtype=float))


def measure_roofline(device: str = "cpu", precision: str = "fp32", threads: int = 0, *,
                     seconds: float = 0.6, array_mb: float | None = None) -> tuple[Roofline, dict, dict]:
    """(Roofline, matmul calibration, bandwidth calibration) for one device setting, both measured now."""
    peak = calibrate(device, precision, threads, seconds=seconds)
    bw = triad_bandwidth(device, precision, threads, array_mb=array_mb)
    return Roofline(peak["gmacs_per_s"], bw["gb_per_s"]), peak, bw


def add_roofline(table: Any, roofline: Roofline) -> Any:
    """A copy of an attribution table with attainable_gmacs_per_s, roofline_frac (achieved / attainable) and
    bound ("memory" below the ridge point, "compute" above; empty where the row has no MACs)."""
    df = table.copy()
    inten = df["intensity_macs_per_byte"].to_numpy(float)
    df["attainable_gmacs_per_s"] = roofline.attainable(inten)
    df["roofline_frac"] = df["gmacs_per_s"] / df["attainable_gmacs_per_s"]
    bound = np.where(inten >= roofline.ridge_macs_per_byte, "compute", "memory")
    df["bound"] = np.where(df["macs"].to_numpy() > 0, bound, "")
    return df
