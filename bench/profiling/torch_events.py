"""Where the time goes in eager PyTorch: torch.profiler events -> time per op unit, op kind and module group.

Each profiled iteration runs inside a `record_function(ITERATION)` range and each module group (bench.profiling.
modules) inside a `record_function("module:<path>")` range, set by forward hooks; with_modules is not used (in
eager mode it records nothing in torch 2.14). The profiler's tree is walked from each iteration range:

- An event's SELF time (self_cpu_time_total; on CUDA also self_device_time_total, the kernels it launched itself)
  is counted exactly once, so the kinds' times sum to the iterations' total.
- The rule: an event belongs to the unit of its outermost classifiable aten ancestor (itself included), i.e. the
  outermost op whose kind is not "other". So aten::conv2d -> convolution -> _convolution -> mkldnn_convolution
  (+ its empty/as_strided_/resize_) is one unit of the conv's kind, aten::linear -> t + addmm is matmul,
  scaled_dot_product_attention -> the CPU flash kernel (or its math path) is attention, and the copy inside a
  reshape is layout. The ops the model calls are the units; what they dispatch to is their implementation. An
  "other" op is a unit of its own; classified ops inside it are units of their own.
- Self time of a range (iteration or module) is "framework": Python, hooks and dispatch between ops.
- The module of an event is its innermost module range; outside every range, ROOT.

The same rule runs in the MAC counter (bench.profiling.macs), so a kind's MACs and its time cover the same calls.
Profiled times carry the profiler's overhead (a few microseconds per op): `profiled_ms` is the profiled time per
iteration, to compare with an unprofiled median; use the profile for shares and rates, not for latency.
"""
from __future__ import annotations

import contextlib
import gzip
import pathlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from bench.profiling.macs import shapes_key
from bench.profiling.modules import ROOT, Group, hooked
from bench.profiling.opkinds import classify_aten, op_base

ITERATION = "densebench.profiling.iteration"
MODULE_PREFIX = "module:"
_RUNTIME = ("cuda", "cudnn", "cublas", "hip", "cuLaunch", "cuModule", "cuStream")


@dataclass
class OpTime:
    """Time of one op unit (summed over its calls in all profiled iterations)."""
    op: str
    kind: str
    module: str
    shapes: str
    time_us: float = 0.0  # the device's time: host self time on a CPU, kernel time on CUDA
    host_us: float = 0.0  # host (CPU) self time
    calls: int = 0


@dataclass
class TorchProfile:
    """The attributed events of `iters` profiled iterations (times are totals: divide by iters)."""
    ops: list[OpTime]
    iters: int
    device_type: str
    profiled_ms: float  # host time per profiled iteration (the iteration range)
    unprofiled_ms: float | None  # median of the timed warm-up calls after the first, profiler off (rough)
    trace_path: str | None = None
    info: dict = field(default_factory=dict)


def _is_range(ev: Any) -> bool:
    return bool(getattr(ev, "is_user_annotation", False)) or ev.name == ITERATION or ev.name.startswith(MODULE_PREFIX)


def _kind_of(ev: Any) -> str:
    if ev.name.startswith(_RUNTIME):
        return "framework"
    return classify_aten(ev.name, ev.input_shapes)


class _Walker:
    """Collects OpTime units from the profiler's event tree (see the module docstring for the rule)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.units: dict[tuple[str, str, str, str], OpTime] = {}

    def _unit(self, op: str, kind: str, module: str, shapes: str) -> OpTime:
        key = (op, kind, module, shapes)
        if key not in self.units:
            self.units[key] = OpTime(op, kind, module, shapes)
        return self.units[key]

    def _charge(self, unit: OpTime, ev: Any) -> None:
        host = float(ev.self_cpu_time_total)
        device = float(ev.self_device_time_total) if self.cuda else host
        unit.host_us += host
        unit.time_us += device

    def walk(self, ev: Any, unit: OpTime | None, module: str) -> None:
        if _is_range(ev):
            if ev.name.startswith(MODULE_PREFIX):
                module = ev.name[len(MODULE_PREFIX):]
            own = self._unit(ev.name, "framework", module, "")
            own.calls += 1
            self._charge(own, ev)
            unit = None
        else:
            kind = _kind_of(ev)
            if unit is None or (unit.kind == "other" and kind != "other"):
                unit = self._unit(op_base(ev.name), kind, module, shapes_key(ev.input_shapes or []))
                unit.calls += 1
            self._charge(unit, ev)
        for child in ev.cpu_children:
            self.walk(child, unit, module)


def attribute_events(events: Any, cuda: bool = False) -> list[OpTime]:
    """OpTime units from torch.profiler events (prof.events()), walking from every ITERATION range."""
    walker = _Walker(cuda)
    for ev in events:
        if ev.name == ITERATION:
            walker.walk(ev, None, ROOT)
    return list(walker.units.values())


def _sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def _warm_up(fn: Callable[[], Any], warmup: int, device_type: str) -> float | None:
    """Run `warmup` calls; the median time of those after the first (None with fewer than 2)."""
    times = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device_type)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:]) if len(times) > 1 else None


def _ranges(model: nn.Module | None, groups: dict[str, Group]) -> Any:
    """Hooks that open a record_function range per module group."""
    open_ranges: list[record_function] = []

    def enter(path: str) -> None:
        rf = record_function(MODULE_PREFIX + path)
        rf.__enter__()
        open_ranges.append(rf)

    def leave(path: str) -> None:
        open_ranges.pop().__exit__(None, None, None)

    return hooked(model, groups, enter, leave) if model is not None else contextlib.nullcontext()


def export_trace(prof: Any, path: str | pathlib.Path) -> str:
    """The Chrome trace of `prof` at `path` (gzip when it ends in .gz; Perfetto opens both)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        raw = path.with_suffix("")  # export plain, then compress: works whatever the torch version does with .gz
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
            dst.write(src.read())
        raw.unlink()
    else:
        prof.export_chrome_trace(str(path))
    return str(path)


def profile_torch(fn: Callable[[], Any], *, model: nn.Module | None = None, groups: dict[str, Group] | None = None,
                  device_type: str = "cpu", iters: int = 5, warmup: int = 3,
                  trace_path: str | pathlib.Path | None = None) -> TorchProfile:
    """Profile `iters` calls of `fn` (after `warmup` unprofiled ones and one discarded profiled one) with
    torch.profiler, CPU activity plus CUDA on a CUDA device, shapes recorded; module groups of `model` are marked
    by hooks. Exports a Chrome trace to `trace_path`."""
    unprofiled = _warm_up(fn, warmup, device_type)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    # one profiled-but-discarded step first: the profiler's own start-up cost lands there, not in the iterations
    steps = schedule(wait=0, warmup=1, active=iters, repeat=1)
    with _ranges(model, groups or {}), profile(activities=activities, record_shapes=True, schedule=steps) as prof:
        for _ in range(iters + 1):
            with record_function(ITERATION):
                fn()
                _sync(device_type)
            prof.step()
    events = prof.events()
    roots = [e for e in events if e.name == ITERATION]
    profiled = sum(float(e.cpu_time_total) for e in roots) / max(1, len(roots)) / 1e3
    trace = export_trace(prof, trace_path) if trace_path else None
    ops = attribute_events(events, cuda=device_type == "cuda")
    return TorchProfile(ops, len(roots), device_type, profiled, unprofiled, trace,
                        {"activities": [a.name for a in activities], "iterations_found": len(roots)})
