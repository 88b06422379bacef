"""The zoo: registry behaviour, published params/MACs, MAC scaling, shapes, half precision, deployment form."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnstats import randomise_bn
from models import build_model, check_resolution, example_input, get_model_info, list_models, resolve_models
from models.complexity import count_macs, params_of
from models.deploy import count_unfolded_bn, fold_conv_bn, to_deploy
from models.mixers import MIXERS
from models.registry import UnknownModelError


def within_published(ours: float, published: float, rel: float = 0.02) -> bool:
    """Within 2% of the published figure, or within its rounding (half a unit of its last printed digit):
    "15M" in a paper's table means 14.5M..15.5M."""
    text = f"{published:g}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(ours - published) <= max(rel * published, 0.5 * 10 ** -decimals)


PUBLISHED = [n for n in list_models() if get_model_info(n).published is not None
             and get_model_info(n).published.macs_g is not None]


def test_every_published_row_is_in_the_registry():
    # published-numbers.md: EfficientViT-Seg B0..B3 Cityscapes, B1..B3 ADE20K; SegFormer-B0/B1 and SegNeXt-T/S on both.
    expected = {f"efficientvit-seg-{s}-cityscapes" for s in ("b0", "b1", "b2", "b3")}
    expected |= {f"efficientvit-seg-{s}-ade20k" for s in ("b1", "b2", "b3")}
    expected |= {f"{m}-{d}" for m in ("segformer-b0", "segformer-b1", "segnext-t", "segnext-s")
                 for d in ("ade20k", "cityscapes")}
    assert expected <= set(PUBLISHED)


