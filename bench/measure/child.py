"""The child side of a case: the steps from a typed `Case` to one result row and its samples, and the result file.

Steps, in order: setup (threads, device, seed) -> build (params, MACs, example input) -> the caller's `after_build`
hook (the launcher's test-only fault injection) -> reference output -> prepare the backend -> timing with peak
memory -> numerics -> energy. Each step names itself through `Stage`, so a crash or a timeout says where it was.
The case arrives as JSON and becomes a `Case` here (`Case.from_spec`), so every step reads typed fields.

Imports no pandas; torch, the backends and the models are imported inside the steps (the launcher preloads them
before forking, see bench.launch.worker).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bench.cases import Case, CaseError
from bench.files import atomic_write_json
from bench.measure.outputs import OutputError, TorchState, check_dense, float64_reference


class Stage:
    """The step the child is in, mirrored to `<result>.stage` so the parent can name it after a kill or a crash;
    also the child's phase times (setup_s, timing_s), from which the parent derives the per-case overhead."""

    def __init__(self, result_path: str | None = None):
        self.path = f"{result_path}.stage" if result_path else None
        self.name = "start"
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.name = name
        if self.path:
            try:
                with open(self.path, "w") as f:
                    f.write(name)
            except OSError:
                pass  # the stage file is a diagnostic; the case goes on without it


AfterBuild = Callable[[Case, Stage], None]


@dataclass
class Built:
    """The model and input of a case as built (fp32), before a backend folds, casts or moves them."""

    model: Any
    x: Any
    weight_bytes: int  # exact tensor bytes of parameters and buffers
    rss0: int  # the child's RSS before the build: the CPU memory baseline


def run_case(case: Case, stage: Stage | None = None, after_build: AfterBuild | None = None) -> dict:
    """Measure one case; returns {"row": {...}, "samples": [...]}. Never raises for a failing case: every failure
    becomes a row (unsupported, oom or error, with the stage it happened in)."""
    stage = stage or Stage()
    row = case.as_row()
    try:
        samples = _measure(case, row, stage, after_build)
        row["status"], row["reason"] = "ok", ""
    except BaseException as e:  # noqa: BLE001 - every failure becomes a row
        row.update(failure_row(e, stage.name))
        samples = []
    return {"row": row, "samples": samples, "profile": row.pop("_profile", [])}


def failure_row(e: BaseException, where: str) -> dict[str, str]:
    from bench.backends import Unsupported
    from bench.measure.memory import is_oom_error

    if isinstance(e, Unsupported):
        return {"status": "unsupported", "reason": (str(e).splitlines() or [""])[0][:400]}
    if isinstance(e, OutputError):  # the model's own doing, said in full: no traceback to read
        return {"status": "error", "reason": f"{str(e)[:400]} (stage {where})"}
    if isinstance(e, SystemExit):  # users' code that exits: the row says so, the process still reports it
        return {"status": "error", "reason": f"the model called sys.exit({e.code!r}) in stage {where}"[:400]}
    last = traceback.format_exception_only(type(e), e)[-1].strip().splitlines()[0][:400]
    if is_oom_error(e):
        return {"status": "oom", "reason": f"out of memory in stage {where}: {last}"}
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return {"status": "error", "reason": f"{type(e).__name__} in stage {where}: {last}"}


def _measure(case: Case, row: dict, stage: Stage, after_build: AfterBuild | None) -> list[float]:
    """The steps of one case; each adds its columns to `row` and its notes to `info` (-> backend_info)."""
    info = setup(case)
    side = prepare_side(case, row, stage, after_build=after_build)
    stage("timing")
    res = _time(case, side.fn, side.built, row, info, stage)
    side.state.check("the timed calls")
    stage("numerics")
    side_numerics(case, side, row, info)
    row.update(_energy(case, side.fn, row["latency_ms_median"], info, stage))
    row["backend_info"] = json.dumps({**side.info, **info}, default=str, sort_keys=True)
    if case.extra.get("profile"):
        del side  # the timed model's memory is not the profiled pass's
        stage("profile")
        row["_profile"] = _profile(case, row)
    return [float(v) for v in res.samples_ms]


def _profile(case: Case, row: dict) -> list[dict]:
    """The profiled pass, after and apart from the timed one (bench.profiling): the rows of profile.parquet, and
    on the row the profiler's source, its time per iteration and its overhead against the timed median. A case
    whose profiling fails keeps its timing: the reason goes to profile_reason."""
    from bench.backends import Unsupported
    from bench.profiling import profile_case
    from bench.profiling.rows import profile_rows

    try:
        prof = profile_case(case, workdir=case.extra.get("workdir"), trace_path=case.extra.get("trace_path"))
    except Unsupported as e:
        row["profile_reason"] = (str(e).splitlines() or [""])[0][:400]
        return []
    except Exception as e:  # noqa: BLE001 - the timing is measured; profiling must not lose it
        row["profile_reason"] = failure_row(e, "profile")["reason"]
        return []
    median = row.get("latency_ms_median")
    row["profile_source"], row["profiled_ms"] = prof.source, prof.profiled_ms
    row["profile_overhead"] = prof.profiled_ms / median - 1 if median and median > 0 else float("nan")
    return profile_rows(row, prof, case.extra.get("device_peak_gmacs_per_s"), case.extra.get("bandwidth_gb_per_s"))


