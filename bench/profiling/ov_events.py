"""Where the time goes in OpenVINO: the CPU plugin's per-node profile (`InferRequest.get_profiling_info()`) ->
OpTime units in the same kinds as the other sources.

The model is built as the openvino backend builds it (bench.backends.openvino.compile_case: convert, NNCF for
int8, the same hint, threads and inference precision) with `enable_profiling` on, run `warmup` times, then `iters`
times, reading the profile after each run (the plugin reports the last inference only). Each ProfilingInfo gives
node_name, node_type (the op type before the plugin's fusions: Convolution, GroupConvolution, MatMul, Subgraph,
Reorder, ...), exec_type (the kernel, e.g. brgconv_avx512_1x1_I8, jit_avx512_f32: it says the precision), status
and real_time / cpu_time. Only EXECUTED nodes count: NOT_RUN and OPTIMIZED_OUT ones were fused into another node
(a FakeQuantize into its convolution) or removed, and carry no time.

- Kind (`classify_ov`): convolutions by their runtime input and weight shapes (conv_kind; a grouped weight is
  [G, Cout/G, Cin/G, *kernel]), matmuls, softmax, norms (MVN), resize (Interpolate), layout (Reorder, Transpose,
  Reshape, Concat, Split, Pad, Convert, ...), elementwise (Eltwise, Multiply, Add, FakeQuantize, and "Subgraph":
  the plugin's fused elementwise chains), reduction (Reduce*, pooling). A Subgraph that holds a
  ScaledDotProductAttention (softmax attention's fused QK^T, softmax, AV) is attention.
- Op: "<node_type> (<exec_type>)", so int8 and f32 kernels of one type are separate rows.
- Module: the converter names a node after its torch module ("__module.context.fn.qkv/aten::_convolution/...");
  a node renamed by the plugin's fusions ("Multiply_3940") takes the module of the first original layer that has
  one (the runtime graph's originalLayersNames), else the model root.
- Parallel execution can make node times sum past the wall time of an inference: `info["node_sum_ms"]` (summed
  real_time per inference) is recorded beside `info["wall_ms"]` (median wall time of the profiled inferences) and
  their ratio, never rescaled. block:msla at 256, 2 threads: nodes summed to 2.15 ms in an inference of 1.12 ms.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn

from bench.backends.openvino import compile_case
from bench.profiling.modules import ROOT, Group, group_of
from bench.profiling.opkinds import conv_kind
from bench.profiling.torch_events import OpTime

_CONV = frozenset({"Convolution", "GroupConvolution", "BinaryConvolution", "DeformableConvolution"})
_OV_KINDS: dict[str, tuple[str, ...]] = {
    "matmul": ("MatMul", "FullyConnected", "Gemm", "FullyConnectedCompressed", "Einsum"),
    "attention": ("ScaledDotProductAttention", "SDPA", "ScaledDotProductAttentionWithKVCache", "PagedAttention",
                  "MHA"),
    "softmax": ("Softmax", "SoftMax", "LogSoftmax"),
    "norm": ("MVN", "NormalizeL2", "BatchNormInference", "RMS", "LayerNorm", "GroupNormalization"),
    "resize": ("Interpolate", "GridSample"),
    "layout": ("Reorder", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Concatenation", "Split",
               "VariadicSplit", "Gather", "GatherND", "GatherElements", "Pad", "Broadcast", "StridedSlice",
               "Slice", "Convert", "ShapeOf", "Tile", "DepthToSpace", "SpaceToDepth", "ScatterUpdate",
               "ScatterNDUpdate", "ScatterElementsUpdate", "Roll", "Range", "Input", "Output", "Parameter",
               "Result", "Const", "Constant"),
    "elementwise": ("Eltwise", "Subgraph", "Multiply", "Add", "Subtract", "Divide", "Power", "PowerStatic",
                    "Relu", "Clamp", "Sigmoid", "HSwish", "HSigmoid", "Swish", "Gelu", "Exp", "Log", "Sqrt",
                    "Maximum", "Minimum", "FakeQuantize", "Select", "Greater", "Less", "Equal", "Erf", "Tanh",
                    "Abs", "Mish", "SoftPlus", "PRelu", "Elu", "Round", "Floor", "Ceiling", "Mod", "FloorMod",
                    "Negative", "SquaredDifference", "LogicalNot", "LogicalAnd", "LogicalOr", "Sign", "Math"),
    "reduction": ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                  "Reduce", "AvgPool", "MaxPool", "Pooling", "AdaptiveAvgPool", "AdaptiveMaxPool", "CumSum",
                  "TopK"),
}
_BY_TYPE = {t: kind for kind, types in _OV_KINDS.items() for t in types}
_MODULE_PREFIX = "__module."


def classify_ov(node_type: str, shapes: Sequence[Sequence[int]] | None = None, fused: str = "") -> str:
    """The kind of one OpenVINO CPU node: `shapes` its runtime input shapes (a conv's input and weight), `fused`
    its runtime originalLayersNames (a Subgraph's fused ops)."""
    if node_type in _CONV:
        shapes = list(shapes or [])
        x, w = (shapes[0] if shapes else []), (shapes[1] if len(shapes) > 1 else [])
        if x and w and len(w) == len(x) + 1:  # grouped: [G, Cout/G, Cin/G, *kernel]
            return conv_kind(x, [w[0] * w[1], *w[2:]], w[0])
        return conv_kind(x or None, w or None)
    if node_type == "Subgraph" and "ScaledDotProductAttention" in fused:
        return "attention"
    return _BY_TYPE.get(node_type, "other")


def module_of(name: str, fused: str = "") -> str:
    """'__module.context.fn.qkv/aten::_convolution/Convolution' -> 'context.fn.qkv'; a renamed node takes the
    first of its original layers that carries a module; '' if none does."""
    for n in [name, *fused.split(",")]:
        n = n.strip()
        if n.startswith(_MODULE_PREFIX):
            return n[len(_MODULE_PREFIX):].split("/", 1)[0]
    return ""


def _runtime(compiled: Any) -> dict[str, tuple[list[list[int]], str]]:
    """Runtime node name -> (input shapes, originalLayersNames)."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        shapes = []
        for i in range(op.get_input_size()):
            p = op.input_value(i).get_partial_shape()
            shapes.append([int(d.get_length()) for d in p] if p.is_static else [])
        out[op.get_friendly_name()] = (shapes, str(info["originalLayersNames"].astype(str))
                                       if "originalLayersNames" in info else "")
    return out


def _add(units: dict, p: Any, runtime: dict, groups: dict[str, Group]) -> None:
    shapes, fused = runtime.get(p.node_name, ([], ""))
    kind = classify_ov(p.node_type, shapes, fused)
    module = module_of(p.node_name, fused)
    module = (group_of(module, groups) if groups else module) if module else ROOT
    unit = OpTime(f"{p.node_type} ({p.exec_type})", kind, module or ROOT, ", ".join(str(s) for s in shapes if s))
    unit = units.setdefault((unit.op, unit.kind, unit.module, unit.shapes), unit)
    unit.time_us += p.real_time.total_seconds() * 1e6
    unit.host_us += p.cpu_time.total_seconds() * 1e6
    unit.calls += 1


def profile_openvino(model: nn.Module, example: torch.Tensor, *, precision: str = "fp32", iters: int = 5,
                     warmup: int = 3, groups: dict[str, Group] | None = None) -> tuple[list[OpTime], int, dict]:
    """(OpTime units summed over `iters` profiled inferences, iters, info) for `model` built as the openvino
    backend builds it (torch's thread count), with profiling on."""
    import openvino as ov  # the optional extra; compile_case has imported it with telemetry declined

    x = example.detach().contiguous()
    built = compile_case(model.eval(), x, precision, {}, profiling=True)
    request = built.compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(x.cpu().numpy(), shared_memory=True))
    runtime = _runtime(built.compiled)
    for _ in range(warmup):
        request.infer()
    units: dict = {}
    walls, statuses = [], {}
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        request.infer()
        walls.append((time.perf_counter() - t0) * 1e3)
        for p in request.get_profiling_info():
            status = str(p.status).rsplit(".", 1)[-1]
            statuses[status] = statuses.get(status, 0) + 1
            if status == "EXECUTED":
                _add(units, p, runtime, groups or {})
    n = max(1, iters)
    node_sum = sum(u.time_us for u in units.values()) / 1e3 / n
    wall = statistics.median(walls)
    info = {**built.info, "precision": precision, "runs": n,
            "node_sum_ms": round(node_sum, 4), "cpu_sum_ms": round(sum(u.host_us for u in units.values()) / 1e3 / n, 4),
            "wall_ms": round(wall, 4), "node_sum_over_wall": round(node_sum / wall, 3) if wall > 0 else None,
            "nodes_per_run": {k: v // n for k, v in statuses.items()},
            "note": "node times are the plugin's per-node real_time; with parallel execution they may sum past "
                    "the wall time (node_sum_over_wall > 1): not rescaled"}
    return list(units.values()), n, info
