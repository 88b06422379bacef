"""SegFormer: published params/MACs, HuggingFace as an independent oracle (params, MACs, outputs), shapes.

Counting convention (models/complexity.py): MACs = FLOPs / 2 from FlopCounterMode on the meta device, conv +
matmul only, attention matmuls included.

What reproduces the published figures:
- ADE20K 512x512: our count (attention matmuls included) is within 0.2% of the published 8.4G / 15.9G.
- Cityscapes 1024x2048: the published 125.5G / 243.7G are reproduced (within 0.2%) only with a 150-class
  classifier, i.e. the authors counted the ADE20K head at the Cityscapes resolution. The real 19-class model is
  exactly 131 * 256 * (H/4) * (W/4) = 4.40G MACs smaller (120.96G / 239.13G: -3.6% / -1.9%). Likewise the
  published params (3.8M / 13.7M) are the 150-class model's; the 19-class model has 131 * (256 + 1) fewer.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.complexity import count_macs, count_model_macs, count_params
from models.registry import build_model, get_model_info, list_models
from models.segformer import SEGFORMER_CFGS, SpatialReductionAttention, segformer

PUBLISHED = {  # (variant, dataset) -> (params M, MACs G at the dataset's resolution)
    ("b0", "ade20k"): (3.8, 8.4), ("b0", "cityscapes"): (3.8, 125.5),
    ("b1", "ade20k"): (13.7, 15.9), ("b1", "cityscapes"): (13.7, 243.7),
}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def _meta_macs(model: torch.nn.Module, h: int, w: int) -> int:
    return count_model_macs(model, torch.empty(1, 3, h, w, device="meta"))


@pytest.mark.parametrize("variant,dataset", sorted(PUBLISHED))
def test_published_params_and_macs(variant: str, dataset: str) -> None:
    params_m, macs_g = PUBLISHED[(variant, dataset)]
    name = f"segformer-{variant}-{dataset}"
    info = get_model_info(name)
    assert info.published is not None and info.published.macs_g == macs_g and info.published.params_m == params_m
    h, w = info.input_size
    e = SEGFORMER_CFGS[variant]["decoder_dim"]
    with torch.device("meta"):
        ade_head = segformer(variant, num_classes=150)
    ours_macs = count_macs(name)
    ours_params = count_params(build_model_meta(name))
    if dataset == "ade20k":
        assert _rel(ours_macs / 1e9, macs_g) < 0.02, ours_macs
        assert _rel(ours_params / 1e6, params_m) < 0.02, ours_params
    else:
        # Published figures are the 150-class (ADE20K) head's; the 19-class model differs by exactly the classifier.
        ade_macs = _meta_macs(ade_head, h, w)
        assert _rel(ade_macs / 1e9, macs_g) < 0.02, ade_macs
        assert ade_macs - ours_macs == 131 * e * (h // 4) * (w // 4)
        assert _rel(count_params(ade_head) / 1e6, params_m) < 0.02
        assert count_params(ade_head) - ours_params == 131 * (e + 1)


def build_model_meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(name)


def test_fused_attention_is_counted_on_meta() -> None:
    """SDPA on meta decomposes into two bmm's that FlopCounterMode sees: same count as the explicit form."""
    with torch.device("meta"):
        fused, explicit = segformer("b0", 150), segformer("b0", 150, fused_attn=False)
    assert _meta_macs(fused, 256, 256) == _meta_macs(explicit, 256, 256)


# ---------------------------------------------------------------- spatial-reduction attention
@pytest.mark.parametrize("sr_ratio", [1, 2, 4])
def test_spatial_reduction_attention_equals_naive_softmax_attention(sr_ratio: int) -> None:
    """softmax(Q K^T / sqrt(h)) V per head, in float64, from the module's own weights; K, V from the reduced map."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    c, heads, hgt, wid = 64, 4, 8, 12
    h = c // heads
    attn = SpatialReductionAttention(c, heads, sr_ratio, ln_eps=1e-6).eval()
    x = torch.randn(2, hgt * wid, c, generator=g)
    with torch.no_grad():
        r = x
        if sr_ratio > 1:
            r = attn.norm(attn.sr(x.transpose(1, 2).reshape(2, c, hgt, wid)).flatten(2).transpose(1, 2))
        q = attn.q(x).reshape(2, -1, heads, h).transpose(1, 2).double()
        k, v = attn.kv(r).double().reshape(2, -1, 2, heads, h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / h ** 0.5, dim=-1)
        ref = attn.proj((a @ v).transpose(1, 2).reshape(2, hgt * wid, c).float())
        y = attn(x, hgt, wid)
    assert k.shape[-2] == (hgt // sr_ratio) * (wid // sr_ratio)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-5


def test_spatial_reduction_attention_macs_match_reference_formula() -> None:
    d, heads, r = 64, 4, 4
    with torch.device("meta"):
        m = SpatialReductionAttention(d, heads, r, ln_eps=1e-6).eval()
    for hgt, wid in [(32, 32), (64, 128)]:
        n = hgt * wid
        x = torch.empty(1, n, d, device="meta")
        # q, proj: 2Nd^2; sr conv: N d^2 (R^2 d^2 per reduced token); kv: 2 N d^2 / R^2; attention 2 N^2 d / R^2
        expected = 3 * n * d * d + 2 * n * d * d // r ** 2 + 2 * n * n * d // r ** 2
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x, hgt, wid)
        assert fc.get_total_flops() // 2 == expected


def test_spatial_reduction_attention_takes_the_flash_kernel_on_cpu() -> None:
    """With the math path excluded the forward must still run: q, k, v reach SDPA with the head dim contiguous."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = SpatialReductionAttention(64, 4, 2, ln_eps=1e-6).eval()
    x = torch.randn(1, 16 * 16, 64)
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        assert m(x, 16, 16).shape == x.shape


