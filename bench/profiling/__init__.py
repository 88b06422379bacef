"""Where the time goes, per op kind, against a measured roofline (issue 13).

    p = profile_registry_model("block:large-kernel", 512, 512, threads=2, trace_path="lk.json.gz")
    p.by_kind(roofline)   # op_kind, time_ms, time_share, host_ms, macs, mac_share, bytes, intensity_macs_per_byte,
                          # gmacs_per_s, gbytes_per_s, calls (+ attainable_gmacs_per_s, roofline_frac, bound)
    p.by_module(); p.by_stage(); p.top_ops(15); p.profiled_ms vs an unprofiled median

Pieces (each module's docstring has its rule):
- opkinds: OP_KINDS, the one classifier (aten name + conv shapes; ONNX and TensorRT map onto it).
- modules: which module groups time lands in (stem, each stage, each block's mixer vs FFN, head), by path.
- torch_events: torch.profiler -> op units by SELF time; a call's implementation (conv2d -> mkldnn_convolution,
  linear -> addmm, SDPA -> the flash kernel) belongs to its outermost classifiable op.
- macs: MACs (FlopCounterMode's formulas, summing to models.complexity exactly) and lower-bound bytes per unit,
  by the same outermost-op rule.
- attribute: the pandas tables. ort_events / trt_events: the ONNX Runtime and TensorRT sources.
- bandwidth: the STREAM-like triad and the roofline (peak from bench.measure.calibrate).
- case: profile_model, profile_onnxruntime_model, profile_tensorrt_model, profile_registry_model, profile_case.

Names are re-exported lazily: importing the package imports neither torch nor pandas.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Profile": "case", "profile_model": "case", "profile_onnxruntime_model": "case",
    "profile_tensorrt_model": "case", "profile_registry_model": "case", "profile_case": "case",
    "OP_KINDS": "opkinds", "classify_aten": "opkinds", "conv_kind": "opkinds",
    "classify_onnx": "ort_events", "classify_trt_layer": "trt_events", "parse_trt_trace": "trt_events",
    "parse_ort_profile": "ort_events", "module_groups": "modules", "count_costs": "macs",
    "profile_torch": "torch_events", "triad_bandwidth": "bandwidth", "Roofline": "bandwidth",
    "attainable": "bandwidth", "measure_roofline": "bandwidth", "add_roofline": "bandwidth",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"bench.profiling.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'bench.profiling' has no attribute {name!r}")


__all__ = list(_EXPORTS)
