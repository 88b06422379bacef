"""What every int8 backend shares: the calibration set and how it is recorded.

Post-training static quantization needs activation ranges, read from calibration inputs. Every backend (onnxruntime
QDQ, OpenVINO/NNCF, ExecuTorch/XNNPACK pt2e, TensorRT) calibrates on the same fixed, seeded set of synthetic images
of the case's size, drawn like the case's own input (standard normal, `models.registry.example_input`) but from
other seeds, so the input the latency and rel_err are measured on is not one the ranges were fitted to.

This is a numerics and speed measurement, not an accuracy one: the models carry random weights and no dataset is
involved, so mIoU is not measured; rel_err against eager fp32 is the distance the report shows.
"""
from __future__ import annotations

import torch

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
