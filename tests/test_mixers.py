"""Token mixers against independent oracles: the explicit quadratic forms, timm's LiteMLA, and the MAC formulas."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnstats import randomise_bn
from models.complexity import count_model_macs
from models.mixers import (MSCA, LargeKernelAttention, MultiScaleLinearAttention, ReLULinearAttention,
                           SoftmaxAttention, build_mixer, relu_linear_attention)


def fresh_seed() -> int:
    """A new seed every run (inputs are fresh), printed on failure through the assertion messages."""
    return int.from_bytes(os.urandom(4), "little")


def quadratic_relu_attention(q, k, v, eps):
    """The explicit O(N^2) form, in float64: normalised relu(Q) relu(K)^T V."""
    q, k, v = F.relu(q.double()), F.relu(k.double()), v.double()
    a = q @ k.transpose(-1, -2)  # (B, h, N, N)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("n", [1, 3, 16, 64, 1000])
@pytest.mark.parametrize("d", [8, 16, 32])
def test_relu_linear_equals_quadratic_form(n, d):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, d, generator=g) for _ in range(3))
    out = relu_linear_attention(q, k, v, eps=1e-5)
    ref = quadratic_relu_attention(q, k, v, 1e-5)
    rel = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    assert out.dtype == torch.float32 and out.shape == (2, 3, n, d)
    assert rel < 1e-5, f"seed {seed}: relative error {rel:.2e}"


def test_relu_linear_attention_keeps_fp32_island_under_fp16_autocast():
    # N = 8192 tokens of large activations: the normaliser (a sum over N) is far beyond fp16's 65504.
    g = torch.Generator().manual_seed(fresh_seed())
    q, k, v = (40 * torch.rand(1, 2, 8192, 16, generator=g) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.float16):
        out = relu_linear_attention(q.half(), k.half(), v.half(), eps=1e-5)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    ref = quadratic_relu_attention(q.half().float(), k.half().float(), v.half().float(), 1e-5)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-3


def copy_litemla_weights(ours: nn.Module, timm_mla: nn.Module) -> None:
    """Map timm's LiteMLA parameters onto ours (qkv.conv, aggreg, proj.conv/norm)."""
    sd = {}
    for key, val in timm_mla.state_dict().items():
        sd[key.replace("qkv.conv.", "qkv.")] = val
    missing, unexpected = ours.load_state_dict(sd, strict=True)
    assert not missing and not unexpected


@pytest.mark.parametrize("channels,dim,hw", [(64, 16, (8, 8)), (128, 16, (16, 24)), (96, 32, (4, 4)),
                                             (64, 16, (1, 3))])
@pytest.mark.parametrize("scales", [(5,), ()])
def test_msla_and_relu_linear_equal_timm_litemla(channels, dim, hw, scales):
    efficientvit_mit = pytest.importorskip("timm.models.efficientvit_mit")
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ref = efficientvit_mit.LiteMLA(channels, channels, dim=dim, scales=scales, eps=1e-5).eval()
    ours = (MultiScaleLinearAttention(channels, dim, scales=scales, eps=1e-5) if scales
            else ReLULinearAttention(channels, dim, eps=1e-5)).eval()
    randomise_bn(ref, g)
    copy_litemla_weights(ours, ref)
    x = torch.randn(2, channels, *hw, generator=g)
    with torch.no_grad():
        y, y_ref = ours(x), ref(x)
    rel = ((y - y_ref).norm() / y_ref.norm()).item()
    assert rel < 1e-5, f"seed {seed}: relative error {rel:.2e}"


