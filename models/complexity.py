"""Params and MACs by the reference counting convention.

MACs = FLOPs / 2 from `torch.utils.flop_counter.FlopCounterMode`, which counts convolutions and matrix products
(not norms, activations or interpolation). Models are built and run on the `meta` device, so counting softmax
attention at 2048x2048 needs no memory. Scaled-dot-product attention kernels that FlopCounterMode does not know
(the CPU flash kernel) are given the matmul count of the math they replace, so attention is never skipped
(mmsegmentation users report FLOP counters silently skipping attention).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.registry import build_model, get_model_info, input_shape


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sdpa_flops(query_shape, key_shape, value_shape) -> int:
    *batch, n_q, d = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    b = 1
    for s in batch:
        b *= s
    return 2 * b * n_q * n_k * d + 2 * b * n_q * n_k * d_v  # QK^T and AV, 2 FLOPs per MAC


def _sdpa_cpu_flash(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query, key, value)


# FlopCounterMode formulas torch lacks; models.complexity and bench.profiling.macs count with the same ones
EXTRA_FLOP_RULES = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    EXTRA_FLOP_RULES[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flash


def count_model_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward of `model` on `example` (both may live on the meta device)."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_RULES)
    with counter, torch.no_grad():
        model(example)
    return counter.get_total_flops() // 2


@lru_cache(maxsize=None)
def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(name)


def count_macs(name: str, height: int | None = None, width: int | None = None, batch: int = 1) -> int:
    """MACs of registry model `name` for a batch of images of height x width (default: its own input size).

    Every model here processes the images of a batch independently, so MACs are counted once per resolution
    (the counter is slow: it runs Python meta kernels) and multiplied by the batch.
    """
    info = get_model_info(name)
    return batch * macs_per_image(name, height or info.input_size[0], width or info.input_size[1])


@lru_cache(maxsize=None)
def macs_per_image(name: str, height: int, width: int) -> int:
    remote = get_model_info(name).remote
    if remote is not None:  # a user's model file's model: counted in a child process
        return remote.counts(height, width)["macs"]
    x = torch.empty(input_shape(name, height, width, 1), device="meta")
    return count_model_macs(_meta_model(name), x)


@lru_cache(maxsize=None)
def params_of(name: str) -> int:
    info = get_model_info(name)
    if info.remote is not None:
        return info.remote.counts(*info.input_size)["params"]
    return count_params(_meta_model(name))
