"""The A/B child: A and B built in one process and timed alternately, so that machine drift hits both alike.

The measuring half of bench.ab (the parent: engine, matrix, sides, ...); bench.measure.child dispatches a spec of
kind "ab" here. It is in the child's layer: it imports the child's steps, never the launcher or the runner.

Steps: setup (threads, device, seed: bench.measure.steps) -> build each side from the same seed -> one example
input tensor for both -> `backends.prepare` each with the same backend -> first call and warm-up of each (the
timer's warm-up rule, bench.measure.timer; skipped for calls longer than its time bound, for which the discarded
cycle is the warm-up) -> one discarded ABBA cycle -> ABBA cycles (A B B A) while the next one ends within
`process_time_s`, and at least MIN_CYCLES cycles. A block is one call, or for very fast cases as many calls (the
same for both sides) as make it >= BLOCK_MIN_MS on the faster side, timed as one interval on the timer's clock
(`perf_counter_ns` on the CPU; on CUDA an event pair around the block, read after one synchronisation per cycle),
recorded as milliseconds per call. The process's statistic is the median over cycles of log(tB / tA), with
tA = mean(A1, A2) and tB = mean(B1, B2): the two A blocks straddle the B blocks, so a linear drift within a cycle
cancels. Pairs design (mode "a" / "b"): one side alone, timed by `bench.measure.timer.measure`.

A side is a registered model, a builder in a user's .py file (imported under a module name derived from its
path), or a model of another checkout's `models` package (another git revision): `models_from(root)` swaps that
package in for ours while it is built and restores sys.modules and sys.path afterwards; the built module keeps
its own classes.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import importlib.util
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping

from bench.ab.spec import ABSpec, Side
from bench.cases import CaseError
from bench.measure.steps import Stage, failure_row, setup
from bench.measure.interleaved import cpu_blocks, cuda_blocks

MIN_CYCLES = 3  # a long call still gives a few cycles a process (the pooled interval of bench.ab.decide needs 3)
BLOCK_MIN_MS = 1.0  # a block of a very fast case is made at least this long (timer resolution, loop overhead)
MAX_BLOCK = 10_000


def run_ab_spec(spec: Mapping[str, Any], stage: Stage) -> dict:
    """{"row": {...}, "samples": [[side, ms], ...]} for one A/B process; never raises for a failing case."""
    try:
        s = ABSpec.from_spec(spec)
    except CaseError as e:  # a spec the parent should never write
        return {"row": {"status": "error", "reason": str(e)}, "samples": []}
    row: dict[str, Any] = {"mode": s.mode}
    try:
        samples = _measure(s, row, stage)
        row["status"], row["reason"] = "ok", ""
    except BaseException as e:  # noqa: BLE001 - every failure becomes a row
        row.update(failure_row(e, stage.name))
        samples = []
    return {"row": row, "samples": samples}


def _measure(s: ABSpec, row: dict, stage: Stage) -> list[list]:
    from bench import backends
    from models.registry import example_input

    case = s.case
    row.update(setup(case))
    keys = ("a", "b") if s.mode == "abba" else (s.mode,)
    x = example_input(case.model, case.height, case.width, case.batch, seed=case.seed)  # one tensor for both
    fns = {}
    for key in keys:
        side = s.side(key)
        stage(f"build {key}")
        model = build_side(side, case.seed)
        stage(f"prepare {key}")
        prepared = backends.prepare(model, x, backend=side.backend, device=case.device, precision=case.precision,
                                    channels_last=case.channels_last, fold=case.folded,
                                    workdir=case.settings.workdir or "/tmp")
        fns[key] = prepared.fn
        row[f"{key}_build_s"] = prepared.build_s
    stage("timing")
    if s.mode != "abba":
        return _alone(s, fns[s.mode], row)
    return _abba(s, fns["a"], fns["b"], row)


def _alone(s: ABSpec, fn: Callable[[], Any], row: dict) -> list[list]:
    """Pairs design: one side timed alone for process_time_s by the engine's timer."""
    import numpy as np

    from bench.measure.timer import measure

    res = measure(fn, device_type=s.case.device_type, min_time_s=s.process_time_s, max_time_s=s.process_time_s,
                  min_samples=10)
    row.update({f"{s.mode}_median_ms": float(np.median(res.samples_ms)), f"{s.mode}_first_call_ms": res.first_call_ms,
                "n": res.n})
    return [[s.mode, float(v)] for v in res.samples_ms]


def _abba(s: ABSpec, fa: Callable[[], Any], fb: Callable[[], Any], row: dict) -> list[list]:
    """Warm both, then ABBA cycles for process_time_s; adds the per-process statistic, the medians and where the
    process's timing went (warm_s, cycles_s) to `row`."""
    import numpy as np

    device_type = s.case.device_type
    wmax = max(0.2, 0.3 * s.process_time_s)
    cycle = _cuda_cycle if device_type == "cuda" else _cpu_cycle
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t_warm = time.perf_counter()
        block = _warm(fa, fb, device_type, wmax, cycle, row)
        cycles = []
        t0 = time.perf_counter()
        while len(cycles) < MIN_CYCLES or _another_fits(time.perf_counter() - t0, len(cycles), s.process_time_s):
            cycles.append(cycle(fa, fb, block))
        t1 = time.perf_counter()
    finally:
        if gc_was_enabled:
            gc.enable()
    c = np.asarray(cycles)
    row.update({"block": block, "cycles": len(cycles), "log_ratio": abba_statistic(c),
                "a_median_ms": float(np.median(c[:, [0, 3]])), "b_median_ms": float(np.median(c[:, [1, 2]])),
                "warm_s": t0 - t_warm, "cycles_s": t1 - t0})
    return [[side, float(v)] for cyc in cycles for side, v in zip("abba", cyc)]