def test_softmax_equals_naive_softmax_attention():
    # SegFormer's spatial-reduction form is tested in tests/test_segformer.py
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, h, hgt, wid = 64, 16, 8, 12
    mixer = SoftmaxAttention(c, h).eval()
    x = torch.randn(2, c, hgt, wid, generator=g)

    # The naive form from the module's own weights: softmax(Q K^T / sqrt(h)) V per head, then proj.
    qkv = mixer.qkv(x).flatten(2).reshape(2, -1, 3 * h, hgt * wid).transpose(-1, -2)
    q, k, v = qkv[..., :h], qkv[..., h:2 * h], qkv[..., 2 * h:]
    a = torch.softmax((q.double() @ k.double().transpose(-1, -2)) / h ** 0.5, dim=-1)
    out = (a @ v.double()).float().transpose(-1, -2).reshape(2, c, hgt, wid)
    with torch.no_grad():
        ref = mixer.proj(out)
        y = mixer(x)
    rel = ((y - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, f"seed {seed}: relative error {rel:.2e}"


def test_msca_strip_pairs_equal_their_outer_product_kernel():
    """A 1xk then kx1 depthwise pair is one kxk depthwise conv with the outer-product kernel (bias aside)."""
    g = torch.Generator().manual_seed(fresh_seed())
    c = 8
    msca = MSCA(c).eval()
    x = torch.randn(1, c, 32, 32, generator=g)
    for pair in msca.strips:
        row, col = pair[0], pair[1]
        k = row.kernel_size[1]
        kernel = col.weight[:, :, :, 0].unsqueeze(-1) * row.weight[:, :, 0, :].unsqueeze(-2)  # (c, 1, k, k)
        # bias of the row conv passes through the column conv as sum(col weight) * bias (zero padding aside):
        with torch.no_grad():
            y = pair(x)
            ref = F.conv2d(x, kernel, padding=k // 2, groups=c) + col.bias.view(1, c, 1, 1)
            ref = ref + F.conv2d(torch.ones_like(x) * row.bias.view(1, c, 1, 1),
                                 col.weight, padding=(k // 2, 0), groups=c)
        assert torch.allclose(y, ref, atol=1e-5, rtol=1e-4)


def _formula(mixer: str, n: int, d: int, h: int) -> int:
    """The mixer MAC formulas of the reference (architectures.md)."""
    return {
        "softmax": 4 * n * d * d + 2 * n * n * d,
        "large-kernel": 3 * n * d * d + 103 * n * d,
        "relu-linear": 4 * n * d * d + 2 * n * d * (h + 1),
        "msla": 5 * n * d * d + 75 * n * d + 3 * n * d * h + 4 * n * d * (h + 1),
    }[mixer]


@pytest.mark.parametrize("mixer", ["softmax", "large-kernel", "relu-linear", "msla"])
@pytest.mark.parametrize("d,h", [(64, 16), (128, 16), (256, 32)])
@pytest.mark.parametrize("hw", [(8, 8), (32, 64), (128, 256)])
def test_mixer_macs_match_reference_formulas(mixer, d, h, hw):
    with torch.device("meta"):
        m = build_mixer(mixer, d, h).eval()
    x = torch.empty(1, d, *hw, device="meta")
    assert count_model_macs(m, x) == _formula(mixer, hw[0] * hw[1], d, h)


def test_every_mixer_has_the_common_constructor_and_shape():
    x = torch.randn(2, 64, 6, 10)
    for name, cls in [("softmax", SoftmaxAttention), ("large-kernel", LargeKernelAttention),
                      ("relu-linear", ReLULinearAttention), ("msla", MultiScaleLinearAttention)]:
        m = build_mixer(name, 64, 16).eval()
        assert isinstance(m, cls)
        with torch.no_grad():
            assert m(x).shape == x.shape
    with pytest.raises(ValueError, match="valid: softmax, large-kernel, relu-linear, msla"):
        build_mixer("linear", 64)


def test_softmax_mixer_takes_the_flash_kernel_on_cpu():
    """The fair softmax baseline: with the math path excluded, the forward must still run (flash kernel). With
    strided q/k/v (head dim not contiguous) SDPA silently falls back to the math path: N^2 memory, several x slower."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.randn(1, 64, 16, 16)
    m = SoftmaxAttention(64, 16).eval()
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        assert m(x).shape == x.shape
