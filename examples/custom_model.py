"""An example user's model: a small encoder-decoder segmentation network with a token mixer of its own.

Benchmark it beside the built-in zoo without touching the suite:

    python run_bench.py --models-from examples/custom_model.py --models example-segnet --res 256
    python run_bench.py --models-from examples/custom_model.py --models example-segnet,evit-b1:msla --res 512

(or export DENSEBENCH_MODELS_FROM=examples/custom_model.py). Any file works the same way: import
`register_model` and decorate a builder that takes no arguments and returns an nn.Module mapping a
(B, 3, H, W) image to dense (B, classes, H/s, W/s) logits. Everything not stated is filled in: the family
is "user", the classes and the output stride are read off one meta-device forward, and the model runs at
the run's --res. Builders are also called under `torch.device("meta")` (MAC counting, the check before a run),
so a builder should not pin the tensors it creates to a device.

The network: a stride-4 conv stem, two stages (strides 8 and 16) of gated depthwise mixer blocks, and a light
decoder that fuses stride 16 into stride 8, then into the stem's stride-4 features, and classifies at stride 4.
The mixer is attention-free: a 7x7 depthwise conv plus the image-wide mean of the values (a global term
that costs O(N), not O(N^2)), gated by the GELU of a second projection. Conv + BN pairs are built as
nn.Sequential(Conv2d, BatchNorm2d), so `--fold` folds them like the built-in models'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            act: bool = False) -> nn.Sequential:
    """Conv (no bias: the BN has one) + BN (+ GELU), as one Sequential so that conv+BN folding finds the pair."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(out_ch)]
    return nn.Sequential(*layers, nn.GELU()) if act else nn.Sequential(*layers)


class GatedDepthwiseMixer(nn.Module):
    """Token mixer: value and gate from one 1x1; value mixed by a 7x7 depthwise conv (local) plus its spatial mean
    (global, linear in tokens); multiplied by GELU(gate); 1x1 + BN back to the input width."""

    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__()
        self.value_gate = nn.Conv2d(channels, 2 * channels, 1)
        self.local = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.proj = conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.value_gate(x).chunk(2, dim=1)
        mixed = self.local(value) + value.mean(dim=(2, 3), keepdim=True)
        return self.proj(mixed * F.gelu(gate))


class MixerBlock(nn.Module):
    """Pre-norm residual block: x + mixer(BN(x)), then x + MLP(BN(x)) with a 1x1 expand/project MLP."""

    def __init__(self, channels: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.mixer = GatedDepthwiseMixer(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels * mlp_ratio, 1), nn.GELU(),
                                 nn.Conv2d(channels * mlp_ratio, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Decoder(nn.Module):
    """Top-down fusion: 1x1 laterals to one width, each coarser map upsampled (bilinear) and added to the next finer
    one, a 3x3 smoothing conv after each addition, a 1x1 classifier on the finest (the stem's) map."""

    def __init__(self, in_channels: tuple[int, ...], width: int, num_classes: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(conv_bn(c, width) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn(width, width, 3, act=True) for _ in in_channels[1:])
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # finest first
        x = self.laterals[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            up = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](self.laterals[i](feats[i]) + up)
        return self.classifier(x)


class ExampleSegNet(nn.Module):
    """(B, 3, H, W) -> (B, classes, H/4, W/4) logits; H and W multiples of 16 (the deepest stride)."""

    def __init__(self, num_classes: int = 19, widths: tuple[int, int, int] = (32, 64, 128),
                 depths: tuple[int, int] = (2, 2), decoder_width: int = 64) -> None:
        super().__init__()
        half = widths[0] // 2
        self.stem = nn.Sequential(conv_bn(3, half, 3, 2, act=True), conv_bn(half, widths[0], 3, 2, act=True))
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn(c_in, c_out, 3, 2), *(MixerBlock(c_out) for _ in range(depth)))
            for c_in, c_out, depth in zip(widths[:-1], widths[1:], depths))
        self.decoder = Decoder(widths, decoder_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return self.decoder(feats)


@register_model("example-segnet", mixer="gated-depthwise", size_multiple=16,
                description="example user's model: conv stem, 2 stages of gated depthwise mixers, top-down decoder, "
                            "logits at stride 4")
def example_segnet() -> ExampleSegNet:
    return ExampleSegNet(num_classes=19)
