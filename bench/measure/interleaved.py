"""The interleaved child: the cases of one decision group built in one process and timed in turn, so that the
machine's drift and the process's own state (memory layout, thread placement) hit every side alike.

Steps: setup (threads, device, seed: bench.measure.steps) -> for each side: build, reference, prepare
(bench.measure.steps.prepare_side; a side that fails there becomes its own error row and the others go on) ->
first call and warm-up of each side (the timer's warm-up rule) -> cycles. A cycle runs every side once in a
rotated order and then once in the reverse of that order (for three sides, cycle 0 is A B C C B A, cycle 1 is
B C A A C B, ...): every side's two blocks straddle the cycle's midpoint, so a linear drift within a cycle adds the
same to every side (the N-side form of A/B's A B B A), and the rotation gives every side every position and every
neighbour in turn (a Latin square over cycles). A block is one call, or for very fast sides as many calls (the same
for every side) as make it >= BLOCK_MIN_MS on the fastest, timed as one interval. Cycles run for `process_time_s`
and at least `min_cycles` (1 when one cycle alone outlasts the process time: a 10 s forward at 2048 is not run
four times per process for nothing).

Result: one row per side (latency columns from its blocks in this process, numerics against its eager fp32
reference, energy and profile on the process that asks for them) and `cycles`, one list per cycle of each side's
time (the mean of its two blocks, ms per call), from which the parent takes each pair's per-process log ratio.
"""
from __future__ import annotations

import gc
import json
import math
import time
from typing import Any, Callable, Mapping

from bench.cases import Case, CaseError
from bench.measure.steps import (AfterBuild, Stage, failure_row, measure_energy, prepare_side, profile_side, setup,
                                 side_localise_row, side_numerics)

BLOCK_MIN_MS = 1.0
MAX_BLOCK = 10_000
DISCARD_BELOW = 0.25  # the first cycle is discarded when a cycle takes less than this share of the process time


def cycle_order(n: int, c: int) -> list[int]:
    """Side indices of cycle `c` among `n` sides: the order rotated by c, then reversed."""
    rot = [(i + c) % n for i in range(n)]
    return rot + rot[::-1]


def run_group_spec(spec: Mapping[str, Any], stage: Stage, after_build: AfterBuild | None = None) -> dict:
    """{"row": {status}, "rows": [one per side], "cycles": [[ms per side], ...], "samples": [[side, ms], ...]}."""
    try:
        cases = [Case.from_spec(c) for c in spec["cases"]]
        process_time = float(spec.get("process_time_s", 1.0))
    except (CaseError, KeyError, TypeError, ValueError) as e:
        return {"row": {"status": "error", "reason": f"group spec: {e}"}, "rows": [], "cycles": [], "samples": []}
    rows = [c.as_row() for c in cases]
    try:
        cycles, samples = _measure(cases, rows, stage, process_time, spec, after_build)
        status = {"status": "ok", "reason": ""}
    except BaseException as e:  # noqa: BLE001 - a failure of the shared loop fails every side of this process
        status = failure_row(e, stage.name)
        rows = [{**r, **status} for r in rows]
        cycles, samples = [], []
    return {"row": status, "rows": rows, "cycles": cycles, "samples": samples}


def _measure(cases: list[Case], rows: list[dict], stage: Stage, process_time: float, spec: Mapping[str, Any],
             after_build: AfterBuild | None) -> tuple[list[list[float]], list[list]]:
    info = setup(cases[0])
    sides: list[tuple[int, Any]] = []  # (index, prepared side) of the sides that built
    for i, case in enumerate(cases):
        try:
            sides.append((i, prepare_side(case, rows[i], stage, f" {i + 1}/{len(cases)}", after_build)))
        except BaseException as e:  # noqa: BLE001 - this side fails, the others are measured
            rows[i].update(failure_row(e, stage.name))
    if not sides:
        return [], []
    stage("timing")
    fns = [s.fn for _, s in sides]
    index = [i for i, _ in sides]
    cycles, per_side, k = _timed_cycles(cases[0].device_type, fns, rows, index, process_time)
    sides[0][1].state.check("the timed calls of this process")  # a change then fails the process: measured alone
    samples = []
    for j, (i, side) in enumerate(sides):
        samples += [[i, v] for v in per_side[j]]
        _finish_side(cases[i], side, rows[i], per_side[j], k, {**info}, stage, spec)
    for i, side in sides:  # int8 / fp16: where the error enters, once every side is measured (a second build)
        side_localise_row(cases[i], rows[i], stage, side.y_ref, side.built.rng_state)
    where = {i: j for j, i in enumerate(index)}  # case index -> position among the sides that built
    return [[c[where[i]] if i in where else math.nan for i in range(len(cases))] for c in cycles], samples


