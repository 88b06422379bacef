"""The child side of a case: build, prepare, time, measure memory/energy/numerics, write one result file.

This module imports no pandas (the child does not need it); torch & co. are imported by `preload()`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

from bench.launch.faults import fault_for, inject

_TIMES: dict = {}  # child-side phase times, reported to the parent for the per-case overhead figure


def preload() -> None:
    """Import everything a case needs (no tensor op: the server must stay fork-safe)."""
    import torch  # noqa: F401

    import bench.backends  # noqa: F401
    import bench.measure.energy  # noqa: F401
    import bench.measure.memory  # noqa: F401
    import bench.measure.numerics  # noqa: F401
    import bench.stats  # noqa: F401
    import bench.measure.timer  # noqa: F401
    import models  # noqa: F401
    import models.complexity  # noqa: F401


def _atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    return str(o)


class _Stage:
    def __init__(self, result_path: str | None):
        self.path = f"{result_path}.stage" if result_path else None
        self.name = "start"

    def __call__(self, name: str) -> None:
        self.name = name
        if self.path:
            try:
                with open(self.path, "w") as f:
                    f.write(name)
            except OSError:
                pass


def _nan() -> float:
    return float("nan")


def run_case(spec: dict, stage: _Stage | None = None) -> dict:
    """Measure one case; returns {"row": {...}, "samples": [...]}. Never raises for a failing case."""
    stage = stage or _Stage(None)
    row: dict = {k: spec.get(k) for k in ("model", "family", "variant", "level", "device", "device_name", "backend",
                                          "precision", "batch", "threads", "height", "width", "tokens",
                                          "channels_last", "folded", "seed")}
    row["macs"] = spec.get("macs")
    samples: list[float] = []
    try:
        _measure(spec, row, samples, stage)
        row["status"], row["reason"] = "ok", ""
    except BaseException as e:  # noqa: BLE001 - every failure becomes a row
        from bench.measure.memory import is_oom_error

        try:
            from bench.backends import Unsupported
        except Exception:  # pragma: no cover
            Unsupported = ()  # type: ignore[assignment]
        last = traceback.format_exception_only(type(e), e)[-1].strip().splitlines()[0][:400]
        if Unsupported and isinstance(e, Unsupported):
            row["status"], row["reason"] = "unsupported", str(e).splitlines()[0][:400]
        elif is_oom_error(e):
            row["status"], row["reason"] = "oom", f"out of memory in stage {stage.name}: {last}"
        else:
            row["status"], row["reason"] = "error", f"{type(e).__name__} in stage {stage.name}: {last}"
            traceback.print_exc(file=sys.stderr)
        samples = []
    return {"row": row, "samples": samples}


def _measure(spec: dict, row: dict, samples: list, stage: _Stage) -> None:
    import torch

    from bench import backends
    from bench.measure.memory import MB, PeakRSS, rss_bytes
    from bench.measure.numerics import evaluate
    from bench.results.repeats import latency_fields
    from bench.measure.timer import measure
    from models.complexity import count_macs, count_params
    from models.registry import build_model, example_input

    device = spec["device"]
    dev_type = device.split(":")[0]
    extra = spec.get("extra") or {}
    threads = int(spec.get("threads") or 0)
    if dev_type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    if dev_type == "cuda":
        torch.cuda.set_device(torch.device(device))
    seed = int(spec.get("seed") or 0)
    torch.manual_seed(seed)
    info_extra: dict = {"torch_threads": torch.get_num_threads(), "pid": os.getpid()}

    fault = fault_for(spec)
    precision, backend = spec["precision"], spec["backend"]
    reason = backends.unsupported_reason(backend, dev_type, precision, channels_last=bool(spec.get("channels_last")),
                                         fold=bool(spec.get("folded")))
    if reason:
        raise backends.Unsupported(reason)

    stage("build")
    rss0 = rss_bytes()
    if dev_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(spec["model"])
    row["params"] = count_params(model)
    if row.get("macs") is None:
        stage("count_macs")
        row["macs"] = count_macs(spec["model"], spec["height"], spec["width"], spec["batch"])
    x = example_input(spec["model"], spec["height"], spec["width"], spec["batch"], seed=seed)
    weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))

    if fault:
        stage(f"fault:{fault}")
        inject(fault, device)

    # numerics reference: eager fp32 on the same device and input (the identity for plain eager fp32)
    plain = backend == "eager" and precision == "fp32" and not spec.get("folded") and not spec.get("channels_last")
    y_ref = None
    if not plain:
        stage("reference")
        y_ref = backends.reference_output(model, x, device)

    stage("prepare")
    workdir = extra.get("workdir") or "/tmp"
    prepared = backends.prepare(model, x, backend=backend, device=device, precision=precision,
                                channels_last=bool(spec.get("channels_last")), fold=bool(spec.get("folded")),
                                workdir=workdir)
    info = dict(prepared.info)
    row["build_s"] = prepared.build_s
    if dev_type == "cuda":
        torch.cuda.synchronize()
        weights_cuda = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    captured: list = []
    fn = prepared.fn

    def first_and_keep():
        out = fn()
        if not captured:
            captured.append(out.detach().clone() if hasattr(out, "detach") else out)
        return out

    stage("timing")
    _TIMES["setup_s"] = time.perf_counter() - _TIMES.get("t0", time.perf_counter())
    peak = PeakRSS().start() if dev_type == "cpu" else None
    res = measure(first_and_keep, device_type=dev_type, min_time_s=float(spec.get("min_time_s", 0.5)),
                  max_time_s=float(spec.get("max_time_s", 5.0)), min_samples=int(extra.get("min_samples", 10)))
    if dev_type == "cuda":
        torch.cuda.synchronize()
        alloc_peak = torch.cuda.max_memory_allocated()
        row["peak_mem_mb"] = alloc_peak / MB
        row["peak_mem_reserved_mb"] = torch.cuda.max_memory_reserved() / MB
        row["weights_mem_mb"] = weights_cuda / MB
        row["activations_mem_mb"] = max(0, alloc_peak - weights_cuda) / MB
        if backend in ("onnxruntime", "tensorrt"):
            info_extra["memory_note"] = "torch's allocator does not see memory the backend allocates itself"
    else:
        p = peak.stop()
        # weights: exact tensor bytes (fp32 build); activations: the rest of the peak above the child's baseline
        # (includes pages of libraries first touched by the case, e.g. oneDNN kernels)
        row["peak_mem_mb"] = max(0, p - rss0) / MB
        row["weights_mem_mb"] = weight_bytes / MB
        row["activations_mem_mb"] = max(0, p - rss0 - weight_bytes) / MB
        info_extra["memory_method"] = f"peak rss ({peak.method}) above the child's baseline; weights = tensor bytes"

    _TIMES["timing_s"] = res.total_s
    samples.extend(float(v) for v in res.samples_ms)
    row.update({"warmup_iters": res.warmup_iters, "first_call_ms": res.first_call_ms,
                "converged": bool(res.converged)})
    row.update(latency_fields(res.samples_ms, spec["batch"], row.get("macs"), extra.get("device_peak_gmacs_per_s")))

    # numerics
    stage("numerics")
    if plain:
        row["rel_err"], row["numerics_ok"] = 0.0, True
        info_extra["numerics"] = "eager fp32 is the reference itself"
    elif captured:
        row.update(evaluate(captured[0], y_ref, precision))

    # energy (NVIDIA): a window of >= ~1 s of iterations after timing
    if dev_type == "cuda":
        stage("energy")
        row.update(_energy(fn, device, spec["batch"], row["latency_ms_median"], info_extra))
    else:
        row["energy_j_per_image"] = row["mean_power_w"] = _nan()
        info_extra["energy"] = "not measured: NVML energy is for NVIDIA GPUs"
    info.update(info_extra)
    row["backend_info"] = json.dumps(info, default=str, sort_keys=True)


def _energy(fn, device: str, batch: int, median_ms: float, info: dict) -> dict:
    import torch

    from bench.measure import energy

    meter, reason = energy.make_meter(device)  # NVML on desktop/server GPUs, board rails on a Jetson
    if meter is None:
        info["energy"] = reason
        return energy.energy_columns(None, 0)
    iters = max(3, math.ceil(1200.0 / max(median_ms, 1e-3)))
    iters = min(iters, 100_000)
    try:
        torch.cuda.synchronize()
        meter.start()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        reading = meter.stop()
    finally:
        meter.close()
    info["energy"] = {"source": reading.source, "iters": iters, "window_s": round(reading.elapsed_s, 3),
                      "notes": reading.notes, "reason": reading.reason}
    return energy.energy_columns(reading, iters * batch)


def run_calibration(spec: dict) -> dict:
    from bench.measure.calibrate import calibrate

    return {"calibration": calibrate(spec["device"], spec["precision"], int(spec.get("threads") or 0),
                                     float(spec.get("seconds", 0.6)))}


def run_case_file(spec_path: str, result_path: str) -> int:
    """Read a spec, run it (a case, or a calibration when spec["kind"] == "calibrate"), write the result."""
    _TIMES.clear()
    _TIMES["t0"] = time.perf_counter()
    _prefer_oom_kill()
    with open(spec_path) as f:
        spec = json.load(f)
    stage = _Stage(result_path)
    if spec.get("kind") == "calibrate":
        try:
            out = run_calibration(spec)
        except BaseException as e:  # noqa: BLE001
            out = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    else:
        out = run_case(spec, stage)
    _TIMES["total_s"] = time.perf_counter() - _TIMES.pop("t0")
    out["child"] = {"pid": os.getpid(), "stage": stage.name, **_TIMES}
    _atomic_json(result_path, out)
    return 0


def _prefer_oom_kill() -> None:
    """Make this child the kernel OOM killer's first choice, so a case that outgrows RAM dies (-> status oom)
    instead of the runner or another process on the machine."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass

