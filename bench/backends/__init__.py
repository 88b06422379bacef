"""Backends: turn a model + a fixed example input into a zero-argument function that runs one inference.

    prepare(model, example, backend=..., device=..., precision=..., channels_last=..., fold=..., workdir=...)
        -> Prepared(fn, build_s, info)

`fn()` runs ONE inference on the fixed example input and returns the output on the device (the caller
synchronises). `build_s` is compile / export / engine-build time, kept apart from latency. `info` goes to the
`backend_info` column as JSON: versions, provider, settings and notes. prepare() takes ownership of the model: it
may fold, move and cast it in place, so compute the fp32 reference first (`reference_output`).

One module per backend (eager, torch_compile, cudagraphs, ort, trt, openvino, executorch), each implementing
base.Backend; this module is the registry and the checks common to all of them.

Supported matrix (anything else raises `Unsupported` with the reason; `unsupported_reason` says so up front):

| backend      | cpu                        | cuda                                               |
|--------------|----------------------------|----------------------------------------------------|
| eager        | fp32, bf16, fp16 (autocast)| fp32 (TF32 off), tf32, fp16, bf16 (autocast)       |
| compile      | fp32, bf16, fp16 (autocast)| fp32, tf32, fp16, bf16 (autocast inside the graph) |
|              | int8 (pt2e, X86 inductor)  |                                                    |
| cudagraphs   | -                          | fp32, tf32, fp16, bf16 (autocast captured)         |
| onnxruntime  | fp32 (CPU EP)              | fp32, tf32 (CUDA EP), fp16 (model cast to half)    |
| tensorrt     | -                          | fp32, tf32, fp16, bf16 (torch-tensorrt dynamo)     |
| openvino     | fp32, bf16 (CPU plugin)    | -                                                  |
| executorch   | fp32, int8 (XNNPACK)       | -                                                  |

bf16 on CUDA needs compute capability >= 8.0. fp16 on a CPU is native only with AVX512-FP16/AMX-FP16 (x86) or
FP16 arithmetic (ARM); elsewhere oneDNN converts, so it is a numerics check, not a deployment speed (the ISA flags
are in `info["cpu_isa"]`). openvino bf16 runs only where the CPU plugin reports BF16 among its
OPTIMIZATION_CAPABILITIES (AVX512-BF16 or AMX); the precision it compiled with is read back into
`info["inference_precision"]`.

Linear attention's fp32 island (the attention matmuls and the division, see models/mixers.py):
- eager / compile / cudagraphs: autocast, so the model's own autocast-disabled region (and its explicit
  `.float()`) keeps it in fp32.
- onnxruntime fp16: the model is cast to half before export, so the island stays fp32 only through the explicit
  `.float()` casts in the mixer (exported as Cast nodes); autocast regions alone would not survive export.
- tensorrt: >= 2.13 rule-based autocast (`enable_autocast=True`), which respects torch.autocast regions of the
  model; 2.10-2.12 strong typing of a half model, island kept by the mixer's explicit casts; <= 2.9 weak typing
  (`enabled_precisions`): TensorRT may pick fp16 kernels inside the island: not kept, the numerics columns catch
  it.
- openvino bf16: the model is converted in fp32 (the traced graph has no autocast regions and the mixer's
  `.float()` casts are no-ops there); the CPU plugin's bf16 inference-precision hint then picks which ops run in
  bf16, so the island is not guaranteed: the numerics columns catch it.
"""
from __future__ import annotations

import pathlib
import time
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends import cudagraphs, eager, executorch, openvino, ort, torch_compile, trt
from bench.backends.base import (DEVICE_TYPES, DTYPES, PRECISIONS, Backend, Prepared, Unsupported, autocast_context,
                                 base_info, reference_output, set_fp32_math, to_device)
from bench.backends.trt import tensorrt_api, tensorrt_compile_kwargs, tensorrt_model_dtype, tensorrt_version
from models.onnx_export import ONNX_OPSET

_REGISTRY: dict[str, Backend] = {m.NAME: m for m in (eager, torch_compile, cudagraphs, ort, trt, openvino,
                                                     executorch)}
