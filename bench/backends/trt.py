"""tensorrt: torch-tensorrt's dynamo path (torch.export, then a TensorRT engine), with the precision API of the
installed version (see `tensorrt_api` and, on the fp32 island, the package docstring).

Named trt.py, not tensorrt.py, so the module cannot be mistaken for (or shadow) the tensorrt package.
torch-tensorrt is an optional extra, imported only when this backend is prepared. int8: NVIDIA ModelOpt's explicit
quantization, then the same compile (bench.backends.trt_int8; UNVERIFIED: written without a GPU).
"""
from __future__ import annotations

import contextlib
import pathlib
import re
import time
from types import ModuleType
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends import trt_int8
from bench.backends.base import DTYPES, PRECISIONS, Runner, Unsupported, package_version, sync
from bench.backends.int8 import calibration_info
from bench.env import jetson_info

NAME = "tensorrt"
_NOT_INSTALLED = "torch-tensorrt is not installed (optional extra: pip install densebench[tensorrt])"
_TENSORRT_DISTS = ("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu13", "tensorrt_cu13")


def tensorrt_version() -> str | None:
    """The installed torch-tensorrt version (from its metadata, without importing it), else None."""
    return package_version("torch-tensorrt", "torch_tensorrt")


def _version_tuple(version: str) -> tuple[int, int]:
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"cannot parse torch-tensorrt version {version!r}")
    return int(m.group(1)), int(m.group(2))


def tensorrt_api(version: str) -> str:
    """Which precision API this torch-tensorrt version has:

    "enabled_precisions" (<= 2.9: weak typing, the builder picks kernels among the enabled precisions),
    "explicit_typing" (2.10-2.12: strong typing on by default; precision comes from the model's and inputs'
    dtypes), "autocast" (>= 2.13: enabled_precisions removed; rule-based autocast or model dtypes).
    """
    v = _version_tuple(version)
    if v <= (2, 9):
        return "enabled_precisions"
    if v <= (2, 12):
        return "explicit_typing"
    return "autocast"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def tensorrt_model_dtype(version: str, precision: str) -> torch.dtype:
    """dtype to cast the model and input to before compiling: the low dtype under explicit typing (2.10-2.12),
    fp32 otherwise (enabled_precisions picks kernels; autocast inserts the casts itself)."""
    _check_precision(precision)
    if precision in ("fp16", "bf16") and tensorrt_api(version) == "explicit_typing":
        return DTYPES[precision]
    return torch.float32


def tensorrt_compile_kwargs(version: str, precision: str) -> dict:
    """Keyword arguments for torch_tensorrt.compile(ir="dynamo") for this version and precision (pure function).

    fp32 disables TF32 (`disable_tf32=True`), tf32 allows it; int8 (a ModelOpt QDQ model, bench.backends.trt_int8)
    adds torch.int8 to enabled_precisions under that API and otherwise relies on strong typing (the QDQ nodes fix
    the precision); fp16/bf16 per `tensorrt_api(version)`:
    - enabled_precisions: {fp32, low}; TensorRT may run any layer in low precision (fp32 island not kept).
    - explicit_typing: `use_explicit_typing=True`, no precision kwarg: the model is cast (tensorrt_model_dtype)
      and explicit casts in the model (the island's `.float()`) are honoured.
    - autocast: `use_explicit_typing=True, enable_autocast=True, autocast_low_precision_type=low`; the model stays
      fp32 and its torch.autocast-disabled regions stay fp32.
    """
    _check_precision(precision)
    api = tensorrt_api(version)
    kw: dict[str, Any] = {"disable_tf32": precision != "tf32", "truncate_double": True}
    low = DTYPES[precision] if precision in ("fp16", "bf16") else None
    if api == "enabled_precisions":
        kw["enabled_precisions"] = {torch.float32} | ({low} if low is not None else set())
        if precision == "int8":
            kw["enabled_precisions"].add(torch.int8)
    elif api == "explicit_typing":
        kw["use_explicit_typing"] = True
    else:
        kw["use_explicit_typing"] = True
        if low is not None:
            kw["enable_autocast"] = True
            kw["autocast_low_precision_type"] = low
    return kw


