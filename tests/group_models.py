"""Models for tests/test_groups.py (loaded through --models-from): one decision group `gtest:*` at level model.

gtest:a is a 3x3 stem conv followed by CONVS 1x1 convs; gtest:b is the same network with as many 1x1 convs again
(a real slower code path, about twice the work of a); gtest:a2 is a built exactly as gtest:a (A against a copy of
itself).
"""
from __future__ import annotations

import torch
from torch import nn

from models.registry import register_model

WIDTH = 48
CONVS = 4


class ConvStack(nn.Module):
    def __init__(self, convs: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, padding=1, stride=2)
        self.body = nn.Sequential(*[nn.Conv2d(WIDTH, WIDTH, 1) for _ in range(convs)])
        self.head = nn.Conv2d(WIDTH, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


@register_model("gtest:a", mixer="a", num_classes=4, out_stride=2)
def gtest_a() -> nn.Module:
    return ConvStack(CONVS)


@register_model("gtest:a2", mixer="a2", num_classes=4, out_stride=2)
def gtest_a2() -> nn.Module:
    return ConvStack(CONVS)


@register_model("gtest:b", mixer="b", num_classes=4, out_stride=2)
def gtest_b() -> nn.Module:
    return ConvStack(2 * CONVS)
