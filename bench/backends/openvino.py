"""OpenVINO on the CPU: `openvino.convert_model` on the model with the case's input (static shape), compiled for
the "CPU" plugin with the LATENCY hint, torch's thread count and fp32 or bf16 as the inference precision; one
infer request bound once to the fixed input.

openvino is an optional extra (densebench[openvino]), imported only when this backend is checked or prepared.
Importing it and converting a model make OpenVINO's usage telemetry (the openvino_telemetry package) start a
session and send events from background threads unless the user opted out; a benchmark must not talk to the
network from the process it times, so both run with the telemetry's own CI switch (env CI=true, under which it
declines) set for their duration and restored after (see `_telemetry_off`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import time
from types import ModuleType
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from bench.backends.base import Runner, package_version

NAME = "openvino"
_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's element type name


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """openvino_telemetry declines to collect when env CI is "true" (its `disable_in_ci`, which the converter
    uses); set it for the block and restore the previous value."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before


def _openvino() -> ModuleType | None:
    """The openvino module, or None when the optional extra is not installed."""
    try:
        with _telemetry_off():
            import openvino
    except ImportError:
        return None
    return openvino


@functools.lru_cache(maxsize=1)
def _cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8), asked once per process."""
    ov = _openvino()
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")) if ov is not None else ()


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """Missing package, a device other than the CPU, a layout option, and precisions the CPU plugin cannot run
    natively here."""
    if _openvino() is None:
        return "openvino is not installed (optional extra: pip install densebench[openvino])"
    if device_type != "cpu":
        return "openvino runs on the CPU here"
    if channels_last:
        return "channels_last has no meaning for openvino: the CPU plugin picks its own memory layout"
    if precision not in _PRECISIONS:
        return f"openvino runs fp32 and bf16 only here, not {precision}"
    if precision == "bf16" and "BF16" not in _cpu_capabilities():
        return ("openvino bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this CPU plugin reports "
                f"{', '.join(_cpu_capabilities()) or 'no capabilities'}")
    return None


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Convert, compile, bind the input; build time = convert_model + compile_model.

    The runner copies nothing on the host: the input tensor is shared with the infer request (a view of `x`'s
    memory, set once), and the output is a torch view of OpenVINO's own output buffer, which the next call
    overwrites (callers that keep an output across calls copy it).
    """
    ov = _openvino()  # unsupported() has checked that it is installed
    props = ov.properties
    x = x.detach().contiguous()
    t0 = time.perf_counter()
    with _telemetry_off():
        ov_model = ov.convert_model(model, example_input=x, input=[tuple(x.shape)])  # static input shape
    convert_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    config = {props.hint.performance_mode: props.hint.PerformanceMode.LATENCY,
              props.inference_num_threads: threads,
              props.hint.inference_precision: getattr(ov.Type, _PRECISIONS[precision])}
    t1 = time.perf_counter()
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    compile_s = time.perf_counter() - t1
    request = compiled.create_infer_request()
    x_np = x.cpu().numpy()
    request.set_input_tensor(ov.Tensor(x_np, shared_memory=True))
    info.update({"openvino": package_version("openvino") or ov.__version__, "runtime": ov.get_version(),
                 "ov_device": "CPU",
                 "performance_hint": str(compiled.get_property(props.hint.performance_mode)),
                 "inference_threads": int(compiled.get_property(props.inference_num_threads)),
                 "requested_precision": _PRECISIONS[precision],
                 "inference_precision": compiled.get_property(props.hint.inference_precision).get_type_name(),
                 "ov_ops": len(ov_model.get_ops()), "convert_s": round(convert_s, 3),
                 "compile_s": round(compile_s, 3), "telemetry": "declined (CI=true around import and convert)",
                 "io": "input shared with the torch tensor; output a torch view of OpenVINO's output buffer "
                       "(no host copies; overwritten by the next call)"})

    def fn() -> torch.Tensor:
        return torch.from_numpy(request.infer(share_outputs=True)[0])  # synchronous; GIL released while it runs

    return fn, convert_s + compile_s
