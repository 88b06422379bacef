"""Calibration kernel: the device's achievable multiply-accumulate rate on a large square matmul.

Run once per run and per (device, precision, threads) in a child process (see runner.calibration_key); the result
lands in meta.json under "calibration" and every row's frac_of_peak = gmacs_per_s / this rate. A large matmul is the
best case of a dense kernel, so frac_of_peak says how far a model is from the device's practical peak.
"""
from __future__ import annotations

import time

SIZES = {"cpu": 1024, "cuda": 8192}


def calibrate(device: str, precision: str, threads: int, seconds: float = 0.6) -> dict:
    """Median-of-calls GMAC/s of an n x n @ n x n matmul (n from SIZES); TF32 only when precision is tf32."""
    import torch

    from bench.measure.timer import measure

    dtype_name = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(precision,
                                                                                                   "float32")
    dev_type = device.split(":")[0]
    if dev_type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    if dev_type == "cuda":
        from bench.backends import set_fp32_math

        torch.cuda.set_device(torch.device(device))
        set_fp32_math("cuda", precision)  # TF32 only for tf32 (the same switches as the cases)
    n = SIZES.get(dev_type, 1024)
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t0 = time.perf_counter()
    res = measure(lambda: torch.mm(a, b, out=out), device_type=dev_type, min_time_s=seconds / 2,
                  max_time_s=seconds, rel_ci=0.02, min_samples=5, warmup_max_s=seconds / 2)
    med_s = res.median_ms / 1e3
    return {"device": device, "precision": precision, "threads": threads, "kernel": f"mm {n}x{n} {dtype_name}",
            "gmacs_per_s": n ** 3 / med_s / 1e9, "n": res.n, "median_ms": res.median_ms,
            "seconds": time.perf_counter() - t0}
