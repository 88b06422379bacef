"""TensorRT int8 by explicit quantization, the path torch-tensorrt documents for its dynamo frontend ("Quantization
(INT8 / FP8 / FP4)" and examples/dynamo/vgg16_ptq.py): NVIDIA ModelOpt inserts quantize/dequantize nodes and
calibrates their scales (`mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`, the shared calibration set as
the loop), then torch_tensorrt.compile turns the QDQ nodes into TensorRT int8 layers.

UNVERIFIED: written against the documented API without a GPU (no CUDA machine was available when it was written);
the first CUDA run is its test. What it assumes: ModelOpt's INT8_DEFAULT_CFG quantizes the inputs (per-tensor)
and weights (per-channel, axis 0) of Conv and Linear modules, symmetric (max calibration), and leaves every other
op float (its "default" entry disables all other quantizers) - so linear attention's matmuls and division, and
softmax, which the mixers call as functions, stay float without an exclusion list; the compile call passes
`enabled_precisions={float32, int8}` where that API exists (torch-tensorrt <= 2.9) and otherwise relies on strong
typing (the QDQ nodes fix the precision), as the documentation's newer example does; the export runs under
ModelOpt's `export_torch_mode()` where it exists (the tutorial's workaround for FunctionalTensor errors).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from bench.backends.base import Unsupported, package_version
from bench.backends.int8 import calibration_set
from models.complexity import count_model_macs

MODELOPT_DISTS = ("nvidia-modelopt", "nvidia_modelopt")
NO_MODELOPT = "tensorrt int8 needs NVIDIA ModelOpt (pip install nvidia-modelopt): torch-tensorrt quantizes through it"
_EXCLUDED = [{"name": "functional ops (torch.matmul, division, softmax, SDPA)", "op": "not a Conv/Linear module",
              "why": "ModelOpt's INT8_DEFAULT_CFG quantizes Conv and Linear modules only: linear attention's "
                     "matmuls and division and softmax attention stay float"}]


def modelopt_version() -> str | None:
    return package_version(*MODELOPT_DISTS)


def import_modelopt() -> Any:
    """modelopt.torch.quantization; Unsupported when missing or broken."""
    if modelopt_version() is None:
        raise Unsupported(NO_MODELOPT)
    try:
        import modelopt.torch.quantization as mtq
    except Exception as e:
        raise Unsupported(f"nvidia-modelopt {modelopt_version()} is installed but does not import: "
                          f"{type(e).__name__}: {e}") from e
    return mtq


def export_context() -> contextlib.AbstractContextManager:
    """ModelOpt's export_torch_mode() where it exists, else nothing."""
    try:
        from modelopt.torch.quantization.utils import export_torch_mode
    except ImportError:
        return contextlib.nullcontext()
    return export_torch_mode()


def _quantized(module: nn.Module) -> bool:
    """A module whose input and weight quantizers ModelOpt enabled."""
    quantizers = [getattr(module, n, None) for n in ("input_quantizer", "weight_quantizer")]
    return all(q is not None and bool(getattr(q, "is_enabled", False)) for q in quantizers)


def _module_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(MACs of quantized Conv/Linear modules, MACs of all Conv/Linear modules) in one forward, by hooks."""
    counts = [0, 0]

    def hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        w = m.weight
        per_out = math.prod(w.shape[1:]) if isinstance(m, nn.Conv2d) else int(w.shape[1])
        macs = out.numel() * per_out
        counts[1] += macs
        counts[0] += macs if _quantized(m) else 0

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counts[0], counts[1]


def quantize(model: nn.Module, x: torch.Tensor) -> dict:
    """Insert ModelOpt's QDQ nodes into `model` in place and calibrate them; returns the `int8` entry."""
    mtq = import_modelopt()
    data = calibration_set(x)

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for c in data:
                m(c)

    mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    q, _ = _module_macs(model, x)
    total = count_model_macs(model, x)
    return {"scheme": "NVIDIA ModelOpt explicit quantization (mtq.INT8_DEFAULT_CFG, max calibration), QDQ nodes "
                      "compiled by torch-tensorrt into TensorRT int8 layers (unverified without a GPU)",
            "weights": "per-channel symmetric int8", "activations": "per-tensor symmetric int8",
            "excluded": _EXCLUDED, "macs_share": round(q / total, 4) if total else None, "macs_int8": q,
            "macs_total": total, "modelopt": modelopt_version(),
            "macs_note": "share of the model's MACs in Conv/Linear modules ModelOpt quantized, from the model, not "
                         "from the engine: TensorRT may still choose float kernels for a QDQ layer"}
