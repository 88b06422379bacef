"""The model registry: name -> builder + metadata.

Everything the engine, the report and the CLI know about a model comes from its `ModelInfo`. Built-in and users'
models are registered the same way, by decorating a builder (no arguments -> nn.Module):

    @register_model("my-net")
    def my_net() -> nn.Module: ...

The built-in model files apply the same decorator to the rows of their config tables. What a user leaves out has a
default that needs no knowledge of the model: the family "user", any resolution, and the classes and output stride
read off one meta-device forward the first time they are asked for (so listing the zoo builds nothing). Importing
this module imports the `models` package first, whose __init__ imports the model files: the built-ins are
registered before any lookup, without this module importing them back.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
import numbers
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

FAMILIES = ("evit-variant", "block", "efficientvit", "segformer", "segnext", "user")
# dataset -> (classes, input size): a model made for a dataset has its classes and is shown at its resolution
DATASETS: dict[str, tuple[int, tuple[int, int]]] = {"ade20k": (150, (512, 512)), "cityscapes": (19, (1024, 2048))}

Builder = TypeVar("Builder", bound=Callable[[], nn.Module])


class UnknownModelError(ValueError):
    """Raised for a name that is not in the registry; the message lists what is."""


class DuplicateModelError(ValueError):
    """Raised when a second builder is registered under a name already taken."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} registered twice")
        self.name = name


class ModelCheckError(ValueError):
    """A model that cannot be measured as a dense predictor; the message is the one-line reason."""


class ChildOnlyError(RuntimeError):
    """A user's model was asked to build in the parent process, which never runs users' code."""


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
    """One registered model, made by `register_model` (which holds the defaults).

    `num_classes` and `out_stride` are the declared values where given, else read off one meta-device forward at
    `input_size` on first use: a user's model need not state them, and nothing is built until they are needed.
    """
    name: str
    builder: Callable[[], nn.Module]
    family: str
    mixer: str
    dataset: str | None
    input_size: tuple[int, int]  # the model's own resolution: display and published figures only
    in_channels: int
    input_stride: int  # blocks are fed the stride-16 map of the image: (B, C, H // 16, W // 16)
    size_multiple: int  # H and W must be multiples of this
    token_stride: int  # stride of the first attention stage: tokens = H * W / token_stride**2
    published: Published | None
    description: str
    declared_classes: int | None  # 0: the output is a feature map, not logits (blocks)
    declared_stride: int | None
    # A model of a user's model file is imported, built and run only in child processes (bench.launch.usercode):
    # in the parent its builder refuses and `remote` answers the checks and counts a child made.
    remote: Any = field(default=None, compare=False, repr=False)

    @cached_property
    def _probed(self) -> tuple[int, int]:
        return dense_output(self, *self.input_size)

    @property
    def num_classes(self) -> int:
        return self._probed[0] if self.declared_classes is None else self.declared_classes

    @property
    def out_stride(self) -> int:
        """Stride of the output relative to the image (not to the model's input, for blocks)."""
        return self._probed[1] if self.declared_stride is None else self.declared_stride

    def tokens(self, height: int, width: int) -> int:
        return (height // self.token_stride) * (width // self.token_stride)


_REGISTRY: dict[str, ModelInfo] = {}


class ModelRegistrationError(ValueError):
    """register_model's metadata refused at registration: one line naming the keyword and what it accepts, so that
    an absurd value never reaches the arithmetic of `run` or `models` (a zero stride, a negative size)."""


class ModelRegistrationTypeError(ModelRegistrationError, TypeError):
    """A keyword of register_model of the wrong type (also a TypeError, as Python's own argument errors are)."""


MAX_SIDE = 32768  # pixels per side of input_size: bench.cases.MAX_SIDE, the largest side --res accepts
# --models splits its value on commas and strips each item, reads `*`, `?` and `[` as a glob pattern, and 'all',
# 'published' and family names as groups: a name with these, or equal to those, could never be named alone
NAME_GLOB = ",*?["
NAME_KEYWORDS = ("all", "published", *FAMILIES)


def check_registration(name: object, **meta: object) -> dict:
    """register_model's keywords checked by type and range (ModelRegistrationError, one line); returns them with
    integers as plain ints and input_size as a tuple. bool is not an int here: True is not a stride."""
    def bad(field: str, accepted: str, kind: type = ModelRegistrationError, *value: object) -> ModelRegistrationError:
        v = repr(value[0] if value else meta.get(field, name))
        return kind(f"register_model({str(name)[:60]!r}): {field} {v if len(v) <= 60 else v[:57] + '...'} is not accepted; "
                    f"accepted: {accepted}")

    if not isinstance(name, str):
        raise ModelRegistrationTypeError(
            f"register_model takes the model's name first, e.g. @register_model('my-net'); got {name!r}")
    if (not name or name != name.strip() or any(c in NAME_GLOB for c in name) or name in NAME_KEYWORDS
            or not _one_line(name)):
        raise ModelRegistrationError(
            f"register_model: name {name[:60]!r} is not accepted; accepted: a name --models can name: no comma, "
            f"'*', '?', '[', control character or line break, no leading or trailing space, not "
            f"{', '.join(NAME_KEYWORDS)}")
    out = dict(meta)
    for field, accepted in (("family", ", ".join(FAMILIES)), ("dataset", "None, " + ", ".join(DATASETS))):
        v = meta[field]
        if not (isinstance(v, str) or v is None and field == "dataset"):
            raise bad(field, accepted, ModelRegistrationTypeError)
        if v is not None and v not in (FAMILIES if field == "family" else DATASETS):
            raise bad(field, accepted)
    for field in ("mixer", "description"):
        if not isinstance(meta[field], str):
            raise bad(field, "a str", ModelRegistrationTypeError)
    if not meta["mixer"] or not _one_line(meta["mixer"]):
        raise bad("mixer", "a non-empty str on one line")
    for field, low, optional in (("num_classes", 0, True), ("out_stride", 1, True), ("in_channels", 1, False),
                                 ("input_stride", 1, False), ("size_multiple", 1, False), ("token_stride", 1, False)):
        v = meta[field]
        if v is None and optional:
            continue
        if not _whole(v) or v < low:
            raise bad(field, ("None or " if optional else "") + f"an int >= {low}",
                      ModelRegistrationError if _whole(v) else ModelRegistrationTypeError)
        out[field] = int(v)
    size = meta["input_size"]
    if size is not None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_whole(v) for v in size)):
            raise bad("input_size", "None or a pair of ints (H, W)", ModelRegistrationTypeError)
        if not all(1 <= v <= MAX_SIDE for v in size):
            raise bad("input_size", f"None or a pair of ints (H, W) from 1 to {MAX_SIDE}")
        out["input_size"] = (int(size[0]), int(size[1]))
    if meta["published"] is not None and not isinstance(meta["published"], Published):
        raise bad("published", "None or a models.registry.Published", ModelRegistrationTypeError)
    fault = _published_fault(meta["published"])
    if fault:
        raise bad(f"published.{fault[0]}", fault[2], ModelRegistrationError, fault[1])
    return out


