"""compile: torch.compile (inductor by default) with static shapes; autocast is traced into the graph.

Named torch_compile.py, not compile.py, so the module does not read as the builtin `compile`.
"""
from __future__ import annotations

import pathlib
import time
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends.base import Runner, amp_note, autocast_context, sync

NAME = "compile"


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """torch.compile covers every combination that passes the common checks, but int8 (not built yet)."""
    if precision == "int8":
        return "compile int8 (pt2e with the X86 inductor quantizer) is not built yet"
    return None


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Compile and run once: the first call traces and generates code, so it is the build time, not latency.

    Options: compile_mode, max_autotune (inductor), compile_backend ("eager"/"aot_eager": tracing only, for tests).
    """
    mode = options.get("compile_mode") or None  # None == "default"
    if options.get("max_autotune", False) and mode is None:
        mode = "max-autotune"
    compiler = options.get("compile_backend", "inductor")
    torch._dynamo.reset()  # fresh caches: no recompile limit carried over from an earlier case in this process
    if compiler == "inductor":
        compiled = torch.compile(model, backend="inductor", mode=mode, dynamic=False)
    else:
        compiled = torch.compile(model, backend=compiler, dynamic=False)
    info.update({"compiler": compiler, "mode": mode or "default", "dynamic": False,
                 "amp": amp_note(precision, "torch.autocast (traced into the graph)")})
    dt = device.type

    def fn() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(dt, precision):
            return compiled(x)

    t0 = time.perf_counter()
    fn()
    sync(device)
    build = time.perf_counter() - t0
    info["build"] = "first call: dynamo trace + inductor codegen + one run"
    return fn, build
