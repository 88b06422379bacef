"""SegNeXt: published params/MACs, MAC formulas of MSCA and NMF, NMF behaviour, determinism, shapes.

Counting convention (models/complexity.py): MACs = FLOPs / 2 from FlopCounterMode on the meta device, conv +
matmul only. For SegNeXt "matmul" means the NMF's batched matmuls (7 multiplicative-update steps in the head).

What reproduces the published figures (measured, 1 image):
                       ours conv+bmm   published   diff    (conv only)
  SegNeXt-T ADE 512      6.404G          6.6G      -3.0%    6.102G (-7.5%)
  SegNeXt-T City 1024x2048 50.129G       50.5G     -0.7%   47.720G (-5.5%)
  SegNeXt-S ADE 512     15.646G         15.9G      -1.6%   15.344G (-3.5%)
  SegNeXt-S City        124.064G       124.6G      -0.4%  121.656G (-2.4%)
So the published figures include the NMF matmuls (the official get_flops uses torchprofile, which counts bmm);
counting convolutions alone misses by 2.4-7.5%. SegNeXt-T at ADE20K stays 3.0% below the published 6.6G under any
conv+matmul count: no conv/matmul convention reaches it (counting every elementwise op as well, bias adds, norms,
GELU, gating, would give 6.57G but would overshoot Cityscapes by 1.9%). The published ADE20K and Cityscapes
figures are not 8x apart as a per-pixel count would be, so they are not from one consistent counter; we accept
3.5% for that one entry and say so. Params (published once, the 150-class model) are within 1%.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.complexity import count_macs, count_params
from models.registry import build_model, get_model_info, list_models
from models.segnext import NMF2D, SEGNEXT_CFGS, SpatialAttention, segnext

# (variant, dataset) -> (params M, MACs G, MACs tolerance)
PUBLISHED = {
    ("t", "ade20k"): (4.3, 6.6, 0.035),  # see module docstring: 3.0% below under any conv+matmul count
    ("t", "cityscapes"): (4.3, 50.5, 0.02),
    ("s", "ade20k"): (13.9, 15.9, 0.02),
    ("s", "cityscapes"): (13.9, 124.6, 0.02),
}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(name)


def _macs_by_op(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return {str(k): v // 2 for k, v in fc.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("variant,dataset", sorted(PUBLISHED))
def test_published_params_and_macs(variant: str, dataset: str) -> None:
    params_m, macs_g, tol = PUBLISHED[(variant, dataset)]
    name = f"segnext-{variant}-{dataset}"
    info = get_model_info(name)
    assert info.published is not None and info.published.macs_g == macs_g and info.published.params_m == params_m
    macs = count_macs(name)
    assert _rel(macs / 1e9, macs_g) < tol, macs
    model = _meta(name)
    assert _rel(count_params(model) / 1e6, params_m) < 0.02
    # The NMF matmuls are part of the published figure: convolutions alone fall short by more than 2%.
    by_op = _macs_by_op(model, torch.empty(1, 3, *info.input_size, device="meta"))
    assert sum(by_op.values()) == macs
    assert set(by_op) == {"aten.convolution", "aten.bmm"}
    assert _rel(by_op["aten.convolution"] / 1e9, macs_g) > 0.02


def test_segnext_b_rank_64() -> None:
    """B uses the official default NMF rank 64 (its config sets no MD_R; T/S set 16) and 512 head channels."""
    with torch.device("meta"):
        m = segnext("b", 19)
    assert m.decode_head.hamburger.ham.rank == 64 and m.decode_head.cls.in_channels == 512


def test_msca_block_macs_formula() -> None:
    """MSCA token mixer (1x1, GELU, 5x5 dw + strips 7/11/21, 1x1 gate, 1x1): 3Nd^2 + 103Nd MACs."""
    d, h, w = 64, 16, 24
    with torch.device("meta"):
        attn = SpatialAttention(d)
    by_op = _macs_by_op(attn, torch.empty(1, d, h, w, device="meta"))
    n = h * w
    assert sum(by_op.values()) == 3 * n * d * d + 103 * n * d


def test_nmf_macs_formula() -> None:
    """init (NDR), `steps` x (coef + bases update), final coef update, reconstruction (NDR)."""
    d, r, h, w, steps = 32, 4, 8, 12, 7
    nmf = NMF2D(d, r, steps)
    n = h * w
    by_op = _macs_by_op(nmf.to("meta"), torch.empty(2, d, h, w, device="meta"))
    per_coef = n * d * r + d * r * r + n * r * r
    per_bases = d * n * r + n * r * r + d * r * r
    assert by_op == {"aten.bmm": 2 * (n * d * r + steps * (per_coef + per_bases) + per_coef + n * d * r)}


def test_nmf_reconstructs_nonnegative_input() -> None:
    """The multiplicative updates must actually factorise: error falls with more steps, output stays >= 0."""
    torch.manual_seed(0)
    basis = torch.rand(1, 64, 4)
    coef = torch.rand(2, 16 * 16, 4)
    x = torch.bmm(basis.expand(2, -1, -1), coef.transpose(1, 2)).reshape(2, 64, 16, 16)  # exactly rank 4
    errs = []
    for steps in (0, 2, 7, 30):
        y = NMF2D(64, 4, steps=steps)(x)
        assert (y >= 0).all()
        errs.append(((y - x).norm() / x.norm()).item())
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[2] < 0.2 and errs[3] < 0.1, errs


def test_nmf_basis_is_fixed_and_seeded() -> None:
    torch.manual_seed(1)
    a = NMF2D(32, 8, seed=0)
    torch.manual_seed(2)
    b = NMF2D(32, 8, seed=0)
    c = NMF2D(32, 8, seed=1)
    assert torch.equal(a.bases, b.bases) and not torch.equal(a.bases, c.bases)
    torch.testing.assert_close(a.bases.norm(dim=1), torch.ones(1, 8))  # L2-normalised over D, as upstream
    assert "bases" not in a.state_dict()  # not a weight: loading upstream checkpoints is unaffected


@pytest.mark.parametrize("name", list_models("segnext"))
def test_registered_shapes(name: str) -> None:
    info = get_model_info(name)
    assert info.family == "segnext" and info.out_stride == 8 and info.num_classes in (19, 150)
    torch.manual_seed(0)
    model = build_model(name)
    assert not model.training
    assert model.decode_head.cls.in_channels == SEGNEXT_CFGS[name.split("-")[1]]["head_channels"]
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, info.num_classes, 64 // 8, 96 // 8)
    assert torch.isfinite(y).all()


def test_determinism() -> None:
    torch.manual_seed(0)
    model = build_model("segnext-t-ade20k")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
        y_single = model(x[1:])
    assert torch.equal(y1, y2)  # fixed NMF basis: two forwards give identical logits
    torch.testing.assert_close(y_single, y1[1:], atol=1e-5, rtol=1e-5)  # per-image NMF: batch-independent
