"""SegNeXt (Guo et al., NeurIPS 2022): MSCAN encoder + LightHamHead decoder.

The large-kernel-convolution baseline of the benchmark: a large receptive field from multi-branch depthwise
convolutions (5x5, then strips 7, 11, 21) used as a multiplicative gate (MSCA), BatchNorm everywhere in the
encoder. The decoder fuses stages 2-4 at stride 8 and takes global context from a low-rank NMF ("Hamburger").

Layout follows mmsegmentation's `MSCAN` / `LightHamHead` (GroupNorm(32) in the head, LayerNorm after each stage).
MSCA itself (5x5 dw, strip pairs on its output, sum, 1x1, gate) is `models.mixers.MSCA`, shared with the
`large-kernel` token mixer so the benchmark's block and the reference model run the same operator.

Determinism: upstream draws a fresh random NMF basis on every forward (`torch.rand`), so two runs of the same image
differ. Here the initial basis is drawn once, at construction, from a generator seeded with `nmf_seed`, and kept as
a (non-persistent) buffer: every forward, on every device, starts from the same basis and gives the same output.
Same cost as upstream (the draw itself is not a conv or matmul).

MAC counting: the NMF's 7 multiplicative-update steps are batched matmuls (`bmm`) and FlopCounterMode counts them;
mmseg's module-hook counter (which produced the published figures) does not see them. See `tests/test_segnext.py`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import FeaturePyramid
from models.mixers import MSCA
from models.registry import DATASETS, Published, register_model

__all__ = ["SegNeXt", "MSCAN", "LightHamHead", "NMF2D", "segnext", "SEGNEXT_CFGS"]


class StemConv(nn.Module):
    """Two 3x3 stride-2 convs (3 -> C/2 -> C), BN after each, GELU between: stride 4."""

    def __init__(self, in_chs: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chs, dim // 2, 3, 2, 1), nn.BatchNorm2d(dim // 2), nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, 2, 1), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """3x3 stride-2 conv + BN between stages."""

    def __init__(self, in_chs: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class SpatialAttention(nn.Module):
    """1x1, GELU, MSCA (large-kernel gate), 1x1, with its own shortcut (as upstream)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.msca = MSCA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj_2(self.msca(self.act(self.proj_1(x))))


class ConvMlp(nn.Module):
    """1x1 expand, 3x3 depthwise, GELU, 1x1 project (all with bias)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class MSCABlock(nn.Module):
    """x + ls1 * attn(BN(x)), then x + ls2 * mlp(BN(x)); layer scales initialised to 1e-2 as upstream."""

    def __init__(self, dim: int, mlp_ratio: int, layer_scale_init: float = 1e-2) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, dim * mlp_ratio)
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.attn(self.norm1(x))
        return x + self.layer_scale_2 * self.mlp(self.norm2(x))


class MSCANStage(nn.Module):
    """Downsample (stem or patch embed), `depth` MSCA blocks, LayerNorm over channels (upstream uses LN here)."""

    def __init__(self, downsample: nn.Module, dim: int, depth: int, mlp_ratio: int) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*[MSCABlock(dim, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.downsample(x))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MSCAN(FeaturePyramid):
    """MSCAN encoder: stages at strides 4, 8, 16, 32; returns all four maps."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...], mlp_ratios: tuple[int, ...] = (8, 8, 4, 4),
                 in_chans: int = 3) -> None:
        super().__init__()
        stages = []
        for i, (dim, depth, ratio) in enumerate(zip(dims, depths, mlp_ratios)):
            down = StemConv(in_chans, dim) if i == 0 else OverlapPatchEmbed(dims[i - 1], dim)
            stages.append(MSCANStage(down, dim, depth, ratio))
        self.stages = nn.ModuleList(stages)


