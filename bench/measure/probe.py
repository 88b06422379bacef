"""The speed probe's measuring half: a fixed kernel timed in a child, so that two probes differ only by the machine.

bench.health (the parent) starts it between cases (spec {"kind": "health"}, bench.measure.child) and judges the
drift between the probes around a case; the kernel lives here, on the child's side of the layering, because the
child must not import the runner's modules. Its calls (~0.4 ms) are shorter than a scheduler slice, so their
median tracks the core's speed, not its share.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

PROBE_N = 256
PROBE_SECONDS = 0.25
PROBE_WARMUP_S = 0.05


def probe_kernel(seconds: float = PROBE_SECONDS, n: int = PROBE_N) -> dict[str, Any]:
    """In a child: median GMAC/s of single-thread n x n fp32 matmuls, each call timed on its own, for `seconds`
    after a short warm-up (a fixed kernel, so two probes differ only by the machine)."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, b, out = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), torch.empty(n, n)
    end = time.perf_counter() + PROBE_WARMUP_S
    while time.perf_counter() < end:
        torch.mm(a, b, out=out)
    ns: list[int] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(ns) < 5:
        s = time.perf_counter_ns()
        torch.mm(a, b, out=out)
        ns.append(time.perf_counter_ns() - s)
    return {"gmacs_per_s": n ** 3 / (statistics.median(ns) / 1e9) / 1e9, "n": len(ns),
            "kernel": f"mm {n}x{n} float32, 1 thread", "seconds": round(time.perf_counter() - t0, 3)}