def setup(case: Case) -> dict[str, Any]:
    """Threads (CPU), current device (CUDA) and seed, before anything allocates; returns the first notes."""
    import torch

    if case.device_type == "cpu" and case.threads > 0:
        torch.set_num_threads(case.threads)
    if case.device_type == "cuda":
        torch.cuda.set_device(torch.device(case.device))
    torch.manual_seed(case.seed)
    return {"torch_threads": torch.get_num_threads(), "pid": os.getpid()}


@dataclass
class PreparedSide:
    """One case built, checked, referenced and prepared (alone, or in a process that holds several:
    bench.measure.interleaved)."""

    fn: Callable[[], Any]  # the prepared call, keeping its first output
    first: list  # the first output (filled by the first call)
    y_ref: Any  # eager fp32 reference output (None where the case is the reference itself)
    info: dict  # the backend's notes
    built: Built
    state: TorchState  # torch's global state before the build: the model must leave it so


def prepare_side(case: Case, row: dict, stage: Stage, label: str = "",
                 after_build: AfterBuild | None = None) -> PreparedSide:
    """The steps up to the timing: supported, build, the caller's hook, the eager fp32 output on the real device
    (checked: one finite dense tensor; the reference of every other setting), prepare; adds params, MACs and
    build_s to `row`. Raises what those steps raise (OutputError for an output or a global-state change)."""
    state = TorchState.now()
    _check_supported(case)
    stage(f"build{label}")
    built = _build(case, row, stage)
    state.check("the build")
    if after_build is not None:
        after_build(case, stage)
    stage(f"reference{label}")
    y_ref = _reference(case, built)
    check_dense(y_ref, case)
    state.check("the first forward")
    if _is_reference(case):
        y_ref = None  # its own numerics come from a float64 forward (side_numerics)
    stage(f"prepare{label}")
    prepared = _prepare(case, built, row)
    fn, first = _keep_first_output(prepared.fn)
    return PreparedSide(fn, first, y_ref, dict(prepared.info), built, state)


def side_numerics(case: Case, side: PreparedSide, row: dict, info: dict) -> None:
    """rel_err / numerics_ok of a side's first output: against the eager fp32 reference, or for eager fp32 itself
    against a float64 forward (in the case's first process: `numerics64` in the case's extra)."""
    from bench.measure.numerics import evaluate

    if not side.first:
        return
    if not _is_reference(case):
        row.update(evaluate(side.first[0], side.y_ref, case.precision))
        return
    if not case.extra.get("numerics64", True):
        info["numerics"] = "measured in the case's first process (a float64 forward)"
        return
    y64, info["numerics"] = float64_reference(side.built.model, side.built.x)
    if y64 is not None:
        row.update(evaluate(side.first[0], y64, "fp32"))


def measure_energy(case: Case, fn: Callable[[], Any], median_ms: float, info: dict, stage: Stage) -> dict:
    """The energy columns of a prepared call (NVML on CUDA; a note elsewhere)."""
    return _energy(case, fn, median_ms, info, stage)


def profile_side(case: Case, row: dict) -> list[dict]:
    """The profiled pass of one case (bench.profiling), apart from the timing: its profile.parquet rows."""
    return _profile(case, row)


def _check_supported(case: Case) -> None:
    from bench import backends

    reason = backends.unsupported_reason(case.backend, case.device_type, case.precision,
                                         channels_last=case.channels_last, fold=case.folded)
    if reason:
        raise backends.Unsupported(reason)


def _build(case: Case, row: dict, stage: Stage) -> Built:
    """The fp32 model and its example input; params always, MACs only where the runner could not count them."""
    import torch

    from bench.measure.memory import rss_bytes
    from models.complexity import count_macs, count_params
    from models.registry import build_model, example_input

    rss0 = rss_bytes()
    if case.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build_model(case.model)
    row["params"] = count_params(model)
    if row.get("macs") is None:
        stage("count_macs")
        row["macs"] = count_macs(case.model, case.height, case.width, case.batch)
    x = example_input(case.model, case.height, case.width, case.batch, seed=case.seed)
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return Built(model, x, weight_bytes, rss0)


def _is_reference(case: Case) -> bool:
    """Plain eager fp32 is the numerics reference of the other settings."""
    return case.backend == "eager" and case.precision == "fp32" and not case.folded and not case.channels_last


def _reference(case: Case, built: Built) -> Any:
    """Eager fp32 output on the case's device and input, taken before prepare() may fold, cast or move the model:
    the real output the checks look at, and the reference of the other settings."""
    from bench import backends

    return backends.reference_output(built.model, built.x, case.device)


def _prepare(case: Case, built: Built, row: dict) -> Any:
    from bench import backends

    prepared = backends.prepare(built.model, built.x, backend=case.backend, device=case.device,
                                precision=case.precision, channels_last=case.channels_last, fold=case.folded,
                                workdir=case.extra.get("workdir") or tempfile.gettempdir())
    row["build_s"] = prepared.build_s
    return prepared


