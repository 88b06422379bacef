"""SegFormer (Xie et al., NeurIPS 2021): MiT encoder + all-MLP decoder.

The softmax-attention baseline of the benchmark. Global context comes from plain softmax attention whose keys and
values are spatially reduced by an R x R stride-R conv (R = 8, 4, 2, 1 per stage), so attention still costs
O(N^2 / R^2): quadratic in the token count, which is what makes it slow at 1024x2048.

Layout follows the official code (and mmseg / HuggingFace): tokens are kept as (B, N, C) inside a stage, LayerNorm
everywhere in the encoder, one `q` and one `kv` linear per attention. Parameter names differ from HuggingFace's;
`tests/test_segformer.py` maps HF's state dict onto this model and checks the outputs match.

MAC counting: the attention uses `F.scaled_dot_product_attention` (fast path). On the `meta` device it decomposes
into two `bmm`s that `FlopCounterMode` counts; on real CPU tensors the fused kernel is invisible to the counter.
Set `fused_attn=False` for the explicit matmul form (identical function, always counted).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ConvNormAct, FeaturePyramid
from models.registry import DATASETS, Published, register_model

__all__ = ["SegFormer", "MixVisionTransformer", "SegFormerHead", "segformer", "SEGFORMER_CFGS"]


class OverlapPatchEmbed(nn.Module):
    """Strided conv with kernel > stride (patches overlap, which keeps local continuity), then LayerNorm."""

    def __init__(self, in_chs: int, dim: int, patch_size: int, stride: int, ln_eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim, eps=ln_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class SpatialReductionAttention(nn.Module):
    """Softmax attention whose keys/values come from an R x R stride-R conv + LayerNorm of the input.

    Queries keep all N tokens; keys/values have N / R^2, so the cost is 2 N^2 C / R^2 for the two attention matmuls
    plus 3 N C^2 + 2 N C^2 / R^2 for the projections (R = 1: plain multi-head softmax attention).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, ln_eps: float, fused_attn: bool = True) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} not divisible by heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=ln_eps)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear. The depthwise conv replaces positional encodings."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MixFFN(LN(x)). No drop-path: inference only."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, ln_eps: float,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, ln_eps, fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class MiTStage(nn.Module):
    """Overlapping patch embed (downsample), `depth` blocks, final LayerNorm; returns a (B, C, H, W) map."""

    def __init__(self, in_chs: int, dim: int, depth: int, num_heads: int, sr_ratio: int, mlp_ratio: int,
                 patch_size: int, stride: int, ln_eps: float, fused_attn: bool = True) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_chs, dim, patch_size, stride, ln_eps)
        self.blocks = nn.ModuleList(
            [MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, ln_eps, fused_attn) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x, h, w)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixVisionTransformer(FeaturePyramid):
    """MiT encoder: four stages at strides 4, 8, 16, 32 (patch 7x7/4, then 3x3/2); returns all four maps."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...], num_heads: tuple[int, ...] = (1, 2, 5, 8),
                 sr_ratios: tuple[int, ...] = (8, 4, 2, 1), mlp_ratio: int = 4, in_chans: int = 3,
                 ln_eps: float = 1e-6, fused_attn: bool = True) -> None:
        super().__init__()
        stages = []
        prev = in_chans
        for i, (dim, depth, heads, sr) in enumerate(zip(dims, depths, num_heads, sr_ratios)):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stages.append(MiTStage(prev, dim, depth, heads, sr, mlp_ratio, patch, stride, ln_eps, fused_attn))
            prev = dim
        self.stages = nn.ModuleList(stages)


class SegFormerHead(nn.Module):
    """All-MLP decoder: per-stage linear to E, bilinear upsample to stride 4, concat, 1x1 fuse + BN + ReLU, classify.

    The per-stage "linear" is written as a 1x1 conv (same function and MACs, no token reshapes).
    Concatenation order is deepest stage first, as upstream (matters only for loading weights).
    """

    def __init__(self, in_dims: tuple[int, ...], embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList([nn.Conv2d(d, embed_dim, 1) for d in in_dims])
        # conv + BN + ReLU as one ConvNormAct so that conv+BN folding (models.deploy) finds the pair
        self.fuse = ConvNormAct(embed_dim * len(in_dims), embed_dim, 1, act=functools.partial(nn.ReLU, inplace=True))
        self.cls = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        outs = []
        for f, lin in zip(feats, self.linear_c):
            f = lin(f)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            outs.append(f)
        x = self.fuse(torch.cat(outs[::-1], dim=1))
        return self.cls(x)


class SegFormer(nn.Module):
    """(B, 3, H, W) image -> (B, classes, H/4, W/4) logits. H, W multiples of 32."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...], decoder_dim: int, num_classes: int,
                 num_heads: tuple[int, ...] = (1, 2, 5, 8), sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
                 mlp_ratio: int = 4, in_chans: int = 3, ln_eps: float = 1e-6, fused_attn: bool = True) -> None:
        super().__init__()
        self.encoder = MixVisionTransformer(dims, depths, num_heads, sr_ratios, mlp_ratio, in_chans, ln_eps,
                                            fused_attn)
        self.decode_head = SegFormerHead(dims, decoder_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.encoder(x))


