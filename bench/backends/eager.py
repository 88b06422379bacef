"""eager: the model as PyTorch runs it, under torch.autocast for fp16/bf16 (the baseline every backend is
compared with)."""
from __future__ import annotations

import pathlib
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends.base import DTYPES, Runner, amp_note, autocast_context

NAME = "eager"


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """Every combination that passes the common checks runs in eager, but int8."""
    if precision == "int8":
        return ("eager PyTorch has no int8 deployment path: quantized kernels come from a runtime or a compiler "
                "(--backends onnxruntime, openvino, executorch, compile)")
    return None


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """No build step; option `cast_model` also casts weights and input to the low dtype (autocast still on)."""
    info["amp"] = amp_note(precision, "torch.autocast")
    if options.get("cast_model") and precision in ("fp16", "bf16"):
        model = model.to(DTYPES[precision])
        x = x.to(DTYPES[precision])
        info["amp"] = "model and input cast to " + precision + ", under torch.autocast"
    dt = device.type

    def fn() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(dt, precision):
            return model(x)

    return fn, 0.0
