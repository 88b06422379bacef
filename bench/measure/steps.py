"""The child's steps, shared by its three designs: a case alone (bench.measure.child), the cases of a decision group
in one process (bench.measure.interleaved) and A/B (bench.ab.child). Kept apart from the dispatch in
bench.measure.child so that each design imports the steps and the dispatch imports each design, without a cycle.

Steps: `setup` (threads, device, seed) -> `prepare_side` (supported, build, the caller's `after_build` hook,
reference output, prepare the backend) -> timing (the design's own) -> `side_numerics` -> `measure_energy` ->
`side_localise` (int8 / fp16: where the error enters, bench.measure.localise) -> `profile_side`. Each step names
itself through `Stage`, so a crash or a timeout says where it was; `failure_row` turns whatever a step raised into
the row's status and one-line reason.

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
from typing import Any, Callable

from bench.cases import Case
from bench.measure.memory import is_oom_error, rss_bytes
from bench.measure.outputs import OutputError, TorchState, check_dense, float64_reference
from bench.profiling.rows import profile_rows


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
    rng_state: Any = None  # torch's CPU generator before the build: a rebuild with it has the same weights


def failure_row(e: BaseException, where: str) -> dict[str, str]:
    """{"status", "reason"} of a step that raised `e` in stage `where`: unsupported, oom or error, one line."""
    from bench.backends import Unsupported

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
    against a float64 forward (in the case's first process: `numerics64` in the case's settings)."""
    from bench.measure.numerics import evaluate

    if not side.first:
        return
    if not _is_reference(case):
        row.update(evaluate(side.first[0], side.y_ref, case.precision))
        return
    if not case.settings.numerics64:
        info["numerics"] = "measured in the case's first process (a float64 forward)"
        return
    y64, info["numerics"] = float64_reference(side.built.model, side.built.x)
    if y64 is not None:
        row.update(evaluate(side.first[0], y64, "fp32"))


def side_localise(case: Case, row: dict, info: dict, stage: Stage, y_ref: Any = None,
                  rng_state: Any = None) -> None:
    """int8 / fp16 cases, in their first process (`numerics64`, as the float64 numerics): the blocks' errors
    against eager fp32 and the first block past the tolerance (bench.measure.localise) into `first_bad_block` and
    info["localise"]. Costs one more build of the backend, on a freshly built fp32 model and the same seeded
    input: `rng_state` is torch's generator before the case's build (in a decision group the sides are built one
    after the other from one seed), and `y_ref`, the case's own eager fp32 output, checks that the rebuilt model
    is the same (`rebuilt_vs_case`); run after the timing, so no latency sees it. A failure never fails the case: its one-line
    reason goes to info["localise"]."""
    from bench.measure.localise import LOCALISED_PRECISIONS, beside_case, localise

    if case.precision not in LOCALISED_PRECISIONS:
        return
    if not case.settings.numerics64:
        info["localise"] = {"reason": "localised in the case's first process"}
        return
    row["first_bad_block"] = ""
    left, need = case.timeout_s - (time.perf_counter() - stage.t0), _localise_estimate_s(row)
    if need > left:  # the parent kills a child past its timeout: that would lose the case itself
        info["localise"] = {"reason": f"not localised: a second build and run (~{need:.0f} s, twice the case's) "
                                      f"would not fit in the {left:.0f} s left of its timeout"}
        return
    stage("localise")
    try:
        import torch

        from models.registry import build_model, example_input

        if rng_state is not None:
            torch.set_rng_state(rng_state)  # the weights the timed model was built with
        else:
            torch.manual_seed(case.seed)
        model = build_model(case.model)
        x = example_input(case.model, case.height, case.width, case.batch, seed=case.seed)
        record = localise(model, x, backend=case.backend, device=case.device, precision=case.precision,
                          channels_last=case.channels_last, fold=case.folded,
                          workdir=case.settings.workdir or tempfile.gettempdir(), y_ref=y_ref)
    except BaseException as e:  # noqa: BLE001 - the case is measured; localising it must not lose it
        if isinstance(e, KeyboardInterrupt):
            raise
        from bench.backends import Unsupported

        if not isinstance(e, Unsupported):
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        said = str(e) if isinstance(e, Unsupported) else traceback.format_exception_only(type(e), e)[-1]
        info["localise"] = {"reason": f"not localised: {(said.strip().splitlines() or [''])[0]}"[:400]}
        return
    info["localise"] = beside_case(record, row.get("rel_err"))
    row["first_bad_block"] = record["first_bad_block"] or ""