BACKENDS = tuple(_REGISTRY)


def _device_type(device: Any) -> str:
    """The device type ("cpu", "cuda") of a torch.device or a string such as "cuda:1": checks ignore the index."""
    if isinstance(device, torch.device):
        return device.type
    return str(device).split(":", 1)[0]


def _common_reason(dt: str, precision: str) -> str | None:
    """The checks that do not depend on the backend: the device exists and can do this precision."""
    if dt == "cuda" and not torch.cuda.is_available():
        return "CUDA not available on this machine"
    if dt == "cpu" and precision == "tf32":
        return "tf32 is a CUDA tensor-core math mode (Ampere and newer); there is no tf32 on cpu"
    if dt == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "bf16 needs a CUDA GPU of compute capability >= 8.0 (Ampere)"
    return None


def unsupported_reason(backend: str, device_type: str, precision: str, *, channels_last: bool = False,
                       fold: bool = False) -> str | None:
    """Why this combination cannot run here (None when it can, as far as a static check can tell).

    Called by the engine before spawning a child. `device_type` is "cpu" or "cuda" (an index is ignored).
    """
    if backend not in _REGISTRY:
        return f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}"
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}"
    dt = _device_type(device_type)
    if dt not in DEVICE_TYPES:
        return f"unknown device type {dt!r}; valid: {', '.join(DEVICE_TYPES)}"
    return _common_reason(dt, precision) or _REGISTRY[backend].unsupported(dt, precision, channels_last, fold)


def _cuda_device(device: torch.device) -> torch.device:
    """The CUDA device with its index ("cuda" -> the current one), made current; Unsupported if not visible."""
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise Unsupported(f"no CUDA device {device}: {torch.cuda.device_count()} visible")
    torch.cuda.set_device(device)
    return device


def prepare(model: nn.Module, example: torch.Tensor, *, backend: str, device: torch.device | str, precision: str,
            channels_last: bool = False, fold: bool = False, workdir: pathlib.Path | str = "/tmp",
            options: Mapping[str, Any] | None = None) -> Prepared:
    """Build the backend's runner for one case. Raises Unsupported(reason) for combinations that cannot run.

    `options` (all optional): compile_mode, max_autotune (compile); cudagraph_warmup; opset, ort_providers,
    onnx_exporter ("dynamo" | "torchscript"), keep_onnx (onnxruntime); tensorrt_kwargs (merged over
    tensorrt_compile_kwargs); cast_model (eager: cast weights); compile_backend ("inductor"; "eager"/"aot_eager"
    trace only); cudnn_benchmark (CUDA, default on).
    """
    device = torch.device(device)
    options = dict(options or {})
    reason = unsupported_reason(backend, device.type, precision, channels_last=channels_last, fold=fold)
    if reason:
        raise Unsupported(reason)
    if device.type == "cuda":
        device = _cuda_device(device)
    info = base_info(backend, device, precision, channels_last, fold)
    info.update(set_fp32_math(device.type, precision))
    if device.type == "cuda":
        # Fixed shapes: let cuDNN pick the fastest conv algorithm (autotuned in the first calls, which the
        # engine's warm-up and cudagraphs' side-stream warm-up absorb), as deployments do.
        torch.backends.cudnn.benchmark = bool(options.get("cudnn_benchmark", True))
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    t0 = time.perf_counter()
    model, x = to_device(model, example, device, channels_last, fold)
    info["to_device_s"] = round(time.perf_counter() - t0, 4)
    fn, build = _REGISTRY[backend].prepare(model, x, device, precision, info, options, pathlib.Path(workdir))
    return Prepared(fn=fn, build_s=float(build), info=info)


__all__ = ["BACKENDS", "PRECISIONS", "DTYPES", "ONNX_OPSET", "Unsupported", "Prepared", "prepare",
           "unsupported_reason", "reference_output", "set_fp32_math", "autocast_context", "tensorrt_api",
           "tensorrt_compile_kwargs", "tensorrt_model_dtype", "tensorrt_version"]
