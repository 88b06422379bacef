"""OpenVINO on the CPU: `openvino.convert_model` on the model with the case's input (static shape), compiled for
the "CPU" plugin with the LATENCY hint, torch's thread count and fp32 or bf16 as the inference precision; one
infer request bound once to the fixed input. int8: the converted model is quantized by NNCF and compiled with f32
as the inference precision for what stays float (bench.backends.ov_int8). What ran where is read from the compiled
model's runtime graph for every precision (`info["delegation"]`; int8: `info["int8"]["macs_share"]`).

openvino is an optional extra (densebench[openvino]), imported only when this backend is checked or prepared.
Importing it and converting a model make OpenVINO's usage telemetry (the openvino_telemetry package) start a
session and send events from background threads unless the user opted out; a benchmark must not talk to the
network from the process it times, so both run with the telemetry's own CI switch (env CI=true, under which it
declines) set for their duration and restored after (see `_telemetry_off`). NNCF (int8) creates its telemetry on
import and sends events from nncf.quantize: both happen under the same switch plus NNCF's own (NNCF_CI, under
which it installs a stub).
"""
from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from bench.backends import ov_int8
from bench.backends.base import Runner, Unsupported, package_version
from bench.backends.int8 import calibration_info

NAME = "openvino"
# ours -> OpenVINO's inference precision (int8: what NNCF leaves unquantized runs f32)
_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_NO_NNCF = "openvino int8 needs nncf (optional extra: pip install densebench[openvino])"


_TELEMETRY_OFF = {"CI": "true", "NNCF_CI": "1"}


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """openvino_telemetry declines to collect when env CI is "true" (its `disable_in_ci`, which the converter and
    NNCF use), and NNCF stubs its telemetry out under NNCF_CI; set both for the block and restore them after."""
    before = {k: os.environ.get(k) for k in _TELEMETRY_OFF}
    os.environ.update(_TELEMETRY_OFF)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
        return f"openvino runs fp32 and bf16 only here, and int8 through NNCF; not {precision}"
    if precision == "bf16" and "BF16" not in _cpu_capabilities():
        return ("openvino bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this CPU plugin reports "
                f"{', '.join(_cpu_capabilities()) or 'no capabilities'}")
    if precision == "int8" and package_version("nncf") is None:
        return _NO_NNCF
    if precision == "int8" and "INT8" not in _cpu_capabilities():
        return f"openvino int8: this CPU plugin does not report INT8 ({', '.join(_cpu_capabilities()) or 'none'})"
    return None


def _nncf() -> ModuleType:
    """nncf, imported with telemetry declined; Unsupported when installed but broken (unsupported() has checked
    that it is installed: importing it costs seconds, so that check reads the metadata only)."""
    try:
        with _telemetry_off():
            import nncf
    except Exception as e:
        raise Unsupported(f"nncf {package_version('nncf')} is installed but does not import: "
                          f"{type(e).__name__}: {e}") from e
    return nncf


@dataclass
class Compiled:
    """A compiled model, the ov.Model it was compiled from, and what building it recorded."""
    compiled: Any
    ov_model: Any
    info: dict
    build_s: float


def compile_case(model: nn.Module, x: torch.Tensor, precision: str, options: Mapping[str, Any],
                 profiling: bool = False) -> Compiled:
    """Convert (int8: and quantize), compile for the CPU plugin with the case's hint, threads and inference
    precision (with `profiling`, per-node profiling on); the timed backend and its profile share this build."""
    ov = _openvino()  # unsupported() has checked that it is installed
    props, info = ov.properties, {}
    t0 = time.perf_counter()
    with _telemetry_off():
        ov_model = ov.convert_model(model, example_input=x, input=[tuple(x.shape)])  # static input shape
    convert_s = time.perf_counter() - t0
    quantize_s = 0.0
    if precision == "int8":
        nncf = _nncf()
        t1 = time.perf_counter()
        with _telemetry_off():
            ov_model, info["int8"] = ov_int8.quantize(nncf, ov_model, x, dict(options))
        quantize_s = time.perf_counter() - t1
        info.update(calibration=calibration_info(x), nncf=package_version("nncf"), quantize_s=round(quantize_s, 3))
    full = {props.hint.performance_mode: props.hint.PerformanceMode.LATENCY,
            props.inference_num_threads: torch.get_num_threads(),
            props.hint.inference_precision: getattr(ov.Type, _PRECISIONS[precision]),
            props.enable_profiling: profiling}
    t2 = time.perf_counter()
    compiled = ov.Core().compile_model(ov_model, "CPU", full)
    compile_s = time.perf_counter() - t2
    info.update({"openvino": package_version("openvino") or ov.__version__, "runtime": ov.get_version(),
                 "ov_device": "CPU",
                 "performance_hint": str(compiled.get_property(props.hint.performance_mode)),
                 "inference_threads": int(compiled.get_property(props.inference_num_threads)),
                 "requested_precision": _PRECISIONS[precision],
                 "inference_precision": compiled.get_property(props.hint.inference_precision).get_type_name(),
                 "ov_ops": len(ov_model.get_ops()), "convert_s": round(convert_s, 3),
                 "compile_s": round(compile_s, 3),
                 "telemetry": "declined (CI=true, NNCF_CI=1 around import, convert and quantize)"})
    return Compiled(compiled, ov_model, info, convert_s + quantize_s + compile_s)


def _what_ran(compiled: Any, info: dict) -> None:
    """The delegation record (every runtime node is the plugin's) and, for int8, the MAC share on u8/i8 nodes."""
    nodes = ov_int8.runtime_nodes(compiled)
    info["delegation"] = ov_int8.delegation(nodes).as_info()
    if "int8" in info:
        info["int8"].update(ov_int8.int8_share(nodes, info["int8"]["excluded"]))


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Convert (int8: quantize), compile, bind the input; build time = convert_model (+ nncf.quantize) +
    compile_model.

    The runner copies nothing on the host: the input tensor is shared with the infer request (a view of `x`'s
    memory, set once), and the output is a torch view of OpenVINO's own output buffer, which the next call
    overwrites (callers that keep an output across calls copy it). Option all_outputs (block-level error
    localisation, not timed): fn returns every output, in the model's output order, as copied CPU tensors.
    Option int8_float_ops: bench.backends.ov_int8.
    """
    ov = _openvino()
    x = x.detach().contiguous()
    built = compile_case(model, x, precision, options)
    info.update(built.info)
    _what_ran(built.compiled, info)
    request = built.compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(x.cpu().numpy(), shared_memory=True))
    if options.get("all_outputs"):
        info["io"] = "all outputs, copied out of OpenVINO's buffers (option all_outputs)"

        def fn_all() -> tuple[torch.Tensor, ...]:
            res = request.infer(share_outputs=False)
            return tuple(torch.from_numpy(res[o]) for o in built.compiled.outputs)

        return fn_all, built.build_s
    info["io"] = ("input shared with the torch tensor; output a torch view of OpenVINO's output buffer (no host "
                  "copies; overwritten by the next call)")

    def fn() -> torch.Tensor:
        return torch.from_numpy(request.infer(share_outputs=True)[0])  # synchronous; GIL released while it runs

    return fn, built.build_s
