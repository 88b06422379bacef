"""What every backend shares: the names of precisions and devices, the result types, the precision switches, the
move to the device, and the contract a backend module implements (`Backend`).

Kept apart from the registry (bench/backends/__init__.py) so a backend module can import it without importing the
other backends.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping, Protocol

import torch
from torch import nn

from bench.env import cpu_isa
from models.deploy import fold_conv_bn

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
# The dtype of the model and input a backend starts from; int8 starts from fp32 (the runtime quantizes, see int8.py).
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "int8": torch.float32}
DEVICE_TYPES = ("cpu", "cuda")

Runner = Callable[[], torch.Tensor]


class Unsupported(Exception):
    """A backend x device x precision (x option) combination that is not supported; str(e) is the reason."""


@dataclass
class Prepared:
    """One case's runner: `fn()` runs one inference, `build_s` is the time spent building it (not latency)."""

    fn: Runner
    build_s: float
    info: dict = field(default_factory=dict)


class Backend(Protocol):
    """What a backend module provides; the registry calls `unsupported` first and `prepare` only when it is None.

    `unsupported` gets combinations that already passed the common checks (known names, CUDA present, no tf32 on
    a CPU, bf16-capable GPU) and adds the backend's own. `prepare` gets the model and input already on `device`
    (a CUDA device always with its index), `info` to extend with what the backend did, the caller's `options` and
    a `workdir` for files; it returns the runner and its build time in seconds.
    """

    NAME: str

    def unsupported(self, device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None: ...

    def prepare(self, model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
                options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]: ...


def package_version(*dists: str) -> str | None:
    """Installed version of the first of these distributions that is installed, else None.

    Reads the metadata rather than importing, so asking about an optional extra stays cheap and side-effect free.
    """
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def set_fp32_math(device_type: str, precision: str) -> dict:
    """Set CUDA's TF32 switches for this precision: on for tf32, off otherwise. Returns what was set.

    Uses the legacy `allow_tf32` flags on purpose. torch 2.9+ also has the `fp32_precision` API, but the two must
    not be mixed, and after the new API is used the legacy getters (and torch.get_float32_matmul_precision(),
    which inductor's max-autotune reads) raise in torch 2.14; after the legacy setters every getter, old and new,
    is consistent. Process-wide: the engine runs one case per process.
    """
    if device_type != "cuda":
        return {}
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"allow_tf32": tf32, "float32_matmul_precision": torch.get_float32_matmul_precision()}


def autocast_context(device_type: str, precision: str, cache_enabled: bool | None = None) -> ContextManager:
    """torch.autocast for fp16/bf16, a null context for fp32/tf32, so callers need no branch on precision."""
    if precision in ("fp16", "bf16"):
        kw = {} if cache_enabled is None else {"cache_enabled": cache_enabled}
        return torch.autocast(device_type=device_type, dtype=DTYPES[precision], **kw)
    return contextlib.nullcontext()


def amp_note(precision: str, how: str) -> str:
    """The `amp` entry of backend_info: how autocast was applied, or "none" at fp32/tf32."""
    return how if precision in ("fp16", "bf16") else "none"


def sync(device: torch.device) -> None:
    """Wait for the device, so a build time includes the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def base_info(backend: str, device: torch.device, precision: str, channels_last: bool, fold: bool) -> dict:
    """The backend_info entries every backend records; on a CPU also the threads and, for fp16/bf16, the ISA
    flags that say whether low precision is native there or converted."""
    info: dict[str, Any] = {"backend": backend, "device": str(device), "precision": precision,
                            "torch": torch.__version__, "channels_last": channels_last, "folded": fold}
    if device.type == "cpu":
        info["threads"] = torch.get_num_threads()
        if precision in ("fp16", "bf16"):
            info["cpu_isa"] = cpu_isa()
    return info


def to_device(model: nn.Module, example: torch.Tensor, device: torch.device, channels_last: bool,
              fold: bool) -> tuple[nn.Module, torch.Tensor]:
    """The deployment form every backend starts from: eval mode, optionally conv+BN folded and channels_last."""
    model = model.eval()
    if fold:
        model = fold_conv_bn(model).eval()
    model = model.to(device)
    x = example.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def reference_output(model: nn.Module, example: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Eager fp32 output on `device` (TF32 off), returned on the CPU in fp32: the reference for rel_err.

    Leaves the model in fp32 on `device`; call before prepare(), which may cast the model.
    """
    device = torch.device(device)
    set_fp32_math(device.type, "fp32")
    model = model.eval().to(device)
    with torch.inference_mode():
        y = model(example.to(device))
    return y.float().cpu() if isinstance(y, torch.Tensor) else y  # anything else: bench.measure.outputs says why
