"""cudagraphs: one inference captured as a CUDA graph on a static input and replayed, which removes the
per-kernel launch overhead that dominates small models on a fast GPU."""
from __future__ import annotations

import pathlib
import time
from typing import Any, Mapping

import torch
from torch import nn

from bench.backends.base import Runner, amp_note, autocast_context

NAME = "cudagraphs"


def unsupported(device_type: str, precision: str, channels_last: bool, fold: bool) -> str | None:
    """CUDA graphs exist on CUDA only."""
    if device_type != "cuda":
        return "cudagraphs replays captured CUDA graphs: CUDA only"
    if precision == "int8":
        return "cudagraphs replays eager kernels, which have no int8 path (--backends tensorrt runs int8 on CUDA)"
    return None


def prepare(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, info: dict,
            options: Mapping[str, Any], workdir: pathlib.Path) -> tuple[Runner, float]:
    """Warm up on a side stream, capture, replay once; option `cudagraph_warmup` (default 3 iterations)."""
    warmup = int(options.get("cudagraph_warmup", 3))
    static_x = x.clone()
    dt = device.type
    t0 = time.perf_counter()
    # Warm up on a side stream (cuDNN/cuBLAS autotuning, lazy init), as CUDA graph capture requires.
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s), torch.no_grad(), autocast_context(dt, precision, cache_enabled=False):
        for _ in range(warmup):
            model(static_x)
    torch.cuda.current_stream(device).wait_stream(s)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    # autocast caching must be off inside capture (its cache would hold tensors freed after capture).
    with torch.cuda.graph(graph), torch.no_grad(), autocast_context(dt, precision, cache_enabled=False):
        static_y = model(static_x)
    graph.replay()
    torch.cuda.synchronize(device)
    build = time.perf_counter() - t0
    info.update({"warmup_iters": warmup, "capture": "torch.cuda.graph on a static input after side-stream warm-up",
                 "amp": amp_note(precision, "torch.autocast(cache_enabled=False) captured"),
                 "note": "fn returns the static output buffer, overwritten by the next replay"})

    def fn() -> torch.Tensor:
        graph.replay()
        return static_y

    return fn, build
