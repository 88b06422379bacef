"""compile: torch.compile (inductor by default) with static shapes; autocast is traced into the graph.

int8 (CPU): pt2e static quantization with torchao's X86InductorQuantizer (per-channel symmetric int8 weights,
per-tensor affine uint8 activations calibrated on `bench.backends.int8.calibration_set`), then torch.compile of
the converted module under torch.no_grad with inductor's freezing on, which folds the weights and lowers the
dequantize -> conv/linear -> quantize patterns to oneDNN int8 kernels (the torchao recipe). What the quantizer
leaves unannotated (the mixers' attention matmuls and division, softmax) runs in float; the int8 record says
what, read from the converted graph inductor compiles.

Named torch_compile.py, not compile.py, so the module does not read as the builtin `compile`.
"""
from __future__ import annotations

import contextlib
import pathlib
import time
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends import graph_counts
from bench.backends.base import Runner, Unsupported, amp_note, autocast_context, package_version, sync
from bench.backends.int8 import calibration_info, pt2e_quantize

NAME = "compile"
INT8_SCHEME = "pt2e X86InductorQuantizer, static"


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """torch.compile covers every combination that passes the common checks; int8 needs torchao and the CPU."""
    if precision == "int8":
        if device_type != "cpu":
            return "compile int8 (pt2e with the X86 inductor quantizer) runs on the CPU only"
        if package_version("torchao") is None:
            return ("compile int8 needs torchao (pt2e X86InductorQuantizer): pip install torchao "
                    "(densebench[executorch] brings it)")
    return None


def _int8_record(converted: nn.Module, x: torch.Tensor) -> dict:
    """info["int8"]: the scheme and, from the converted graph, the arithmetic left in float and the share of MACs
    whose operands are dequantized int8 (bench.backends.graph_counts.int8_record)."""
    return {"scheme": INT8_SCHEME, "weights": "per-channel symmetric int8",
            "activations": "per-tensor affine uint8, static ranges from the calibration set (histogram observer)",
            **graph_counts.int8_record(converted, x),
            "float_policy": "nothing excluded by hand: what the X86 inductor quantizer leaves unannotated runs in "
                            "float ('excluded' is read from the converted graph)"}


def quantize_x86(model: nn.Module, x: torch.Tensor, info: dict) -> nn.Module:
    """export -> prepare_pt2e(X86InductorQuantizer) -> calibrate -> convert_pt2e; records calibration and int8."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    except Exception as e:  # noqa: BLE001 - a missing or mismatched torchao is the case's one-line reason
        raise Unsupported(f"compile int8 needs torchao's pt2e quantizer: {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}") from e
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    converted = pt2e_quantize(model, x, quantizer, "compile int8")
    info["calibration"] = calibration_info(x)
    info["int8"] = _int8_record(converted, x)
    info["torchao"] = package_version("torchao")
    return converted


def _freezing() -> contextlib.AbstractContextManager:
    """inductor's freezing for the compilation inside the block (weights folded into constants, the dequantize ->
    conv -> quantize patterns lowered to oneDNN int8 kernels: the torchao recipe), restored after.
    torch._inductor.config is loaded by torch._dynamo, which prepare() has used by then; passing freezing as
    torch.compile(options=...) instead fails in torch 2.14 (UnsupportedOperatorException: onednn.qconv_prepack)."""
    return torch._inductor.config.patch(freezing=True)


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Compile and run once: the first call traces and generates code, so it is the build time, not latency.

    Options: compile_mode, max_autotune (inductor), compile_backend ("eager"/"aot_eager": tracing only, for tests).
    """
    quantize_s = 0.0
    if precision == "int8":
        t0 = time.perf_counter()
        model = quantize_x86(model, x, info)
        quantize_s = time.perf_counter() - t0
        info["quantize_s"] = round(quantize_s, 3)
    mode = options.get("compile_mode") or None  # None == "default"
    if options.get("max_autotune", False) and mode is None:
        mode = "max-autotune"
    compiler = options.get("compile_backend", "inductor")
    torch._dynamo.reset()  # fresh caches: no recompile limit carried over from an earlier case in this process
    if compiler == "inductor":
        compiled = torch.compile(model, backend="inductor", mode=mode, dynamic=False)
    else:
        compiled = torch.compile(model, backend=compiler, dynamic=False)
    int8 = precision == "int8"
    info.update({"compiler": compiler, "mode": mode or "default", "dynamic": False,
                 "amp": amp_note(precision, "torch.autocast (traced into the graph)")})
    dt = device.type

    def fn() -> torch.Tensor:
        if int8:  # the torchao recipe: torch.no_grad
            with torch.no_grad():
                return compiled(x)
        with torch.inference_mode(), autocast_context(dt, precision):
            return compiled(x)

    t0 = time.perf_counter()
    with _freezing() if int8 and compiler == "inductor" else contextlib.nullcontext():
        fn()  # compiles: freezing applies to this first (and, shapes being static, only) compilation
    sync(device)
    build = time.perf_counter() - t0
    info["build"] = "first call: dynamo trace + inductor codegen + one run"
    if int8:
        info["freezing"] = compiler == "inductor"
    return fn, build + quantize_s
