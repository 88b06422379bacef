"""EfficientViT-Seg (ICCV 2023): backbone B0..B3 and L1/L2, segmentation head, and the mixer variants.

The variants (`evit-b1:softmax`, ...) keep the EfficientViT-Seg macro architecture and swap only the stage-3/4
context module (the token mixer inside each EfficientViT block), so a latency difference between two variants
is the difference between their mixers. `evit-bX:msla` is EfficientViT-Seg-BX (Cityscapes head) itself.
Architecture facts: ../shared/reference/architectures.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ActLayer, ConvNormAct, Residual
from models.mixers import build_mixer
from models.registry import Published, register_model

# ----------------------------------------------------------------------------------------------------------------
# Local blocks


class DSConv(nn.Sequential):
    """Depthwise-separable conv: kxk depthwise (BN, act) -> 1x1 (BN)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: ActLayer, bn_eps: float) -> None:
        super().__init__(
            ConvNormAct(in_ch, in_ch, 3, stride, groups=in_ch, act=act, bn_eps=bn_eps),
            ConvNormAct(in_ch, out_ch, 1, bn_eps=bn_eps),
        )


class MBConv(nn.Sequential):
    """Inverted bottleneck: 1x1 expand (act) -> 3x3 depthwise (act) -> 1x1 project (BN, no act).

    fewer_norm: the expand and depthwise convs have a bias instead of BN (stages 3-4 and the EfficientViT block).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: float, act: ActLayer, bn_eps: float,
                 fewer_norm: bool = False) -> None:
        mid = round(in_ch * expand)
        super().__init__(
            ConvNormAct(in_ch, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=act, bn_eps=bn_eps),
            ConvNormAct(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm, act=act,
                        bn_eps=bn_eps),
            ConvNormAct(mid, out_ch, 1, bn_eps=bn_eps),
        )


class FusedMBConv(nn.Sequential):
    """3x3 expand conv (act) -> 1x1 project (BN, no act)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: float, act: ActLayer, bn_eps: float,
                 fewer_norm: bool = False) -> None:
        mid = round(in_ch * expand)
        super().__init__(
            ConvNormAct(in_ch, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm, act=act, bn_eps=bn_eps),
            ConvNormAct(mid, out_ch, 1, bn_eps=bn_eps),
        )


