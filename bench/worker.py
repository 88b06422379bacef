"""The child side of a case: build, prepare, time, measure memory/energy/numerics, write one result file.

Two ways to get a child (bench.runner picks; both end in `run_case_file`):

- fork server (default on Linux): `python -m bench.worker --serve` imports torch, the models and the measuring
  modules ONCE, then forks a fresh child per case on request. The server itself never runs a tensor op, so no
  thread pool or CUDA context is inherited: each case starts clean, and its overhead is the fork plus the model
  build (well under a second) instead of a torch import (several seconds on a busy machine).
- spawn (`DENSEBENCH_ISOLATION=spawn`, or where fork is missing): `python -m bench.worker --case SPEC --result OUT`,
  a fresh interpreter per case.

Protocol of the server (one JSON object per line): the parent sends {"spec": path, "result": path, "stderr": path};
the server answers {"pid": N} when the child is forked and {"pid": N, "exit": code, "signal": sig, "maxrss_kb": k}
when it has ended. The parent enforces the timeout by killing the pid. The child writes `result` atomically (a
JSON object {"row": {...}, "samples": [...]}) and a `result + ".stage"` file naming the step it is in, so that a
timeout or a crash can say where it happened.

Test-only fault injection: the parent copies env DENSEBENCH_FAULT into the spec (extra.fault):
  crash  -> os.abort() in the child (SIGABRT: status error)
  hang   -> sleep forever (status timeout)
  oom    -> on CPU: cap the child's address space (RLIMIT_AS) then allocate past it, which raises torch's real
            allocator error; on CUDA: allocate more than the device has (torch.OutOfMemoryError); status oom
  error  -> raise RuntimeError (status error)
  sigkill-> the child SIGKILLs itself, as the kernel's OOM killer would (status oom, decided by the parent)
  kind@PATTERN applies it only to cases whose model matches the fnmatch PATTERN (e.g. crash@block:*).
Do not set it outside tests.

This module imports no pandas (the child does not need it); torch & co. are imported by `preload()`.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import signal
import sys
import time
import traceback

FAULT_ENV = "DENSEBENCH_FAULT"
FAULTS = ("crash", "hang", "oom", "error", "sigkill")
_TIMES: dict = {}  # child-side phase times, reported to the parent for the per-case overhead figure


def preload() -> None:
    """Import everything a case needs (no tensor op: the server must stay fork-safe)."""
    import torch  # noqa: F401

    import bench.backends  # noqa: F401
    import bench.energy  # noqa: F401
    import bench.memory  # noqa: F401
    import bench.numerics  # noqa: F401
    import bench.stats  # noqa: F401
    import bench.timer  # noqa: F401
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


def _fault_for(spec: dict) -> str | None:
    f = (spec.get("extra") or {}).get("fault")
    if not f:
        return None
    kind, _, pat = str(f).partition("@")
    if pat and not fnmatch.fnmatchcase(spec["model"], pat):
        return None
    return kind


def _inject(kind: str, device: str) -> None:
    import torch

    if kind == "crash":
        sys.stderr.flush()
        os.abort()
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "error":
        raise RuntimeError("injected error (DENSEBENCH_FAULT=error)")
    if kind == "oom":
        if device.startswith("cuda"):
            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            torch.empty(int(total * 2), dtype=torch.uint8, device=device)
        else:
            from bench.memory import limit_address_space

            limit_address_space(256 * 2**20)
            torch.empty(2**36, dtype=torch.uint8)  # 64 GiB past a 256 MiB allowance: the allocator's real error
        raise RuntimeError("injected oom did not fail (unexpected)")
    raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; valid: {', '.join(FAULTS)}")


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
        from bench.memory import is_oom_error

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
    from bench.memory import MB, PeakRSS, rss_bytes
    from bench.numerics import evaluate
    from bench.repeats import latency_fields
    from bench.timer import measure
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

    fault = _fault_for(spec)
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
        _inject(fault, device)

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

    from bench import energy

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
    from bench.calibrate import calibrate

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


# ---------------------------------------------------------------------------------------------------------------
# fork server

def _set_pdeathsig() -> None:
    """Die (SIGKILL) when the parent dies, so a killed run leaves no orphan measuring in the background."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _child(msg: dict) -> None:
    """In the forked child: fresh signal handlers, own stdio, run, exit without running the server's cleanup."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _set_pdeathsig()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        err = os.open(msg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if msg.get("stderr") else 2
        os.dup2(err, 2)
        os.dup2(err, 1)  # a stray print must not corrupt the protocol on the server's stdout
        sys.stdout = sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        code = run_case_file(msg["spec"], msg["result"])
    except BaseException:  # noqa: BLE001
        try:
            traceback.print_exc()
        except Exception:
            pass
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def _cuda_touched() -> bool:
    """Whether the CUDA driver library is loaded in this process (then forked children must not use CUDA)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libcuda.so" in line for line in f)
    except OSError:
        return False


def serve() -> int:
    _set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C goes to the whole group
    preload()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "cuda_touched": _cuda_touched()}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("quit"):
            break
        pid = os.fork()
        if pid == 0:
            _child(msg)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status, ru = os.wait4(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -sig
        out.write(json.dumps({"pid": pid, "exit": code, "signal": sig, "maxrss_kb": ru.ru_maxrss}) + "\n")
        out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="fork server (the runner's default)")
    p.add_argument("--case", metavar="SPEC_JSON", help="run one case spec (spawn mode)")
    p.add_argument("--result", metavar="OUT_JSON", help="where to write the case's result")
    a = p.parse_args(argv)
    if a.serve:
        return serve()
    if not (a.case and a.result):
        p.error("need --serve, or --case and --result")
    _set_pdeathsig()
    preload()
    return run_case_file(a.case, a.result)


if __name__ == "__main__":
    raise SystemExit(main())