def _another_fits(elapsed_s: float, done: int, process_time_s: float) -> bool:
    """Whether one more cycle (as long as the mean so far) ends within process_time_s: a 2 s call's 8 s cycle does
    not run past the time the parent planned for the process."""
    return elapsed_s + (elapsed_s / done if done else 0.0) <= process_time_s


def _warm(fa: Callable[[], Any], fb: Callable[[], Any], device_type: str, wmax: float, cycle: Callable,
          row: dict) -> int:
    """First call and warm-up of each side, then one discarded ABBA cycle (it carries the switch from warm-up);
    returns the block size. Calls that stay longer than the warm-up's time bound would end their warm-up at its
    minimum of calls (WARMUP_MIN_ITERS = 2, bench.measure.timer), which the discarded cycle's two calls a side
    already are: such sides skip the separate warm-up (a 2 s call saves 4 calls, 8 s, a process). A side whose
    first call was long but whose calls then are not (a compiling backend) is warmed up after all."""
    import numpy as np

    from bench.measure.timer import clock, warm_up

    timers = {k: clock(fn, device_type) for k, fn in (("a", fa), ("b", fb))}
    est = {}
    for key, timer in timers.items():
        est[key] = row[f"{key}_first_call_ms"] = timer.first()
    warmed = set()
    while True:
        for key in ("a", "b"):
            if key not in warmed and est[key] < 1e3 * wmax:
                est[key] = float(np.median(warm_up(timers[key], wmax)[-3:]))
                warmed.add(key)
        block = int(min(MAX_BLOCK, max(1, math.ceil(BLOCK_MIN_MS / max(min(est.values()), 1e-6)))))
        a1, b1, b2, a2 = cycle(fa, fb, block)  # discarded
        seen = {"a": min(a1, a2), "b": min(b1, b2)}
        if all(k in warmed or seen[k] >= 1e3 * wmax for k in est):
            return block
        est.update({k: v for k, v in seen.items() if k not in warmed})


def abba_statistic(cycles: Any) -> float:
    """median over cycles of log(mean(B1, B2) / mean(A1, A2)); `cycles`: rows of (A1, B1, B2, A2) times."""
    import numpy as np

    c = np.asarray(cycles, dtype=np.float64)
    return float(np.median(np.log((c[:, 1] + c[:, 2]) / (c[:, 0] + c[:, 3]))))


ABBA = [0, 1, 1, 0]


def _cpu_cycle(fa: Callable[[], Any], fb: Callable[[], Any], k: int) -> list[float]:
    """(A1, B1, B2, A2) in ms per call, each block of k calls timed as one perf_counter_ns interval."""
    return cpu_blocks([fa, fb], ABBA, k)


def _cuda_cycle(fa: Callable[[], Any], fb: Callable[[], Any], k: int) -> list[float]:
    """(A1, B1, B2, A2) in ms per call: a CUDA event pair around each block, one synchronisation per cycle."""
    return cuda_blocks([fa, fb], ABBA, k)


# ---------------------------------------------------------------------------------------------------------------
# building a side


class BuilderNotFound(AttributeError):
    """The file imported but has no function of that name (told apart from an AttributeError of its import)."""


def build_side(side: Side, seed: int) -> Any:
    """The side's nn.Module in eval mode, built right after torch.manual_seed(seed) (both sides alike)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if side.kind == "model":
        from models.registry import build_model

        model = build_model(side.model)
    elif side.kind == "file":
        model = load_builder(side.path, side.fn)()
    else:
        with models_from(side.path) as pkg:
            if not callable(getattr(pkg, "build_model", None)):
                raise TypeError(f"the models package of {side.label} has no build_model(name)")
            model = pkg.build_model(side.model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{side.label} built a {type(model).__name__}, not an nn.Module")
    return model.eval()


def load_builder(path: str, fn: str) -> Callable[[], Any]:
    """`fn` of the .py file `path`, imported once per process under a module name derived from the resolved
    path (two files of the same name do not collide; the parent and the child import the same name)."""
    p = Path(path).resolve()
    name = f"densebench_ab_{hashlib.sha1(str(p).encode()).hexdigest()[:12]}_{p.stem}".replace("-", "_")
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, p)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    builder = getattr(module, fn, None)
    if not callable(builder):
        raise BuilderNotFound(f"{path} has no function {fn!r}")
    return builder


def _ours(name: str) -> bool:
    return name == "models" or name.startswith("models.")


@contextlib.contextmanager
def models_from(root: str) -> Iterator[ModuleType]:
    """The `models` package of the checkout at `root` in place of ours: our models/models.* entries are taken out
    of sys.modules and root goes first on sys.path; on exit the imported ones are dropped and ours put back."""
    saved = {k: m for k, m in sys.modules.items() if _ours(k)}
    path = list(sys.path)
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        pkg = importlib.import_module("models")
        where = Path(getattr(pkg, "__file__", "") or "").resolve()
        if Path(root).resolve() not in where.parents:
            raise ImportError(f"'models' was imported from {where}, not from {root}")
        yield pkg
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        sys.path[:] = path
        importlib.invalidate_caches()