def _whole(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _one_line(text: str) -> bool:
    """No control character, line or paragraph separator, lone surrogate: one line of a table, log or CSV cell."""
    return not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in text)


def _published_fault(pub: Published | None) -> tuple[str, object, str] | None:
    """None when every field of `pub` has its type and range (the zoo divides by params_m, the report formats
    every latency as a number), else (field, value, what is accepted)."""
    if pub is None:
        return None

    def real(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for f, ok, accepted in (("params_m", lambda v: v > 0, "> 0"), ("macs_g", lambda v: v > 0, "> 0"),
                            ("miou", lambda v: 0 <= v <= 100, "from 0 to 100")):
        v = getattr(pub, f)
        if v is not None and not (real(v) and ok(v)):
            return f, v, f"None or a finite number {accepted}"
    lat = pub.latency_ms
    if not isinstance(lat, dict) or not all(isinstance(k, str) and k.strip() and real(v) and v > 0
                                            for k, v in lat.items()):
        return "latency_ms", lat, "a dict of 'device, setting' (a non-empty str) -> finite ms > 0"
    for f in ("source", "note"):
        if not isinstance(getattr(pub, f), str):
            return f, getattr(pub, f), "a str"
    if pub.counted_as is not None and not (isinstance(pub.counted_as, str) and pub.counted_as.strip()):
        return "counted_as", pub.counted_as, "None or the name of a registered model"
    return None


def register_model(name: str, *, family: str = "user", mixer: str = "custom", dataset: str | None = None,
                   input_size: tuple[int, int] | None = None, num_classes: int | None = None,
                   out_stride: int | None = None, in_channels: int = 3, input_stride: int = 1,
                   size_multiple: int = 1, token_stride: int = 16, published: Published | None = None,
                   description: str = "") -> Callable[[Builder], Builder]:
    """Decorator registering a builder under `name`; returns the builder unchanged.

    A dataset of DATASETS gives the default classes and input size; otherwise classes and output stride are
    read off the model when first needed and input_size (512, 512) is for display only: runs use their own --res.
    Every keyword is checked here (check_registration: ModelRegistrationError, one line), not when first used.
    """
    m = check_registration(name, family=family, mixer=mixer, dataset=dataset, input_size=input_size,
                           num_classes=num_classes, out_stride=out_stride, in_channels=in_channels,
                           input_stride=input_stride, size_multiple=size_multiple, token_stride=token_stride,
                           published=published, description=description)
    ds_classes, ds_size = DATASETS.get(dataset or "", (None, (512, 512)))

    def register(builder: Builder) -> Builder:
        if not callable(builder):
            raise ModelRegistrationTypeError(f"register_model({name!r}) decorates a builder (no arguments -> "
                                             f"nn.Module); got {type(builder).__name__}")
        if name in _REGISTRY:
            raise DuplicateModelError(name)
        _REGISTRY[name] = ModelInfo(
            name=name, builder=builder, family=family, mixer=mixer, dataset=dataset,
            input_size=m["input_size"] or ds_size, in_channels=m["in_channels"], input_stride=m["input_stride"],
            size_multiple=m["size_multiple"], token_stride=m["token_stride"], published=published,
            description=description, declared_classes=ds_classes if num_classes is None else m["num_classes"],
            declared_stride=m["out_stride"])
        return builder

    return register


@contextlib.contextmanager
def registering() -> Iterator[list[str]]:
    """Collects the names registered inside the block (filled when it ends). If the block raises, they are
    unregistered again, so that a source that fails half-way through its import leaves no model behind."""
    before = set(_REGISTRY)
    added: list[str] = []
    try:
        yield added
    except BaseException:
        for n in [n for n in _REGISTRY if n not in before]:
            del _REGISTRY[n]
        raise
    added.extend(n for n in _REGISTRY if n not in before)


def list_models(family: str | None = None) -> list[str]:
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def get_model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}") from None


