"""What every int8 backend shares: the calibration set and how it is recorded.

Post-training static quantization needs activation ranges, read from calibration inputs. Every backend (onnxruntime
QDQ, OpenVINO/NNCF, ExecuTorch/XNNPACK pt2e, TensorRT) calibrates on the same fixed, seeded set of synthetic images
of the case's size, drawn like the case's own input (standard normal, `models.registry.example_input`) but from
other seeds, so the input the latency and rel_err are measured on is not one the ranges were fitted to.

This is a numerics and speed measurement, not an accuracy one: the models carry random weights and no dataset is
involved, so mIoU is not measured; rel_err against eager fp32 is the distance the report shows.
"""
from __future__ import annotations

from typing import Any

import torch

from bench.backends import graph_counts
from bench.backends.base import Unsupported

CALIBRATION_IMAGES = 8
CALIBRATION_SEED = 1_000_003  # the case's own input uses the case's seed (default 0): never this one


def calibration_set(x: torch.Tensor, images: int = CALIBRATION_IMAGES,
                    seed: int = CALIBRATION_SEED) -> list[torch.Tensor]:
    """`images` inputs of x's shape, dtype and device, each N(0, 1) from its own seed (seed, seed + 1, ...)."""
    out = []
    for i in range(images):
        g = torch.Generator().manual_seed(seed + i)
        out.append(torch.randn(tuple(x.shape), generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype))
    return out


def calibration_info(x: torch.Tensor, images: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> dict:
    """The `calibration` entry of backend_info: what the ranges were fitted on."""
    return {"images": images, "shape": list(x.shape), "distribution": "standard normal (like the case input)",
            "seeds": f"{seed}..{seed + images - 1}",
            "accuracy": "not measured (random weights, no dataset): rel_err to eager fp32 only"}


def pt2e_quantize(model: torch.nn.Module, x: torch.Tensor, quantizer: Any, label: str) -> torch.nn.Module:
    """torch.export -> prepare_pt2e(quantizer) -> calibrate on `calibration_set(x)` -> convert_pt2e: the pt2e
    recipe that ExecuTorch (XNNPACKQuantizer) and compile (X86InductorQuantizer) share. `label` names the case's
    backend in the one-line reason when the quantizer fails on a pattern (raised as Unsupported)."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except Exception as e:  # noqa: BLE001 - a missing or mismatched torchao is the case's one-line reason
        raise Unsupported(f"{label} needs torchao's pt2e quantizer: {type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]}") from e
    exported = torch.export.export(model, (x,)).module()
    try:
        prepared = prepare_pt2e(exported, quantizer)
    except Exception as e:  # noqa: BLE001 - the quantizer's own failure on a pattern: the case's one-line reason
        raise Unsupported(f"{label}: {graph_counts.annotate_failure(type(quantizer).__name__, e)}") from e
    with torch.no_grad():
        for image in calibration_set(x):
            prepared(image)
    return convert_pt2e(prepared)
