"""Small building blocks shared by the model files: conv + norm + act, and the residual wrapper."""
from __future__ import annotations

from typing import Callable

from torch import nn

ActLayer = Callable[[], nn.Module] | None


class ConvNormAct(nn.Sequential):
    """Conv2d, then optional BatchNorm, then optional activation; 'same' padding for odd kernels.

    Submodules are named conv / norm / act so that conv+BN folding (models.deploy) finds every pair.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = True, act: ActLayer = None, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        if norm:
            self.norm = nn.BatchNorm2d(out_ch, eps=bn_eps)
        if act is not None:
            self.act = act()


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return x + self.fn(x)


class FeaturePyramid(nn.Module):
    """Base of an encoder made of `self.stages` (an nn.ModuleList) run in sequence: returns every stage's output,
    the multi-stride features a segmentation decoder reads."""

    stages: nn.ModuleList

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
