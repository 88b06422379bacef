"""Test helper: give every BatchNorm non-trivial statistics, so that tests of BN folding and of weight copies
between implementations would fail if a BN were dropped, misplaced or mis-mapped (fresh BNs are the identity)."""
from __future__ import annotations

import torch
from torch import nn


def randomise_bn(module: nn.Module, g: torch.Generator, scale: float = 0.2) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * scale)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * scale)
    return module