def _localise_estimate_s(row: dict) -> float:
    """Seconds a localisation may take: twice the case's build and first call (the tapped graph is the case's
    graph with more outputs, and the fp32 reference forward comes on top), plus 10 s for the rebuild of the model."""
    build = row.get("build_s") or 0.0
    first = (row.get("first_call_ms") or 0.0) / 1e3
    return 2.0 * (build + first) + 10.0


def side_localise_row(case: Case, row: dict, stage: Stage, y_ref: Any = None, rng_state: Any = None) -> None:
    """`side_localise` for a row whose backend_info is already written (the interleaved design localises its
    sides after all of them are finished: a second build, compile's among them, must not touch a side still to
    be measured)."""
    if row.get("status") != "ok":
        return
    info = json.loads(row.get("backend_info") or "{}")
    side_localise(case, row, info, stage, y_ref, rng_state)
    row["backend_info"] = json.dumps(info, default=str, sort_keys=True)


def measure_energy(case: Case, fn: Callable[[], Any], median_ms: float, info: dict, stage: Stage) -> dict:
    """Energy per image over >= ~1.2 s of iterations after timing (the counters update every 10-100 ms): NVML on
    desktop/server GPUs, board rails on a Jetson; a note elsewhere."""
    from bench.measure import energy

    if case.device_type != "cuda":
        info["energy"] = "not measured: NVML energy is for NVIDIA GPUs"
        return energy.energy_columns(None, 0)
    import torch

    stage("energy")
    meter, reason = energy.make_meter(case.device)
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


def profile_side(case: Case, row: dict) -> list[dict]:
    """The profiled pass, after and apart from the timed one (bench.profiling): the rows of profile.parquet, and
    on the row the profiler's source, its time per iteration and its overhead against the timed median. A case
    whose profiling fails keeps its timing: the reason goes to profile_reason."""
    from bench.backends import Unsupported
    from bench.profiling.case import profile_case

    try:
        prof = profile_case(case, workdir=case.settings.workdir, trace_path=case.settings.trace_path)
    except Unsupported as e:
        row["profile_reason"] = (str(e).splitlines() or [""])[0][:400]
        return []
    except Exception as e:  # noqa: BLE001 - the timing is measured; profiling must not lose it
        row["profile_reason"] = failure_row(e, "profile")["reason"]
        return []
    median = row.get("latency_ms_median")
    row["profile_source"], row["profiled_ms"] = prof.source, prof.profiled_ms
    row["profile_wall_ms"] = prof.info.get("wall_ms", float("nan"))  # openvino: beside its summed node times
    row["profile_overhead"] = prof.profiled_ms / median - 1 if median and median > 0 else float("nan")
    return profile_rows(row, prof, case.settings.device_peak_gmacs_per_s, case.settings.bandwidth_gb_per_s)


def _check_supported(case: Case) -> None:
    from bench import backends

    reason = backends.unsupported_reason(case.backend, case.device_type, case.precision,
                                         channels_last=case.channels_last, fold=case.folded)
    if reason:
        raise backends.Unsupported(reason)


def _build(case: Case, row: dict, stage: Stage) -> Built:
    """The fp32 model and its example input; params always, MACs only where the runner could not count them."""
    import torch

    from models.complexity import count_macs, count_params
    from models.registry import build_model, example_input

    rss0 = rss_bytes()
    if case.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rng_state = torch.get_rng_state()
    model = build_model(case.model)
    row["params"] = count_params(model)
    if row.get("macs") is None:
        stage("count_macs")
        row["macs"] = count_macs(case.model, case.height, case.width, case.batch)
    x = example_input(case.model, case.height, case.width, case.batch, seed=case.seed)
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return Built(model, x, weight_bytes, rss0, rng_state)


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
    from bench.backends.delegation import columns as delegation_columns

    prepared = backends.prepare(built.model, built.x, backend=case.backend, device=case.device,
                                precision=case.precision, channels_last=case.channels_last, fold=case.folded,
                                workdir=case.settings.workdir or tempfile.gettempdir())
    row["build_s"] = prepared.build_s
    row.update(delegation_columns(prepared.info))
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
