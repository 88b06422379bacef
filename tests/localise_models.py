"""Models for tests/test_localise.py (also loaded through --models-from): a network built to break at one block
under reduced precision, and the same network that does not.

loctest:break: stem (3x3 conv stride 2, ReLU) -> `mix` (1x1 conv whose output channel 0 is scaled by TINY) ->
`norm` (each channel divided by its mean magnitude plus EPS: the tiny denominator) -> `head` (1x1 conv, 4 classes).
In fp32 channel 0 comes out of `norm` at unit scale like the others. In fp16 (smallest subnormal ~6e-8) channel 0
of `mix` flushes to zero; under int8 it lies far below the quantization step of a per-tensor scale set by the other
channels and rounds to zero. Either way `mix`'s own output hardly changes (channel 0 is ~1e-10 of its norm), and
`norm` then divides 0 by a denominator that is 0 (fp16: EPS flushes too) or EPS: the error enters visibly at `norm`
and at no earlier block. loctest:fine is the same network with channel 0 at unit scale: nothing breaks.
"""
from __future__ import annotations

import torch
from torch import nn

from models.registry import register_model

WIDTH = 8
TINY = 1e-10
EPS = 1e-12


class Normalise(nn.Module):
    """x / (mean |x| per channel + EPS): a normaliser whose denominator is as small as its channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.abs().mean(dim=(2, 3), keepdim=True) + EPS)


class LocNet(nn.Module):
    def __init__(self, channel0_scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, WIDTH, 3, stride=2, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(WIDTH, WIDTH, 1)
        with torch.no_grad():
            self.mix.weight[0] *= channel0_scale
            self.mix.bias[0] *= channel0_scale
        self.norm = Normalise()
        self.head = nn.Conv2d(WIDTH, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.mix(self.stem(x))))


@register_model("loctest:break", mixer="break", num_classes=4, out_stride=2)
def loctest_break() -> nn.Module:
    return LocNet(TINY).eval()


@register_model("loctest:fine", mixer="fine", num_classes=4, out_stride=2)
def loctest_fine() -> nn.Module:
    return LocNet(1.0).eval()