# ---------------------------------------------------------------- HuggingFace transformers as the oracle
@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="transformers not installed: no HuggingFace oracle")


def _hf_config(transformers, variant: str, num_labels: int):
    cfg = SEGFORMER_CFGS[variant]
    return transformers.SegformerConfig(hidden_sizes=list(cfg["dims"]), depths=list(cfg["depths"]),
                                        decoder_hidden_size=cfg["decoder_dim"], num_labels=num_labels)


@pytest.mark.parametrize("variant", list(SEGFORMER_CFGS))
def test_params_equal_huggingface(transformers, variant: str) -> None:
    with torch.device("meta"):
        hf = transformers.SegformerForSemanticSegmentation(_hf_config(transformers, variant, 150))
        ours = segformer(variant, 150)
    assert count_params(ours) == count_params(hf)
    assert count_params(ours.encoder) == count_params(hf.segformer)


def test_macs_equal_huggingface_eager(transformers) -> None:
    cfg = _hf_config(transformers, "b0", 150)
    cfg._attn_implementation = "eager"  # HF's SDPA path is invisible to FlopCounterMode on CPU
    with torch.device("meta"):
        hf = transformers.SegformerForSemanticSegmentation(cfg).eval()
        ours = segformer("b0", 150)
    x = torch.empty(1, 3, 256, 320, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        hf(pixel_values=x)
    assert count_model_macs(ours, x) == fc.get_total_flops() // 2


_RULES = [  # HF name -> our name (regex substitutions, applied in order)
    (r"^segformer\.stages\.", "encoder.stages."),
    (r"\.patch_embeddings\.proj\.", ".patch_embed.proj."),
    (r"\.patch_embeddings\.layer_norm\.", ".patch_embed.norm."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"(stages\.\d+)\.layer_norm\.", r"\1.norm."),
    (r"^decode_head\.linear_projections\.(\d+)\.proj\.", r"decode_head.linear_c.\1."),
    (r"^decode_head\.linear_fuse\.", "decode_head.fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.fuse.norm."),
    (r"^decode_head\.classifier\.", "decode_head.cls."),
]


def hf_to_ours(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a HuggingFace SegformerForSemanticSegmentation state dict onto models.segformer.SegFormer."""
    out: dict[str, torch.Tensor] = {}
    for k, v in hf_sd.items():
        if ".attention.k_proj." in k:  # k and v projections become one kv linear (k rows first)
            vk = k.replace(".k_proj.", ".v_proj.")
            v = torch.cat([v, hf_sd[vk]], dim=0)
            k = k.replace(".attention.k_proj.", ".attention.kv_proj.")
        elif ".attention.v_proj." in k:
            continue
        for pat, rep in _RULES:
            k = re.sub(pat, rep, k)
        k = k.replace(".attention.kv_proj.", ".attn.kv.")
        if k.startswith("decode_head.linear_c.") and k.endswith(".weight"):
            v = v[:, :, None, None]  # per-stage Linear -> 1x1 conv
        out[k] = v
    return out


@pytest.mark.parametrize("variant", ["b0", "b1"])
def test_outputs_match_huggingface(transformers, variant: str) -> None:
    """Strongest check: HF's (random, seeded) weights loaded into ours give the same logits."""
    torch.manual_seed(0)
    hf = transformers.SegformerForSemanticSegmentation(_hf_config(transformers, variant, 19)).eval()
    with torch.no_grad():  # non-trivial BN statistics so the decoder's BN is exercised
        bn = hf.decode_head.batch_norm
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    ours = segformer(variant, 19, ln_eps=1e-5)  # HF builds its LayerNorms with torch's default eps 1e-5
    ours.load_state_dict(hf_to_ours(hf.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits
        got = ours(x)
        ours_explicit = segformer(variant, 19, ln_eps=1e-5, fused_attn=False).eval()
        ours_explicit.load_state_dict(ours.state_dict())
        got_explicit = ours_explicit(x)
    assert got.shape == ref.shape == (2, 19, 16, 24)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_explicit, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- every registered model
@pytest.mark.parametrize("name", list_models("segformer"))
def test_registered_shapes(name: str) -> None:
    info = get_model_info(name)
    assert info.family == "segformer" and info.out_stride == 4 and info.token_stride == 4
    torch.manual_seed(0)
    model = build_model(name)
    assert not model.training
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, info.num_classes, 64 // 4, 128 // 4)
    assert torch.isfinite(y).all()
