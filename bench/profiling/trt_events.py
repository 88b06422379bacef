"""Where the time goes in a TensorRT engine built by torch-tensorrt: its engine profile trace -> OpTime units.

torch-tensorrt's runtime module (`TorchTensorRTModule`) profiles its engine with `enable_profiling(
profiling_results_dir=..., profile_format="perfetto")`; the C++ runtime then writes
`<dir>/<engine>_engine_exectuion_profile.trace` (the misspelling is the real file name): a JSON list of
{"name": layer, "ph": "X", "ts", "dur", "pid": "<engine> Engine Execution", "tid", "args"} with one entry per
layer and `dur` the layer's time in microseconds SUMMED over every profiled invocation (divide by the runs).
Layer names carry the aten op each layer came from, `[CONVOLUTION]-[aten_ops.convolution.default]-[/conv_13]`;
TensorRT joins fused layers with " + ", whose kind is the first by bench.profiling.opkinds.fused_kind.

A convolution's kind needs its geometry, which the name does not give: pass the engine inspector's layer info
(`get_layer_info()`, JSON, detailed verbosity: Kernel, Groups, Inputs) and it is read from there; otherwise the
layer is "conv-unknown". Layers without an aten op (reformatting copies, Myelin foreign nodes) are classified
from their TensorRT layer type or the aten names inside them. TensorRT names carry no module path: module ROOT.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Mapping

import torch

from bench.profiling.modules import ROOT
from bench.profiling.opkinds import classify_aten, conv_kind, fused_kind
from bench.profiling.torch_events import OpTime

TRACE_SUFFIX = "_engine_exectuion_profile.trace"
_PART = re.compile(r"\[([A-Za-z_ ]+)\]-\[([^\]]*)\]-\[([^\]]*)\]")
_ATEN = re.compile(r"aten_ops\.([A-Za-z0-9_]+)|aten\.([A-Za-z0-9_]+)")
_LAYER_TYPES = {"CONVOLUTION": "conv-unknown", "DECONVOLUTION": "other", "MATRIX_MULTIPLY": "matmul",
                "FULLY_CONNECTED": "matmul", "SOFTMAX": "softmax", "NORMALIZATION": "norm", "RESIZE": "resize",
                "REDUCE": "reduction", "POOLING": "reduction", "ACTIVATION": "elementwise",
                "ELEMENTWISE": "elementwise", "UNARY": "elementwise", "SCALE": "elementwise",
                "SELECT": "elementwise", "SHUFFLE": "layout", "CONCATENATION": "layout", "SLICE": "layout",
                "PADDING": "layout", "GATHER": "layout", "CONSTANT": "layout", "IDENTITY": "layout", "CAST": "layout",
                "SHAPE": "layout", "REFORMAT": "layout", "ATTENTION": "attention"}


def _conv_from_layer(layer: Mapping[str, Any] | None) -> str:
    """A conv kind from an engine-inspector layer entry (Kernel, Groups, Inputs[0].Dimensions)."""
    if not layer or "Kernel" not in layer:
        return "conv-unknown"
    kernel = [int(k) for k in layer["Kernel"]]
    groups = int(layer.get("Groups", 1))
    dims = ((layer.get("Inputs") or [{}])[0] or {}).get("Dimensions") or []
    cin = int(dims[1]) if len(dims) > 1 else None
    if cin is None:
        return "conv-unknown"
    out_maps = int(layer.get("OutMaps", groups))
    return conv_kind([1, cin], [out_maps, max(1, cin // groups)] + kernel, groups)


def _part_kind(layer_type: str, target: str, layer: Mapping[str, Any] | None) -> str:
    m = _ATEN.search(target)
    if m:
        kind = classify_aten(m.group(1) or m.group(2))
        if kind == "conv-unknown":
            return _conv_from_layer(layer)
        if kind != "other":
            return kind
    kind = _LAYER_TYPES.get(layer_type.strip().upper().replace(" ", "_"), "other")
    return _conv_from_layer(layer) if kind == "conv-unknown" else kind


def classify_trt_layer(name: str, layer: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(op, kind) of one TensorRT layer name; op is the first aten op named in it (or the layer type)."""
    if name.lower().startswith("reformatting") or "copynode" in name.lower():
        return "reformat", "layout"  # a layout copy TensorRT inserted (its name quotes the layer it feeds)
    parts = _PART.findall(name)
    if parts:
        kinds = [_part_kind(t, target, layer) for t, target, _ in parts]
        m = _ATEN.search(parts[0][1])
        op = (m.group(1) or m.group(2)) if m else parts[0][0].lower()
        return op, fused_kind(kinds)
    atens = [a or b for a, b in _ATEN.findall(name)]
    if atens:  # e.g. a Myelin foreign node listing the ops it fused
        return atens[0], fused_kind([classify_aten(a) for a in atens])
    return "layer", "other"