class ResBlock(nn.Sequential):
    """3x3 conv (act) -> 3x3 conv (BN, no act)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: float, act: ActLayer, bn_eps: float,
                 fewer_norm: bool = False) -> None:
        mid = round(in_ch * expand)
        super().__init__(
            ConvNormAct(in_ch, mid, 3, stride, bias=fewer_norm, norm=not fewer_norm, act=act, bn_eps=bn_eps),
            ConvNormAct(mid, out_ch, 3, bn_eps=bn_eps),
        )


_LOCAL = {"ds": DSConv, "mb": MBConv, "fmb": FusedMBConv, "res": ResBlock}


def local_block(kind: str, in_ch: int, out_ch: int, stride: int, expand: float, act: ActLayer, bn_eps: float,
                fewer_norm: bool = False) -> nn.Module:
    if kind == "ds":
        return DSConv(in_ch, out_ch, stride, act, bn_eps)
    return _LOCAL[kind](in_ch, out_ch, stride, expand, act, bn_eps, fewer_norm)


class EfficientViTBlock(nn.Module):
    """Residual(token mixer) then Residual(MBConv FFN with depthwise conv). The mixer is swappable."""

    def __init__(self, channels: int, head_dim: int, expand: float, act: ActLayer, bn_eps: float,
                 mixer: str = "msla") -> None:
        super().__init__()
        self.context = Residual(build_mixer(mixer, channels, head_dim))
        self.local = Residual(MBConv(channels, channels, 1, expand, act, bn_eps, fewer_norm=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(self.context(x))


# ----------------------------------------------------------------------------------------------------------------
# Backbone and head


@dataclass(frozen=True)
class BackboneCfg:
    widths: tuple[int, ...]  # stem, stage 1..4
    depths: tuple[int, ...]
    head_dim: int
    blocks: tuple[str, ...] = ("ds", "mb", "mb", "att", "att")  # per stage: local block kind or "att"
    expands: tuple[float, ...] = (1, 4, 4, 4, 4)  # expand ratio of the blocks of each stage
    down_expands: tuple[float, ...] = (1, 4, 4, 4, 4)  # expand ratio of each stage's stride-2 block
    fewer_norm: tuple[bool, ...] = (False, False, False, True, True)
    act: str = "hswish"
    bn_eps: float = 1e-5
    depth_counts_down: bool = True  # B series: a local stage of depth d has d blocks, the stride-2 one included


_ACTS: dict[str, ActLayer] = {"hswish": nn.Hardswish, "gelu": partial(nn.GELU, approximate="tanh")}


class EfficientViTBackbone(nn.Module):
    """Stem (stride 2) + 4 stages (strides 4, 8, 16, 32); returns the stride-8, 16 and 32 features."""

    def __init__(self, cfg: BackboneCfg, mixer: str = "msla") -> None:
        super().__init__()
        act, eps = _ACTS[cfg.act], cfg.bn_eps
        w0 = cfg.widths[0]
        stem: list[nn.Module] = [ConvNormAct(3, w0, 3, 2, act=act, bn_eps=eps)]
        stem += [Residual(local_block(cfg.blocks[0], w0, w0, 1, cfg.expands[0], act, eps, cfg.fewer_norm[0]))
                 for _ in range(cfg.depths[0])]
        self.stem = nn.Sequential(*stem)
        self.stages = nn.ModuleList()
        in_ch = w0
        for i in range(1, 5):
            w, d, kind = cfg.widths[i], cfg.depths[i], cfg.blocks[i]
            down_kind = "mb" if kind == "att" else kind
            blocks: list[nn.Module] = [local_block(down_kind, in_ch, w, 2, cfg.down_expands[i], act, eps,
                                                   cfg.fewer_norm[i])]
            if kind == "att":  # a stride-2 block, then d attention blocks
                blocks += [EfficientViTBlock(w, cfg.head_dim, cfg.expands[i], act, eps, mixer) for _ in range(d)]
            else:
                n = d - 1 if cfg.depth_counts_down else d
                blocks += [Residual(local_block(kind, w, w, 1, cfg.expands[i], act, eps, cfg.fewer_norm[i]))
                           for _ in range(n)]
            self.stages.append(nn.Sequential(*blocks))
            in_ch = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[1:]  # strides 8, 16, 32


@dataclass(frozen=True)
class HeadCfg:
    width: int
    depth: int
    num_classes: int
    final_expand: float | None
    middle: str = "mb"  # "mb" or "fmb"
    expand: float = 4


class SegHead(nn.Module):
    """Stride-8/16/32 inputs -> 1x1 conv + BN each, upsample (bicubic) to stride 8, add; residual MBConv blocks;
    optional 1x1 expand (BN, act); 1x1 classifier with bias. Logits at stride 8."""

    def __init__(self, in_channels: tuple[int, int, int], cfg: HeadCfg, act: ActLayer, bn_eps: float) -> None:
        super().__init__()
        w = cfg.width
        self.inputs = nn.ModuleList(ConvNormAct(c, w, 1, bn_eps=bn_eps) for c in in_channels)
        block = MBConv if cfg.middle == "mb" else FusedMBConv
        self.middle = nn.Sequential(*(Residual(block(w, w, 1, cfg.expand, act, bn_eps)) for _ in range(cfg.depth)))
        out: list[nn.Module] = []
        if cfg.final_expand:
            out.append(ConvNormAct(w, round(w * cfg.final_expand), 1, act=act, bn_eps=bn_eps))
        out.append(nn.Conv2d(round(w * (cfg.final_expand or 1)), cfg.num_classes, 1, bias=True))
        self.output = nn.Sequential(*out)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        x = self.inputs[0](feats[0])
        for proj, f in zip(self.inputs[1:], feats[1:]):
            x = x + F.interpolate(proj(f), size=size, mode="bicubic", align_corners=False)
        return self.output(self.middle(x))


class EfficientViTSeg(nn.Module):
    """Backbone + SegHead: (B, 3, H, W) -> logits (B, classes, H/8, W/8)."""

    def __init__(self, backbone: BackboneCfg, head: HeadCfg, mixer: str = "msla") -> None:
        super().__init__()
        self.backbone = EfficientViTBackbone(backbone, mixer)
        self.head = SegHead(tuple(backbone.widths[2:]), head, _ACTS[backbone.act], backbone.bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class MixerBlock(nn.Module):
    """One token mixer alone (plus its residual), the unit of the block-level benchmark."""

    def __init__(self, mixer: str, channels: int, head_dim: int) -> None:
        super().__init__()
        self.context = Residual(build_mixer(mixer, channels, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.context(x)


# ----------------------------------------------------------------------------------------------------------------
# Config tables

BACKBONES: dict[str, BackboneCfg] = {
    "b0": BackboneCfg(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16),
    "b1": BackboneCfg(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16),
    "b2": BackboneCfg(widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32),
    "b3": BackboneCfg(widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32),
    **{name: BackboneCfg(widths=(32, 64, 128, 256, 512), depths=depths, head_dim=32,
                         blocks=("res", "fmb", "fmb", "mb", "att"), expands=(1, 4, 4, 4, 6),
                         down_expands=(1, 16, 16, 16, 24), fewer_norm=(False, False, False, True, True),
                         act="gelu", bn_eps=1e-7, depth_counts_down=False)
       for name, depths in (("l1", (1, 1, 1, 6, 6)), ("l2", (1, 2, 2, 8, 8)))},
}

HEADS: dict[tuple[str, str], HeadCfg] = {
    ("b0", "cityscapes"): HeadCfg(32, 1, 19, 4),
    ("b1", "cityscapes"): HeadCfg(64, 3, 19, 4),
    ("b1", "ade20k"): HeadCfg(64, 3, 150, None),
    ("b2", "cityscapes"): HeadCfg(96, 3, 19, 4),
    ("b2", "ade20k"): HeadCfg(96, 3, 150, None),
    ("b3", "cityscapes"): HeadCfg(128, 3, 19, 4),
    ("b3", "ade20k"): HeadCfg(128, 3, 150, None),
    ("l1", "cityscapes"): HeadCfg(256, 3, 19, None, middle="fmb", expand=1),
    ("l1", "ade20k"): HeadCfg(128, 3, 150, 8, middle="fmb", expand=4),
    ("l2", "cityscapes"): HeadCfg(256, 5, 19, None, middle="fmb", expand=1),
    ("l2", "ade20k"): HeadCfg(128, 3, 150, 8, middle="fmb", expand=4),
}

BLOCK_CHANNELS, BLOCK_HEAD_DIM, BLOCK_STRIDE = 128, 16, 16  # EfficientViT-B1 stage 3


def efficientvit_seg(size: str, dataset: str = "cityscapes", mixer: str = "msla") -> EfficientViTSeg:
    return EfficientViTSeg(BACKBONES[size], HEADS[(size, dataset)], mixer)


def mixer_block(mixer: str) -> MixerBlock:
    return MixerBlock(mixer, BLOCK_CHANNELS, BLOCK_HEAD_DIM)


# ----------------------------------------------------------------------------------------------------------------
# Registered models

# EfficientViT-Seg as published: name -> (size, dataset)
EFFICIENTVIT_SEG: dict[str, tuple[str, str]] = {
    "efficientvit-seg-b0-cityscapes": ("b0", "cityscapes"),
    "efficientvit-seg-b1-cityscapes": ("b1", "cityscapes"),
    "efficientvit-seg-b1-ade20k": ("b1", "ade20k"),
    "efficientvit-seg-b2-cityscapes": ("b2", "cityscapes"),
    "efficientvit-seg-b2-ade20k": ("b2", "ade20k"),
    "efficientvit-seg-b3-cityscapes": ("b3", "cityscapes"),
    "efficientvit-seg-b3-ade20k": ("b3", "ade20k"),
    "efficientvit-seg-l1-cityscapes": ("l1", "cityscapes"),
    "efficientvit-seg-l1-ade20k": ("l1", "ade20k"),
    "efficientvit-seg-l2-cityscapes": ("l2", "cityscapes"),
    "efficientvit-seg-l2-ade20k": ("l2", "ade20k"),
}

# The mixer variants: EfficientViT-Seg-BX (Cityscapes head) with another token mixer in stages 3-4.
# name -> (size, mixer); each size lists the mixers in models.mixers.MIXERS order.
EVIT_VARIANTS: dict[str, tuple[str, str]] = {
    "evit-b0:softmax": ("b0", "softmax"),
    "evit-b0:large-kernel": ("b0", "large-kernel"),
    "evit-b0:relu-linear": ("b0", "relu-linear"),
    "evit-b0:msla": ("b0", "msla"),
    "evit-b1:softmax": ("b1", "softmax"),
    "evit-b1:large-kernel": ("b1", "large-kernel"),
    "evit-b1:relu-linear": ("b1", "relu-linear"),
    "evit-b1:msla": ("b1", "msla"),
    "evit-b2:softmax": ("b2", "softmax"),
    "evit-b2:large-kernel": ("b2", "large-kernel"),
    "evit-b2:relu-linear": ("b2", "relu-linear"),
    "evit-b2:msla": ("b2", "msla"),
    "evit-b3:softmax": ("b3", "softmax"),
    "evit-b3:large-kernel": ("b3", "large-kernel"),
    "evit-b3:relu-linear": ("b3", "relu-linear"),
    "evit-b3:msla": ("b3", "msla"),
}

# One mixer alone, the unit of the block-level benchmark: name -> mixer
MIXER_BLOCKS: dict[str, str] = {
    "block:softmax": "softmax",
    "block:large-kernel": "large-kernel",
    "block:relu-linear": "relu-linear",
    "block:msla": "msla",
}

_ORIN, _NANO = "Jetson AGX Orin, TensorRT fp16", "Jetson Nano, TensorRT fp16"
_SRC = "EfficientViT (ICCV 2023), Table: semantic segmentation"
PUBLISHED: dict[str, Published] = {
    "efficientvit-seg-b0-cityscapes": Published(0.7, 4.4, {_ORIN: 9.9, _NANO: 275}, 75.7, _SRC),
    "efficientvit-seg-b1-cityscapes": Published(4.8, 25, {_ORIN: 24.3, _NANO: 819}, 80.5, _SRC),
    "efficientvit-seg-b2-cityscapes": Published(15, 74, {_ORIN: 46.5, _NANO: 1676}, 82.1, _SRC),
    "efficientvit-seg-b3-cityscapes": Published(40, 179, {_ORIN: 81.8, _NANO: 3192}, 83.0, _SRC),
    "efficientvit-seg-b1-ade20k": Published(4.8, 3.1, {_ORIN: 4.0, _NANO: 110}, 42.8, _SRC),
    "efficientvit-seg-b2-ade20k": Published(15, 9.1, {_ORIN: 7.3, _NANO: 212}, 45.9, _SRC),
    "efficientvit-seg-b3-ade20k": Published(39, 22, {_ORIN: 12.5, _NANO: 411}, 49.0, _SRC),
}


def _register() -> None:
    for name, (size, dataset) in EFFICIENTVIT_SEG.items():
        register_model(name, family="efficientvit", mixer="msla", dataset=dataset, out_stride=8, size_multiple=32,
                       token_stride=32 if size.startswith("l") else 16, published=PUBLISHED.get(name),
                       description=f"EfficientViT-Seg-{size.upper()} with its {dataset} head, as published",
                       )(partial(efficientvit_seg, size, dataset))
    for name, (size, mixer) in EVIT_VARIANTS.items():
        register_model(name, family="evit-variant", mixer=mixer, dataset="cityscapes", out_stride=8,
                       size_multiple=32, token_stride=16,
                       description=f"EfficientViT-Seg-{size.upper()} macro architecture with {mixer} token mixers "
                                   f"in stages 3-4")(partial(efficientvit_seg, size, "cityscapes", mixer))
    for name, mixer in MIXER_BLOCKS.items():
        register_model(name, family="block", mixer=mixer, input_size=(1024, 2048), num_classes=0,
                       out_stride=BLOCK_STRIDE, in_channels=BLOCK_CHANNELS, input_stride=BLOCK_STRIDE,
                       size_multiple=BLOCK_STRIDE, token_stride=BLOCK_STRIDE,
                       description=f"one residual {mixer} mixer at EfficientViT-B1 stage-3 width {BLOCK_CHANNELS}, "
                                   f"head dim {BLOCK_HEAD_DIM}, fed the stride-{BLOCK_STRIDE} map of the image",
                       )(partial(mixer_block, mixer))


_register()