def _timed_cycles(device_type: str, fns: list[Callable[[], Any]], rows: list[dict], index: list[int],
                  process_time: float) -> tuple[list[list[float]], list[list[float]], int]:
    """Warm every side, then cycles: (per cycle, each side's mean of its two blocks; per side, every block's ms
    per call in cycle order; the block size in calls)."""
    import numpy as np

    from bench.measure.timer import clock, warm_up

    wmax = max(0.2, 0.3 * process_time)
    est = []
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for fn, i in zip(fns, index):
            timer = clock(fn, device_type)
            rows[i]["first_call_ms"] = timer.first()
            warm = warm_up(timer, wmax)
            rows[i]["warmup_iters"] = len(warm)
            est.append(float(np.median(warm[-3:])))
        k = int(min(MAX_BLOCK, max(1, math.ceil(BLOCK_MIN_MS / max(min(est), 1e-6)))))
        cycle_ms = 2 * k * sum(est)
        min_cycles = 1 if cycle_ms / 1e3 >= process_time else 2
        run = cuda_blocks if device_type == "cuda" else cpu_blocks
        if cycle_ms / 1e3 < DISCARD_BELOW * process_time:
            run(fns, cycle_order(len(fns), 0), k)  # discarded: it carries the switch from warm-up
        cycles, blocks = [], []
        t0 = time.perf_counter()
        c = 0
        while len(cycles) < min_cycles or time.perf_counter() - t0 < process_time:
            order = cycle_order(len(fns), c)
            times = run(fns, order, k)
            per = [[t for o, t in zip(order, times) if o == s] for s in range(len(fns))]
            cycles.append([sum(p) / 2 for p in per])
            blocks.append(per)
            c += 1
    finally:
        if gc_was:
            gc.enable()
    flat = [[v for cyc in blocks for v in cyc[s]] for s in range(len(fns))]
    return cycles, flat, k


def cpu_blocks(fns: list[Callable[[], Any]], order: list[int], k: int) -> list[float]:
    """ms per call of each block of the cycle, in `order`; each block of k calls is one perf_counter_ns interval."""
    ns = time.perf_counter_ns
    out = []
    for s in order:
        fn = fns[s]
        t = ns()
        for _ in range(k):
            fn()
        out.append((ns() - t) / 1e6 / k)
    return out


def cuda_blocks(fns: list[Callable[[], Any]], order: list[int], k: int) -> list[float]:
    """ms per call of each block: a CUDA event pair around each block, one synchronisation per cycle."""
    import torch

    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in order]
    for (start, end), s in zip(events, order):
        start.record()
        for _ in range(k):
            fns[s]()
        end.record()
    events[-1][1].synchronize()
    return [start.elapsed_time(end) / k for start, end in events]


def _finish_side(case: Case, side: Any, row: dict, samples_ms: list[float], k: int, info: dict, stage: Stage,
                 spec: Mapping[str, Any]) -> None:
    """Latency columns from the side's blocks, numerics, and (when the spec asks) energy and the profiled pass."""
    from bench.results.repeats import latency_fields

    row.update(latency_fields(samples_ms, case.batch, row.get("macs"), case.settings.device_peak_gmacs_per_s))
    row.update(status="ok", reason="", converged=None, block=k)
    side_numerics(case, side, row, info)
    info["memory"] = "not measured in the interleaved design (the sides share the process); --design isolated"
    if spec.get("energy"):
        row.update(measure_energy(case, side.fn, row["latency_ms_median"], info, stage))
    else:
        info["energy"] = "measured in the group's first process only"
    row["backend_info"] = json.dumps({**side.info, **info, "design": "interleaved", "block": k},
                                     default=str, sort_keys=True)
    if spec.get("profile") and case.settings.profile:
        stage("profile")
        row["_profile"] = profile_side(case, row)