def layer_details(layer_info: str | Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Layer name -> detailed entry from the engine inspector's JSON (empty when the info has names only)."""
    if not layer_info:
        return {}
    info = json.loads(layer_info) if isinstance(layer_info, str) else layer_info
    layers = info.get("Layers", []) if isinstance(info, Mapping) else info
    return {str(e.get("Name")): e for e in layers if isinstance(e, Mapping) and e.get("Name")}


def _trace_events(source: str | pathlib.Path | list | Mapping) -> list[dict]:
    data = source
    if isinstance(source, (str, pathlib.Path)):
        data = json.loads(pathlib.Path(source).read_text())
    if isinstance(data, Mapping):
        data = data.get("traceEvents", [])
    return [e for e in data if isinstance(e, Mapping)]


def parse_trt_trace(source: str | pathlib.Path | list | Mapping, *, layer_info: Any = None) -> list[OpTime]:
    """OpTime units (time summed as the trace sums it, calls = 1 per layer) from a torch-tensorrt engine trace:
    the perfetto list (name/dur in microseconds) or a TREx-style list (name/timeMs); `layer_info` as
    `layer_details` takes it. Each layer is a unit; its `shapes` field holds the layer's full name."""
    details = layer_details(layer_info)
    units: dict[tuple[str, str], OpTime] = {}
    for e in _trace_events(source):
        name = str(e.get("name", ""))
        if not name or (e.get("ph", "X") != "X" and "timeMs" not in e):
            continue
        us = float(e["dur"]) if "dur" in e else float(e.get("timeMs", 0.0)) * 1e3
        op, kind = classify_trt_layer(name, details.get(name))
        unit = units.setdefault((name, kind), OpTime(op, kind, ROOT, name))
        unit.time_us += us  # host time: not in the trace (0)
        unit.calls += 1
    return list(units.values())


def find_traces(directory: str | pathlib.Path) -> list[pathlib.Path]:
    return sorted(pathlib.Path(directory).glob("*" + TRACE_SUFFIX))


def trt_modules(module: Any) -> list[Any]:
    """The TorchTensorRTModule submodules of a torch-tensorrt compiled module (itself included)."""
    from torch_tensorrt.runtime import TorchTensorRTModule  # the optional extra, GPU only

    return [m for m in module.modules() if isinstance(m, TorchTensorRTModule)]


def profile_trt(module: Any, fn: Any, directory: str | pathlib.Path, *, iters: int = 5,
                warmup: int = 3) -> tuple[list[OpTime], int]:
    """Profile `iters` calls of `fn` (which runs `module`, compiled by torch-tensorrt) with the engines' own
    profiler; returns (units with times summed over the iterations, iters). GPU and torch-tensorrt only."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    engines = trt_modules(module)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    for m in engines:
        m.enable_profiling(profiling_results_dir=str(directory), profile_format="perfetto")
    try:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    finally:
        for m in engines:
            m.disable_profiling()
    infos = {}
    for m in engines:
        try:
            infos.update(layer_details(m.get_layer_info()))
        except Exception:  # layer info needs detailed verbosity; without it convs stay conv-unknown
            pass
    layers = {"Layers": list(infos.values())}
    return [u for path in find_traces(directory) for u in parse_trt_trace(path, layer_info=layers)], iters
