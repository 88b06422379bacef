"""The child side of a case: a spec file in, one result file out, whatever the spec's kind.

`run_case_file` reads the spec and dispatches: a case alone (`run_case`: the steps of bench.measure.steps, then
the adaptive timer with peak memory), the cases of a decision group in one process (bench.measure.interleaved),
an A/B process (bench.ab.child), a calibration (bench.measure.calibrate) or the speed probe (bench.measure.probe).
It writes the result atomically, so the parent reads a complete result or none. The case arrives as JSON and
becomes a `Case` here (`Case.from_spec`), so every step reads typed fields.

Imports no pandas; torch, the backends and the models are imported inside the steps (the launcher preloads them
before forking, see bench.launch.worker).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from bench.ab.child import run_ab_spec
from bench.cases import Case, CaseError
from bench.files import atomic_write_json
from bench.measure.calibrate import calibrate
from bench.measure.interleaved import run_group_spec
from bench.measure.memory import PeakMemory
from bench.measure.probe import probe_kernel
from bench.measure.result import ChildResult, ResultFormatError
from bench.measure.steps import (AfterBuild, Built, Stage, failure_row, measure_energy, prepare_side, profile_side,
                                 setup, side_localise, side_numerics)


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


def _measure(case: Case, row: dict, stage: Stage, after_build: AfterBuild | None) -> list[float]:
    """The steps of one case; each adds its columns to `row` and its notes to `info` (-> backend_info)."""
    info = setup(case)
    side = prepare_side(case, row, stage, after_build=after_build)
    stage("timing")
    res = _time(case, side.fn, side.built, row, info, stage)
    side.state.check("the timed calls")
    stage("numerics")
    side_numerics(case, side, row, info)
    row.update(measure_energy(case, side.fn, row["latency_ms_median"], info, stage))
    backend_info, y_ref, rng_state = side.info, side.y_ref, side.built.rng_state
    del side  # the timed model's memory is not the localisation's or the profiled pass's
    side_localise(case, row, info, stage, y_ref, rng_state)
    row["backend_info"] = json.dumps({**backend_info, **info}, default=str, sort_keys=True)
    if case.settings.profile:
        stage("profile")
        row["_profile"] = profile_side(case, row)
    return [float(v) for v in res.samples_ms]


def _time(case: Case, fn: Any, built: Built, row: dict, info: dict, stage: Stage) -> Any:
    """The adaptive timing loop (bench.measure.timer) with peak memory around it; adds the latency columns."""
    from bench.measure.timer import measure
    from bench.results.repeats import latency_fields

    stage.times["setup_s"] = time.perf_counter() - stage.t0
    memory = PeakMemory(case, built)
    memory.start()
    res = measure(fn, device_type=case.device_type, min_time_s=case.min_time_s, max_time_s=case.max_time_s,
                  min_samples=case.settings.min_samples)
    row.update(memory.stop(info))
    stage.times["timing_s"] = res.total_s
    row.update({"warmup_iters": res.warmup_iters, "first_call_ms": res.first_call_ms,
                "converged": bool(res.converged)})
    row.update(latency_fields(res.samples_ms, case.batch, row.get("macs"), case.settings.device_peak_gmacs_per_s))
    return res


def run_calibration(spec: Mapping[str, Any]) -> dict:
    """{"calibration": {...}} for a spec {"kind": "calibrate", device, precision, threads, seconds}."""
    threads = int(spec.get("threads") or 0)
    cal = calibrate(spec["device"], spec["precision"], threads, float(spec.get("seconds", 0.6)))
    if spec.get("bandwidth"):  # the roofline's slope, for --profile
        from bench.profiling.bandwidth import triad_bandwidth

        bw = triad_bandwidth(spec["device"], spec["precision"], threads)
        cal["bandwidth_gb_per_s"] = bw.get("gb_per_s")
        cal["bandwidth"] = bw
    return {"calibration": cal}


def run_health_probe(spec: Mapping[str, Any]) -> dict:
    """{"health": {...}} for a spec {"kind": "health", seconds}: the speed probe that bench.health judges."""
    return {"health": probe_kernel(float(spec.get("seconds", 0.25)))}


def run_case_file(spec_path: str, result_path: str, after_build: AfterBuild | None = None) -> int:
    """Read a spec, run it (a case; a calibration when spec["kind"] == "calibrate", the speed probe for "health",
    a decision group for "group", an A/B process for "ab"), write the result file atomically (the parent reads a
    complete result or none)."""
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
        out = run_group_spec(spec, stage, after_build)
    elif spec.get("kind") == "ab":  # A and B interleaved in one process (bench.ab.child)
        out = run_ab_spec(spec, stage)
    else:
        try:
            out = run_case(Case.from_spec(spec), stage, after_build)
        except CaseError as e:  # a spec the parent should never write: an error row rather than a bare crash
            out = {"row": {"status": "error", "reason": str(e)}, "samples": []}
    out["child"] = {"pid": os.getpid(), "stage": stage.name, **stage.times, "total_s": time.perf_counter() - stage.t0}
    try:
        result = ChildResult.from_json(out)  # the record the parent reads back (bench.measure.result)
    except ResultFormatError as e:  # a step of ours returned the wrong shape: an error row, never a bare crash
        result = ChildResult(row={"status": "error", "reason": str(e)})
    atomic_write_json(result_path, result.to_json(), durable=False)  # read at once; a power cut ends the run anyway
    return 0


def _prefer_oom_kill() -> None:
    """Make this child the kernel OOM killer's first choice, so a case that outgrows RAM dies (-> status oom)
    instead of the runner or another process on the machine."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