class NMF2D(nn.Module):
    """Non-negative matrix factorisation X ~ B C^T (X: D x N, rank R) by multiplicative updates, no parameters.

    Inference runs `steps` (7, upstream's eval_steps) updates of coef and bases, one more coef update, then
    reconstructs. The initial basis is a fixed buffer (seeded draw at construction, L2-normalised over D) instead of
    upstream's fresh `torch.rand` per forward, so the output is deterministic. Cost per step: 2NDR + 2NR^2 + 2DR^2.
    """

    def __init__(self, channels: int, rank: int, steps: int = 7, inv_t: float = 1.0, seed: int = 0,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.rank, self.steps, self.inv_t, self.eps = rank, steps, inv_t, eps
        g = torch.Generator(device="cpu").manual_seed(seed)
        bases = F.normalize(torch.rand(1, channels, rank, generator=g, device="cpu"), dim=1)
        self.register_buffer("bases", bases, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_flat = x.reshape(b, c, h * w)  # (B, D, N)
        bases = self.bases.to(device=x.device, dtype=x.dtype).expand(b, -1, -1)  # (B, D, R)
        coef = torch.softmax(self.inv_t * torch.bmm(x_flat.transpose(1, 2), bases), dim=-1)  # (B, N, R)
        for _ in range(self.steps):
            coef = self._update_coef(x_flat, bases, coef)
            num = torch.bmm(x_flat, coef)  # (B, D, R)
            den = bases.bmm(coef.transpose(1, 2).bmm(coef))
            bases = bases * num / (den + self.eps)
        coef = self._update_coef(x_flat, bases, coef)
        return torch.bmm(bases, coef.transpose(1, 2)).reshape(b, c, h, w)

    def _update_coef(self, x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        num = torch.bmm(x.transpose(1, 2), bases)  # (B, N, R)
        den = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * num / (den + self.eps)


class ConvGNReLU(nn.Sequential):
    """1x1 conv (no bias) + GroupNorm(32) + optional ReLU: mmseg's ConvModule with the head's GN config."""

    def __init__(self, in_chs: int, out_chs: int, act: bool = True) -> None:
        super().__init__(nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.GroupNorm(32, out_chs),
                         *([nn.ReLU(inplace=True)] if act else []))


class Hamburger(nn.Module):
    """relu(x + GN(conv(NMF(relu(conv(x)))))): global context from a rank-R reconstruction of the feature map."""

    def __init__(self, channels: int, rank: int, steps: int = 7, seed: int = 0) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.ham = NMF2D(channels, rank, steps, seed=seed)
        self.ham_out = ConvGNReLU(channels, channels, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ham_out(self.ham(F.relu(self.ham_in(x))))
        return F.relu(x + y)


class LightHamHead(nn.Module):
    """Stages 2-4 upsampled (bilinear) to stride 8, concat, squeeze 1x1, Hamburger, align 1x1, classify (stride 8)."""

    def __init__(self, in_dims: tuple[int, ...], ham_channels: int, channels: int, rank: int, num_classes: int,
                 steps: int = 7, seed: int = 0) -> None:
        super().__init__()
        self.squeeze = ConvGNReLU(sum(in_dims), ham_channels)
        self.hamburger = Hamburger(ham_channels, rank, steps, seed)
        self.align = ConvGNReLU(ham_channels, channels)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        x = torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear",
                                                                     align_corners=False) for f in feats], dim=1)
        return self.cls(self.align(self.hamburger(self.squeeze(x))))


class SegNeXt(nn.Module):
    """(B, 3, H, W) image -> (B, classes, H/8, W/8) logits. H, W multiples of 32."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...], head_channels: int, rank: int,
                 num_classes: int, mlp_ratios: tuple[int, ...] = (8, 8, 4, 4), nmf_steps: int = 7,
                 nmf_seed: int = 0, in_chans: int = 3) -> None:
        super().__init__()
        self.encoder = MSCAN(dims, depths, mlp_ratios, in_chans)
        self.decode_head = LightHamHead(tuple(dims[1:]), head_channels, head_channels, rank, num_classes,
                                        nmf_steps, nmf_seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.encoder(x)[1:])


# dims, depths; head channels (= ham channels) and NMF rank from the upstream configs.
SEGNEXT_CFGS: dict[str, dict] = {
    "t": dict(dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), head_channels=256, rank=16),
    "s": dict(dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), head_channels=256, rank=16),
    "b": dict(dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), head_channels=512, rank=64),
}


def segnext(variant: str, num_classes: int, **kwargs) -> SegNeXt:
    """Build SegNeXt-`variant` (t/s/b) with seeded-random weights and a fixed NMF basis, in eval mode."""
    cfg = dict(SEGNEXT_CFGS[variant])
    cfg.update(kwargs)
    return SegNeXt(num_classes=num_classes, **cfg).eval()


# Registered models: name -> (variant, dataset)
SEGNEXT_MODELS: dict[str, tuple[str, str]] = {
    "segnext-t-ade20k": ("t", "ade20k"),
    "segnext-t-cityscapes": ("t", "cityscapes"),
    "segnext-s-ade20k": ("s", "ade20k"),
    "segnext-s-cityscapes": ("s", "cityscapes"),
    "segnext-b-ade20k": ("b", "ade20k"),
    "segnext-b-cityscapes": ("b", "cityscapes"),
}

_SRC = "SegNeXt paper / EfficientViT paper"
_ORIN = "Jetson AGX Orin, Cityscapes 1024x2048 (read off chart, approx.)"
_PUBLISHED: dict[str, Published] = {
    "segnext-t-ade20k": Published(params_m=4.3, macs_g=6.6, source=_SRC),
    "segnext-t-cityscapes": Published(params_m=4.3, macs_g=50.5, latency_ms={_ORIN: 93.0}, source=_SRC),
    "segnext-s-ade20k": Published(params_m=13.9, macs_g=15.9, source=_SRC),
    "segnext-s-cityscapes": Published(params_m=13.9, macs_g=124.6, latency_ms={_ORIN: 127.0}, source=_SRC),
}


def _register() -> None:
    for name, (variant, dataset) in SEGNEXT_MODELS.items():
        register_model(name, family="segnext", mixer="large-kernel", dataset=dataset, out_stride=8,
                       size_multiple=32, token_stride=4, published=_PUBLISHED.get(name),
                       description=f"SegNeXt-{variant.upper()} (MSCAN-{variant.upper()}: large-kernel conv attention "
                                   f"5/7/11/21 + LightHamHead with NMF, fixed seeded basis), {dataset} head, logits "
                                   f"at stride 8",
                       )(functools.partial(segnext, variant, num_classes=DATASETS[dataset][0]))


_register()