def tensorrt_island_note(version: str, precision: str) -> str:
    """Whether linear attention's fp32 island survives this version's precision API (for backend_info)."""
    if precision in ("fp32", "tf32"):
        return "fp32 network: no low-precision island to keep"
    if precision == "int8":
        return "int8 by QDQ on Conv/Linear modules only: the island's matmuls and division run float"
    api = tensorrt_api(version)
    if api == "enabled_precisions":
        return ("weak typing (enabled_precisions): TensorRT may choose low-precision kernels inside linear "
                "attention's fp32 island; not kept, rel_err/numerics_ok are the check")
    if api == "explicit_typing":
        return "strong typing of a low-precision model: the island stays fp32 through the mixer's explicit casts"
    return "rule-based autocast: torch.autocast-disabled regions (the island) stay fp32"


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """TensorRT needs an NVIDIA GPU and torch-tensorrt, and picks its own tensor formats."""
    if device_type != "cuda":
        return "tensorrt runs on NVIDIA GPUs (CUDA) only"
    if tensorrt_version() is None:
        return _NOT_INSTALLED
    if channels_last:
        return "channels_last has no meaning for tensorrt: TensorRT chooses its own tensor formats"
    if precision == "int8" and trt_int8.modelopt_version() is None:
        return trt_int8.NO_MODELOPT
    return None


def import_torch_tensorrt() -> tuple[ModuleType, str]:
    """torch_tensorrt and its version; Unsupported when it is missing or installed but broken (a CUDA or
    TensorRT library mismatch shows up only on import)."""
    version = tensorrt_version()
    if version is None:
        raise Unsupported(_NOT_INSTALLED)
    try:
        import torch_tensorrt
    except Exception as e:
        raise Unsupported(f"torch-tensorrt {version} is installed but does not import: {type(e).__name__}: {e}") from e
    return torch_tensorrt, version


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Compile to a TensorRT engine and run it once (lazy engine init counts as build).

    Option `tensorrt_kwargs` is merged over `tensorrt_compile_kwargs`.
    """
    torch_tensorrt, version = import_torch_tensorrt()
    kwargs = tensorrt_compile_kwargs(version, precision)
    kwargs.update(options.get("tensorrt_kwargs", {}))
    mdt = tensorrt_model_dtype(version, precision)
    model, x = model.to(mdt), x.to(mdt)
    t0 = time.perf_counter()
    if precision == "int8":  # UNVERIFIED without a GPU: see bench.backends.trt_int8
        info["int8"] = trt_int8.quantize(model, x)
        info["calibration"] = calibration_info(x)
    quantize_s = time.perf_counter() - t0
    if precision == "int8":
        info["quantize_s"] = round(quantize_s, 3)
    info.update({"torch_tensorrt": version, "tensorrt": package_version(*_TENSORRT_DISTS),
                 "api": tensorrt_api(version), "model_dtype": str(mdt).replace("torch.", ""),
                 "compile_kwargs": {k: (sorted(str(d) for d in v) if isinstance(v, set) else str(v))
                                    for k, v in kwargs.items()},
                 "fp32_island": tensorrt_island_note(version, precision)})
    info.update(jetson_info())
    t0 = time.perf_counter()
    # no_grad rather than inference_mode: torch.export (inside torch_tensorrt.compile) traces the model and
    # inference-mode tensors are not meant to enter an exported graph. int8: ModelOpt's export mode around it.
    export = trt_int8.export_context() if precision == "int8" else contextlib.nullcontext()
    with torch.no_grad(), export:
        trt_mod = torch_tensorrt.compile(model, ir="dynamo", inputs=[x], **kwargs)
        trt_mod(x)  # deserialisation / lazy engine init happen on the first call: count them as build
    sync(device)
    build = quantize_s + time.perf_counter() - t0

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return trt_mod(x)

    return fn, build