def _keep_first_output(fn: Callable[[], Any]) -> tuple[Callable[[], Any], list]:
    """fn, keeping a copy of its first output: numerics compare it to the reference without an extra call."""
    first: list = []

    def call() -> Any:
        out = fn()
        if not first:
            first.append(out.detach().clone() if hasattr(out, "detach") else out)
        return out

    return call, first


def _time(case: Case, fn: Callable[[], Any], built: Built, row: dict, info: dict, stage: Stage) -> Any:
    """The adaptive timing loop (bench.measure.timer) with peak memory around it; adds the latency columns."""
    from bench.measure.timer import measure
    from bench.results.repeats import latency_fields

    stage.times["setup_s"] = time.perf_counter() - stage.t0
    from bench.measure.memory import PeakMemory

    memory = PeakMemory(case, built)
    memory.start()
    res = measure(fn, device_type=case.device_type, min_time_s=case.min_time_s, max_time_s=case.max_time_s,
                  min_samples=int(case.extra.get("min_samples", 10)))
    row.update(memory.stop(info))
    stage.times["timing_s"] = res.total_s
    row.update({"warmup_iters": res.warmup_iters, "first_call_ms": res.first_call_ms,
                "converged": bool(res.converged)})
    row.update(latency_fields(res.samples_ms, case.batch, row.get("macs"), case.extra.get("device_peak_gmacs_per_s")))
    return res


def _energy(case: Case, fn: Callable[[], Any], median_ms: float, info: dict, stage: Stage) -> dict:
    """Energy per image over >= ~1.2 s of iterations after timing (the counters update every 10-100 ms)."""
    from bench.measure import energy

    if case.device_type != "cuda":
        info["energy"] = "not measured: NVML energy is for NVIDIA GPUs"
        return energy.energy_columns(None, 0)
    import torch

    stage("energy")
    meter, reason = energy.make_meter(case.device)  # NVML on desktop/server GPUs, board rails on a Jetson
    if meter is None:
        info["energy"] = reason
        return energy.energy_columns(None, 0)
    iters = min(max(3, math.ceil(1200.0 / max(median_ms, 1e-3))), 100_000)
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
    return energy.energy_columns(reading, iters * case.batch)


def run_calibration(spec: Mapping[str, Any]) -> dict:
    """{"calibration": {...}} for a spec {"kind": "calibrate", device, precision, threads, seconds}."""
    from bench.measure.calibrate import calibrate

    threads = int(spec.get("threads") or 0)
    cal = calibrate(spec["device"], spec["precision"], threads, float(spec.get("seconds", 0.6)))
    if spec.get("bandwidth"):  # the roofline's slope, for --profile
        from bench.profiling.bandwidth import triad_bandwidth

        bw = triad_bandwidth(spec["device"], spec["precision"], threads)
        cal["bandwidth_gb_per_s"] = bw.get("gb_per_s")
        cal["bandwidth"] = bw
    return {"calibration": cal}


def run_health_probe(spec: Mapping[str, Any]) -> dict:
    """{"health": {...}} for a spec {"kind": "health", seconds}: the speed probe of bench.health."""
    from bench.health import probe_kernel

    return {"health": probe_kernel(float(spec.get("seconds", 0.25)))}


def run_case_file(spec_path: str, result_path: str, after_build: AfterBuild | None = None) -> int:
    """Read a spec, run it (a case; a calibration when spec["kind"] == "calibrate"; an A/B process when it is
    "ab", bench.measure.ab), write the result file atomically (the parent reads a complete result or none)."""
    stage = Stage(result_path)
    _prefer_oom_kill()
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("kind") in ("calibrate", "health"):
        try:
            out = (run_calibration if spec["kind"] == "calibrate" else run_health_probe)(spec)
        except BaseException as e:  # noqa: BLE001 - the parent records the error in meta.json
            out = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    elif spec.get("kind") == "group":  # the cases of a decision group in one process (bench.measure.interleaved)
        from bench.measure.interleaved import run_group_spec

        out = run_group_spec(spec, stage, after_build)
    elif spec.get("kind") == "ab":  # A and B interleaved in one process (bench.ab); imported only when asked
        from bench.measure.ab import run_ab_spec

        out = run_ab_spec(spec, stage)
    else:
        try:
            out = run_case(Case.from_spec(spec), stage, after_build)
        except CaseError as e:  # a spec the parent should never write: an error row rather than a bare crash
            out = {"row": {"status": "error", "reason": str(e)}, "samples": []}
    out["child"] = {"pid": os.getpid(), "stage": stage.name, **stage.times, "total_s": time.perf_counter() - stage.t0}
    atomic_write_json(result_path, out, durable=False)  # read by the parent at once; a power cut ends the run anyway
    return 0


def _prefer_oom_kill() -> None:
    """Make this child the kernel OOM killer's first choice, so a case that outgrows RAM dies (-> status oom)
    instead of the runner or another process on the machine."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
