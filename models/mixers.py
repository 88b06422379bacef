"""The four token mixers the suite compares, each (B, C, H, W) -> (B, C, H, W).

They share one constructor shape, `Mixer(channels, head_dim, **options)`, and one output projection
(1x1 conv + BN, as in EfficientViT's LiteMLA), so swapping one for another inside a model changes the token
mixing and nothing else:

- `SoftmaxAttention`: multi-head softmax attention over all H*W tokens. Global, quadratic in tokens.
  (SegFormer's spatial-reduction form is `models.segformer.SpatialReductionAttention`.)
- `LargeKernelAttention`: SegNeXt's multi-scale convolutional attention (5x5 depthwise + strip pairs 7/11/21,
  1x1, gating). Local but large receptive field.
- `ReLULinearAttention`: ReLU linear attention, linear in tokens through associativity.
- `MultiScaleLinearAttention` (MSLA): EfficientViT's LiteMLA: ReLU linear attention over the qkv tokens and
  their 5x5-aggregated multi-scale copies (2x heads).

MAC formulas of each (N tokens, d channels, h head dim) are in ../shared/reference/architectures.md and are
checked against FlopCounterMode in tests/test_mixers.py.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ConvNormAct

def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    # autocast has no meta device (MAC counting builds models there); there is nothing to switch off.
    return contextlib.nullcontext() if device_type == "meta" else torch.autocast(device_type, enabled=False)


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_j relu(q_i).relu(k_j) v_j / (sum_j relu(q_i).relu(k_j) + eps) in O(N d^2), via associativity.

    q, k, v: (B, heads, N, d), ReLU not yet applied. V is padded with a column of ones so that one matmul
    gives numerator and denominator. The matmuls and the division run in fp32 even under autocast: the
    denominator is a sum over all N tokens and overflows fp16 at high resolution.
    """
    dtype = v.dtype
    with _autocast_off(v.device.type):
        q = F.relu(q.float())
        k = F.relu(k.float())
        v = F.pad(v.float(), (0, 1), mode="constant", value=1.0)
        kv = k.transpose(-1, -2) @ v  # (B, heads, d, d + 1)
        out = q @ kv  # (B, heads, N, d + 1)
        out = out[..., :-1] / (out[..., -1:] + eps)
    return out.to(dtype)


def _split_heads(qkv: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, heads*3*h, H, W) laid out [q k v] per head -> q, k, v of shape (B, heads, N, h)."""
    b, _, hgt, wid = qkv.shape
    qkv = qkv.reshape(b, -1, 3 * head_dim, hgt * wid).transpose(-1, -2)
    return qkv.chunk(3, dim=-1)


def _merge_heads(out: torch.Tensor, hgt: int, wid: int) -> torch.Tensor:
    """(B, heads, N, h) -> (B, heads*h, H, W)."""
    b = out.shape[0]
    return out.transpose(-1, -2).reshape(b, -1, hgt, wid)


class ReLULinearAttention(nn.Module):
    """Single-scale ReLU linear attention: qkv 1x1, linear attention per head, proj 1x1 + BN."""

    def __init__(self, channels: int, head_dim: int = 16, eps: float = 1e-5) -> None:
        super().__init__()
        self.head_dim, self.eps = head_dim, eps
        heads = channels // head_dim
        self.qkv = nn.Conv2d(channels, 3 * heads * head_dim, 1, bias=False)
        self.proj = ConvNormAct(heads * head_dim, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, hgt, wid = x.shape
        q, k, v = _split_heads(self.qkv(x), self.head_dim)
        return self.proj(_merge_heads(relu_linear_attention(q, k, v, self.eps), hgt, wid))


class MultiScaleLinearAttention(nn.Module):
    """EfficientViT's MSLA: qkv, then per scale a kxk depthwise + grouped 1x1 (one group per head's q, k or v)
    aggregation; the aggregated tokens are concatenated as extra heads; ReLU linear attention; proj + BN."""

    def __init__(self, channels: int, head_dim: int = 16, scales: tuple[int, ...] = (5,), eps: float = 1e-5) -> None:
        super().__init__()
        self.head_dim, self.eps = head_dim, eps
        heads = channels // head_dim
        total = heads * head_dim
        self.qkv = nn.Conv2d(channels, 3 * total, 1, bias=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvNormAct(total * (1 + len(scales)), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, hgt, wid = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [agg(qkv) for agg in self.aggreg], dim=1)
        q, k, v = _split_heads(qkv, self.head_dim)
        return self.proj(_merge_heads(relu_linear_attention(q, k, v, self.eps), hgt, wid))


class SoftmaxAttention(nn.Module):
    """Multi-head softmax attention over all tokens: qkv 1x1, softmax(QK^T/sqrt(h))V, proj 1x1 + BN."""

    def __init__(self, channels: int, head_dim: int = 16) -> None:
        super().__init__()
        self.head_dim = head_dim
        total = channels // head_dim * head_dim
        self.qkv = nn.Conv2d(channels, 3 * total, 1, bias=False)
        self.proj = ConvNormAct(total, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, hgt, wid = x.shape
        q, k, v = _split_heads(self.qkv(x), self.head_dim)
        # Head dim last and contiguous: without it SDPA on the CPU silently takes the math path, which holds the
        # N x N scores in memory and is several times slower than the flash kernel (the fair softmax baseline).
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        return self.proj(_merge_heads(out, hgt, wid))


class MSCA(nn.Module):
    """SegNeXt's multi-scale convolutional attention: 5x5 depthwise, plus strip pairs (1xk then kx1, depthwise)
    for k in 7, 11, 21, summed, 1x1, then multiplied with the input (gating)."""

    def __init__(self, channels: int, strips: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        c = channels
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.strips = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c),
                          nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c))
            for k in strips
        )
        self.conv3 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv0(x)
        attn = attn + sum(s(attn) for s in self.strips)
        return self.conv3(attn) * x


class LargeKernelAttention(nn.Module):
    """SegNeXt's attention (1x1, GELU, MSCA, 1x1) as a token mixer, with the common output BN.

    head_dim is accepted for the common constructor shape and unused: convolutions have no heads.
    """

    def __init__(self, channels: int, head_dim: int = 16, strips: tuple[int, ...] = (7, 11, 21)) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.msca = MSCA(channels, strips)
        self.proj = ConvNormAct(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.msca(self.act(self.proj_1(x))))


_MIXER_CLASSES: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxAttention,
    "large-kernel": LargeKernelAttention,
    "relu-linear": ReLULinearAttention,
    "msla": MultiScaleLinearAttention,
}
MIXERS = tuple(_MIXER_CLASSES)  # the mixer names; the registry lists each model's variants in this order


def build_mixer(name: str, channels: int, head_dim: int = 16, **options) -> nn.Module:
    """A token mixer by name (one of MIXERS) with the common constructor shape."""
    if name not in _MIXER_CLASSES:
        raise ValueError(f"unknown mixer {name!r}; valid: {', '.join(MIXERS)}")
    return _MIXER_CLASSES[name](channels, head_dim, **options)
