"""The model registry: name -> builder + metadata.

Everything the engine, the report and the CLI know about a model comes from its `ModelInfo`, so a new model is
one `register_model` call in its own model file.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

MIXERS = ("msla", "relu-linear", "softmax", "large-kernel")
FAMILIES = ("evit-variant", "block", "efficientvit", "segformer", "segnext")


class UnknownModelError(ValueError):
    """Raised for a name that is not in the registry; the message lists what is."""


@dataclass(frozen=True)
class Published:
    """Numbers from the papers, shown beside ours and never mixed with measured rows."""
    params_m: float | None = None
    macs_g: float | None = None  # at the model's own input_size
    latency_ms: dict[str, float] = field(default_factory=dict)  # "device, setting" -> ms
    miou: float | None = None
    source: str = ""
    # When the paper counted params/MACs on another configuration than this model (SegFormer's Cityscapes
    # figures were counted with the 150-class ADE20K head), the registry name of that configuration: the
    # comparison with the published figure is made on it, counted at this model's input size.
    counted_as: str | None = None
    note: str = ""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    mixer: str
    builder: Callable[[], nn.Module]
    dataset: str | None = None
    input_size: tuple[int, int] = (512, 512)
    num_classes: int = 0
    out_stride: int = 8
    in_channels: int = 3
    input_stride: int = 1  # blocks are fed the stride-16 map of the image: (B, C, H // 16, W // 16)
    size_multiple: int = 32  # H and W must be multiples of this
    token_stride: int = 16  # stride of the first attention stage: tokens = H * W / token_stride**2
    published: Published | None = None
    description: str = ""

    def tokens(self, height: int, width: int) -> int:
        return (height // self.token_stride) * (width // self.token_stride)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} registered twice")
    _REGISTRY[info.name] = info
    return info


def _ensure_loaded() -> None:
    # The model files register themselves on import; importing the package imports them all.
    import models  # noqa: F401


def list_models(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def get_model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}") from None


def resolve_models(specs: list[str]) -> list[str]:
    """Model names from names, family names, glob patterns (`evit-b1:*`) or `all`, in registry order, no repeats."""
    _ensure_loaded()
    out: list[str] = []
    for spec in specs:
        if spec == "all":
            hits = list(_REGISTRY)
        elif spec in _REGISTRY:
            hits = [spec]
        elif spec in FAMILIES:
            hits = list_models(spec)
        else:
            hits = fnmatch.filter(_REGISTRY, spec)
        if not hits:
            raise UnknownModelError(
                f"unknown model {spec!r}; valid: a name ({', '.join(sorted(_REGISTRY))}), a family "
                f"({', '.join(FAMILIES)}), a pattern such as 'evit-b1:*', or 'all'")
        out.extend(h for h in hits if h not in out)
    return out


def build_model(name: str) -> nn.Module:
    """A fresh model with its default (seeded-random) initialisation, in eval mode, on the CPU, fp32."""
    model = get_model_info(name).builder()
    return model.eval()


def check_resolution(name: str, height: int, width: int) -> str | None:
    """None if the model takes an image of height x width, else the reason it cannot."""
    info = get_model_info(name)
    m = info.size_multiple
    if height <= 0 or width <= 0:
        return f"resolution {height}x{width} is not positive"
    if height % m or width % m:
        return f"{name} needs height and width that are multiples of {m}, got {height}x{width}"
    return None


def input_shape(name: str, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
    info = get_model_info(name)
    s = info.input_stride
    return (batch, info.in_channels, height // s, width // s)


def example_input(name: str, height: int, width: int, batch: int = 1, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A deterministic input for an image of height x width (the stride-16 feature map for blocks)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape(name, height, width, batch), generator=g, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)