# dims, depths, decoder embed dim E (heads 1,2,5,8 and sr 8,4,2,1 for every size).
SEGFORMER_CFGS: dict[str, dict] = {
    "b0": dict(dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": dict(dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": dict(dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_dim=768),
}


def segformer(variant: str, num_classes: int, **kwargs) -> SegFormer:
    """Build SegFormer-`variant` (b0/b1/b2) with seeded-random weights, in eval mode."""
    cfg = dict(SEGFORMER_CFGS[variant])
    cfg.update(kwargs)
    return SegFormer(num_classes=num_classes, **cfg).eval()


# Registered models: name -> (variant, dataset)
SEGFORMER_MODELS: dict[str, tuple[str, str]] = {
    "segformer-b0-ade20k": ("b0", "ade20k"),
    "segformer-b0-cityscapes": ("b0", "cityscapes"),
    "segformer-b1-ade20k": ("b1", "ade20k"),
    "segformer-b1-cityscapes": ("b1", "cityscapes"),
    "segformer-b2-ade20k": ("b2", "ade20k"),
    "segformer-b2-cityscapes": ("b2", "cityscapes"),
}

# Published params (once per model) and MACs (per dataset resolution): docs/published-numbers (SegFormer paper,
# EfficientViT paper; Orin latency read off the EfficientViT chart, Cityscapes 1024x2048).
_SRC = "SegFormer paper / EfficientViT paper"
_HEAD150 = "published params and MACs were counted with the 150-class head"
_ORIN = "Jetson AGX Orin, Cityscapes 1024x2048 (read off chart, approx.)"
_PUBLISHED: dict[str, Published] = {
    "segformer-b0-ade20k": Published(params_m=3.8, macs_g=8.4, source=_SRC),
    "segformer-b0-cityscapes": Published(counted_as="segformer-b0-ade20k", note=_HEAD150, params_m=3.8,
                                         macs_g=125.5, source=_SRC, latency_ms={_ORIN: 107.0}),
    "segformer-b1-ade20k": Published(params_m=13.7, macs_g=15.9, source=_SRC),
    "segformer-b1-cityscapes": Published(counted_as="segformer-b1-ade20k", note=_HEAD150, params_m=13.7,
                                         macs_g=243.7, source=_SRC, latency_ms={_ORIN: 146.0}),
}


def _register() -> None:
    for name, (variant, dataset) in SEGFORMER_MODELS.items():
        register_model(name, family="segformer", mixer="softmax-sr", dataset=dataset, out_stride=4,
                       size_multiple=32, token_stride=4, published=_PUBLISHED.get(name),
                       description=f"SegFormer-{variant.upper()} (MiT-{variant.upper()} + all-MLP decoder, softmax "
                                   f"attention with spatial reduction 8/4/2/1), {dataset} head, logits at stride 4",
                       )(functools.partial(segformer, variant, num_classes=DATASETS[dataset][0]))


_register()