def resolve_models(specs: list[str]) -> list[str]:
    """Model names from names, family names, glob patterns (`evit-b1:*`), `published` (every model with published
    numbers: the reference models) or `all`, in registry order, no repeats."""
    out: list[str] = []
    for spec in specs:
        if spec == "all":
            hits = list(_REGISTRY)
        elif spec == "published" and spec not in _REGISTRY:
            hits = [n for n, i in _REGISTRY.items() if i.published is not None]
        elif spec in _REGISTRY:
            hits = [spec]
        elif spec in FAMILIES:
            hits = list_models(spec)
        else:
            hits = fnmatch.filter(_REGISTRY, spec)
        if not hits:
            raise UnknownModelError(
                f"unknown model {spec!r}; valid: a name ({', '.join(sorted(_REGISTRY))}), a family "
                f"({', '.join(FAMILIES)}), a pattern such as 'evit-b1:*', 'published' or 'all'")
        out.extend(h for h in hits if h not in out)
    return out


def build_model(name: str) -> nn.Module:
    """A fresh model with its default (seeded-random) initialisation, in eval mode, on the CPU, fp32."""
    info = get_model_info(name)
    if info.remote is not None:
        raise ChildOnlyError(f"model {name!r} comes from a user's model file and is built only in a child process")
    return info.builder().eval()


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


# ----------------------------------------------------------------------------------------------------------------
# Checking a model: one forward on the meta device (shapes only: no memory, no arithmetic)


def error_line(e: BaseException) -> str:
    """'ValueError: first line of the message': an exception as one line of a user-facing reason."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def dense_output(info: ModelInfo, height: int, width: int, batch: int = 1) -> tuple[int, int]:
    """(channels, stride to the image) of one meta-device forward at height x width; ModelCheckError if the
    builder or the forward raises, or the output is not one dense (B, C, H / s, W / s) map. A user's model file's
    model is checked in a child process (info.remote)."""
    if info.remote is not None:
        found = info.remote.check(height, width, batch)
        if found.get("reason"):
            raise ModelCheckError(found["reason"])
        return found["classes"], found["stride"]
    try:
        with torch.device("meta"):
            model = info.builder()
    except Exception as e:
        raise ModelCheckError(f"builder of {info.name!r} raised {error_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelCheckError(f"builder of {info.name!r} returned {type(model).__name__}, not an nn.Module")
    s = info.input_stride
    x = torch.empty(batch, info.in_channels, height // s, width // s, device="meta")
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except Exception as e:
        raise ModelCheckError(f"forward of {info.name!r} at {height}x{width} (meta device) raised "
                              f"{error_line(e)}") from None
    what = f"{y.dim()}-D tensor {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
    stride = height // y.shape[-2] if isinstance(y, torch.Tensor) and y.dim() == 4 and y.shape[-2] else 0
    if not stride or y.shape[0] != batch or (y.shape[-2] * stride, y.shape[-1] * stride) != (height, width):
        raise ModelCheckError(f"output of {info.name!r} at {height}x{width} (batch {batch}) is a {what}, not dense: "
                              f"accepted: one (B, C, H/s, W/s) tensor, s an integer stride")
    return y.shape[1], stride


def check_model(name: str, height: int, width: int, batch: int = 1) -> str | None:
    """None if `name` builds and maps a batch of height x width images to a dense map of its declared classes and
    stride, else the one-line reason. Meant for users' models, before a child process is spent on them."""
    info = get_model_info(name)
    try:
        classes, stride = dense_output(info, height, width, batch)
    except ModelCheckError as e:
        return str(e)
    if info.declared_stride is not None and stride != info.declared_stride:
        return f"{name!r} declares output stride {info.declared_stride} but outputs stride {stride} at {height}x{width}"
    if info.declared_classes and classes != info.declared_classes:
        return f"{name!r} declares {info.declared_classes} classes but outputs {classes} channels"
    return None