# Rows no count of the architecture reproduces within 2%, with the deviation we measured and allow.
KNOWN_DEVIATIONS = {
    # conv + matmul (NMF included) gives 6.40G at 512x512; the published 6.6G is not 1/8 of the published
    # Cityscapes 50.5G either (our 50.13G is within 0.7% of it), so the ADE20K figure was counted otherwise.
    "segnext-t-ade20k": 0.035,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_params_and_macs_match_published(name):
    info = get_model_info(name)
    pub = info.published
    counted = pub.counted_as or name  # the configuration the paper counted (see Published.counted_as)
    params_m = params_of(counted) / 1e6
    macs_g = count_macs(counted, *info.input_size) / 1e9
    rel = KNOWN_DEVIATIONS.get(name, 0.02)
    assert within_published(params_m, pub.params_m), f"{name}: params {params_m:.3f}M vs published {pub.params_m}M"
    assert within_published(macs_g, pub.macs_g, rel), f"{name}: MACs {macs_g:.2f}G vs published {pub.macs_g}G"


def test_within_published_rounding_rule():
    assert within_published(15.32, 15) and not within_published(15.6, 15)
    assert within_published(4.85, 4.8) and not within_published(4.95, 4.8)  # 2% of 4.8 = 0.096


def test_backbones_equal_timm_in_params_and_macs():
    """Our EfficientViT backbones are timm's architecture: same params and MACs (an independent implementation)."""
    timm = pytest.importorskip("timm")
    from models.complexity import count_model_macs, count_params
    from models.efficientvit import efficientvit_seg

    class Features(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_features(x)

    for size in ("b0", "b1", "b2", "b3", "l1", "l2"):
        with torch.device("meta"):
            ref = timm.create_model(f"efficientvit_{size}", pretrained=False).eval()
            ours = efficientvit_seg(size).backbone.eval()
        x = torch.empty(1, 3, 256, 512, device="meta")
        assert count_params(ours) == count_params(ref.stem) + count_params(ref.stages), size
        assert count_model_macs(ours, x) == count_model_macs(Features(ref), x), size


def _attention_stages(size: str) -> list[tuple[int, int, int]]:
    """(stride, channels, blocks) of the attention stages of EfficientViT-{size}."""
    from models.efficientvit import BACKBONES
    cfg = BACKBONES[size]
    return [(2 ** (i + 1), cfg.widths[i], cfg.depths[i]) for i in (3, 4) if cfg.blocks[i] == "att"]


@pytest.mark.parametrize("size", ["b0", "b1"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_mac_growth_with_pixels(size, mixer):
    """Linear in pixels for msla / relu-linear / large-kernel; for softmax the excess over linear is exactly the
    attention term 2 N^2 d of each attention block (reference formula)."""
    name = f"evit-{size}:{mixer}"
    base = (256, 512)
    m1 = count_macs(name, *base)
    for scale in (2, 4):
        h, w = base[0] * scale, base[1] * scale
        m = count_macs(name, h, w)
        excess = m - scale ** 2 * m1
        if mixer == "softmax":
            quad = 0
            for stride, d, blocks in _attention_stages(size):
                n1 = (base[0] // stride) * (base[1] // stride)
                n = n1 * scale ** 2
                quad += blocks * 2 * d * (n * n - scale ** 2 * n1 * n1)
            assert excess == quad
        else:
            assert excess == 0


def test_softmax_block_macs_quadratic_msla_linear():
    lin = [count_macs("block:msla", r, r) for r in (512, 1024, 2048)]
    quad = [count_macs("block:softmax", r, r) for r in (512, 1024, 2048)]
    assert lin[1] == 4 * lin[0] and lin[2] == 4 * lin[1]
    # N grows 4x per step: 4Nd^2 grows 4x, 2N^2 d grows 16x.
    d = 128
    for r, q in zip((512, 1024, 2048), quad):
        n = (r // 16) ** 2
        assert q == 4 * n * d * d + 2 * n * n * d


def test_count_macs_at_2048_needs_no_memory():
    # quadratic attention at 2048x2048 on the meta device: N = 16384 tokens at stride 16
    assert count_macs("evit-b1:softmax", 2048, 2048) > count_macs("evit-b1:msla", 2048, 2048)


def test_registry_errors_and_resolution():
    with pytest.raises(UnknownModelError, match="valid models: .*evit-b1:msla"):
        get_model_info("evit-b1:linear")
    with pytest.raises(UnknownModelError, match="a family"):
        resolve_models(["nope"])
    assert resolve_models(["evit-b1:*"]) == [f"evit-b1:{m}" for m in MIXERS]  # registry order
    assert set(resolve_models(["block"])) == {f"block:{m}" for m in MIXERS}
    assert resolve_models(["segformer", "segformer-b0-ade20k"]).count("segformer-b0-ade20k") == 1
    assert check_resolution("evit-b1:msla", 512, 1024) is None
    assert "multiples of 32" in check_resolution("evit-b1:msla", 500, 1024)
    assert "not positive" in check_resolution("evit-b1:msla", 0, 1024)


def test_config_tables_cover_every_size_and_mixer():
    # the names are literals in the config tables (greppable); a missing or misspelt row fails here
    assert list_models("evit-variant") == [f"evit-{s}:{m}" for s in ("b0", "b1", "b2", "b3") for m in MIXERS]
    assert list_models("block") == [f"block:{m}" for m in MIXERS]
    for name in list_models("evit-variant") + list_models("block"):
        assert get_model_info(name).mixer == name.split(":")[1]


def _small_res(name: str) -> tuple[int, int]:
    m = get_model_info(name).size_multiple
    return (2 * max(m, 32), 3 * max(m, 32))


@pytest.mark.parametrize("name", list_models())
def test_every_model_outputs_logits_at_its_stride(name):
    info = get_model_info(name)
    h, w = _small_res(name)
    model = build_model(name)
    x = example_input(name, h, w, batch=2)
    with torch.no_grad():
        y = model(x)
    if info.family == "block":
        assert y.shape == x.shape
    else:
        assert y.shape == (2, info.num_classes, h // info.out_stride, w // info.out_stride)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["evit-b0:msla", "evit-b0:relu-linear"])
def test_linear_attention_models_finite_under_bf16_autocast_at_1024x2048(name):
    model = build_model(name)
    x = example_input(name, 1024, 2048)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert torch.isfinite(y).all()
    with torch.no_grad():
        ref = model(x)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 0.1


DEPLOY_CASES = [f"evit-b0:{m}" for m in MIXERS] + [f"block:{m}" for m in MIXERS] + [
    "efficientvit-seg-l1-ade20k", "segformer-b0-ade20k", "segnext-t-ade20k"]


@pytest.mark.parametrize("name", DEPLOY_CASES)
def test_deployment_form_computes_the_same_function(name):
    model = randomise_bn(build_model(name), torch.Generator().manual_seed(0))
    h, w = _small_res(name)
    x = example_input(name, h, w)
    deployed = to_deploy(model, channels_last=True, fold=True)
    with torch.no_grad():
        y = model(x)
        y_dep = deployed(x.contiguous(memory_format=torch.channels_last))
    assert ((y_dep - y).norm() / y.norm()).item() < 1e-4
    assert count_unfolded_bn(deployed) < count_unfolded_bn(model) or count_unfolded_bn(model) == 0
    if name.startswith(("evit", "block", "efficientvit")):
        assert count_unfolded_bn(deployed) == 0  # every BN in EfficientViT follows a conv


def test_folding_refuses_training_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_conv_bn(build_model("block:msla").train())


def test_published_latencies_are_labelled():
    pub = get_model_info("efficientvit-seg-b1-cityscapes").published
    assert pub.latency_ms and all("Jetson" in k for k in pub.latency_ms)
    assert math.isclose(pub.latency_ms["Jetson AGX Orin, TensorRT fp16"], 24.3)


def test_macs_are_linear_in_batch():
    from models.complexity import count_model_macs
    with torch.device("meta"):
        m = build_model("segnext-t-ade20k")  # NMF matmuls are per image too
    x3 = torch.empty(3, 3, 128, 128, device="meta")
    assert count_macs("segnext-t-ade20k", 128, 128, batch=3) == count_model_macs(m, x3)
