"""Where the time goes in ONNX Runtime: its session profile (Chrome-trace JSON) -> OpTime units in the same kinds.

A session is opened with `enable_profiling` and graph optimisation lowered to BASIC by default (constant folding
and the fusions that keep op types: Conv+BatchNormalization / Add / Mul stay a "Conv"), so nodes are the exported
ops and not FusedConv / FusedMatMul / NCHWc reorders; those names are mapped back anyway (`classify_onnx`). The
exporter folds eval BatchNorm into the conv before ORT sees it, so compare ORT with a torch profile of the
folded model (profile_model(..., fold=True)).

Events with cat "Node" and a name ending in "_kernel_time" are the nodes' kernel times (dur, microseconds); the
first `skip_runs` "model_run" events (the warm-up: profiling starts with the session) are dropped by time.
A node's kind comes from args.op_name and, for a Conv, the weight shape in args.input_type_shape with groups =
Cin / weight[1]; where the event lacks shapes, the group attribute and initializer shape are read from the ONNX
graph ORT ran (the optimized model it writes). A node's module group comes from the exporter's scope: the
TorchScript exporter's node names (/context/fn/qkv/Conv) or the dynamo exporter's pkg.torch.onnx.name_scopes.

An int8 (QDQ) model is profiled at the timed session's level ("all"): only there are DequantizeLinear -> op ->
QuantizeLinear fused into the integer kernels that run (QLinearConv, QLinearMatMul, MatMulIntegerToFloat,
QLinearAdd, ...). QLinearConv's weight is its fourth input and is prepacked (absent from the event): its shape
comes from the graph. Quantize/DequantizeLinear are elementwise (a scale, a rounding), QLinearConcat layout.
"""
from __future__ import annotations

import ast
import json
import pathlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from bench.profiling.modules import ROOT, Group, group_of
from bench.profiling.opkinds import conv_kind
from bench.profiling.torch_events import OpTime

OPT_LEVELS = ("disable", "basic", "extended", "all")
_CONV = {"Conv", "FusedConv", "NhwcConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "NhwcQLinearConv"}
_WEIGHT_INPUT = {"QLinearConv": 3, "NhwcQLinearConv": 3}  # (x, x_scale, x_zero_point, w, ...); other convs: 1
_ONNX_KINDS: dict[str, tuple[str, ...]] = {
    "matmul": ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QLinearMatMul", "Einsum",
               "MatMulNBits", "DynamicQuantizeMatMul", "TransposeMatMul", "MatMulIntegerToFloat", "QGemm",
               "MatMulInteger16"),
    "attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                  "PackedMultiHeadAttention", "SparseAttention", "QAttention"),
    "softmax": ("Softmax", "LogSoftmax", "QLinearSoftmax"),
    "norm": ("BatchNormalization", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
             "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
             "GroupNorm", "RMSNormalization", "LpNormalization"),
    "resize": ("Resize", "Upsample", "GridSample"),
    "reduction": ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
                  "ReduceLogSumExp", "ReduceSumSquare", "GlobalAveragePool", "GlobalMaxPool", "AveragePool",
                  "MaxPool", "ArgMax", "ArgMin", "TopK", "CumSum", "LpPool", "QLinearGlobalAveragePool",
                  "QLinearAveragePool", "QLinearReduceMean"),
    "layout": ("Transpose", "Reshape", "Concat", "Pad", "Slice", "Split", "Gather", "GatherElements", "GatherND",
               "Expand", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
               "ConstantOfShape", "Cast", "CastLike", "Tile", "DepthToSpace", "SpaceToDepth", "ReorderInput",
               "ReorderOutput", "MemcpyToHost", "MemcpyFromHost", "ScatterND", "ScatterElements", "Range",
               "Trilu", "NonZero", "Compress", "OneHot", "QLinearConcat"),
    "elementwise": ("Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "HardSwish", "HardSigmoid", "Sigmoid",
                    "Tanh", "Erf", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp",
                    "Log", "Clip", "Max", "Min", "Where", "Equal", "Less", "LessOrEqual", "Greater",
                    "GreaterOrEqual", "Not", "And", "Or", "Xor", "LeakyRelu", "Elu", "Selu", "Celu", "PRelu",
                    "Softplus", "Softsign", "Mish", "Floor", "Ceil", "Round", "Sign", "Mod", "BiasAdd", "Dropout",
                    "ThresholdedRelu", "Shrink", "Sin", "Cos", "IsNaN", "IsInf", "Mean", "Sum", "BitShift",
                    "BiasSoftmax", "Swish", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearWhere"),
}
_BY_OP = {op: kind for kind, ops in _ONNX_KINDS.items() for op in ops}


@dataclass(frozen=True)
class NodeInfo:
    """What the ONNX graph says about one node: its op type, conv group and weight shape, module path."""
    op_type: str
    group: int | None = None
    weight_shape: tuple[int, ...] | None = None
    module: str = ""


def classify_onnx(op_type: str, input_shapes: Sequence[Sequence[int]] | None = None,
                  group: int | None = None) -> str:
    """The kind of an ONNX / ORT node (ORT's fused contrib ops included)."""
    if op_type in _CONV:  # FusedConv (conv + activation) is its conv's kind
        shapes = list(input_shapes or [])
        return conv_kind(shapes[0] if shapes else None, shapes[1] if len(shapes) > 1 else None, group)
    return _BY_OP.get(op_type, "other")


def _event_shapes(args: dict) -> list[list[int]]:
    """[{"float": [1, 128, 8, 8]}, ...] -> [[1, 128, 8, 8], ...]."""
    out = []
    for entry in args.get("input_type_shape") or []:
        shape = next(iter(entry.values()), []) if isinstance(entry, dict) and entry else []
        out.append([int(d) for d in shape] if isinstance(shape, list) else [])
    return out


def _module_from_node(node: Any) -> str:
    """The module path of an exported node: dynamo's name scopes, else the TorchScript name /a/b/c/Op."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                scopes = []
            if len(scopes) >= 2:
                return scopes[-2]  # the last entry names the op, the one before its module
    name = node.name or ""
    return _torchscript_path(name) if name.startswith("/") else ""


def _torchscript_path(name: str) -> str:
    """'/context/fn/aggreg.0/aggreg.0.0/Conv' -> 'context.fn.aggreg.0.0'. A scope is a path relative to its
    nearest scoped ancestor, so a scope extending the one before it (aggreg.0 -> aggreg.0.0) replaces it."""
    segments: list[str] = []
    for s in (p for p in name.split("/")[1:-1] if p):
        if segments and s.startswith(segments[-1] + "."):
            segments[-1] = s
        else:
            segments.append(s)
    return ".".join(segments)


def graph_nodes(onnx_path: str | pathlib.Path) -> dict[str, NodeInfo]:
    """Node name -> NodeInfo from an ONNX file (conv groups, weight initializer shapes, module paths)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: tuple(int(d) for d in i.dims) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        group = next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "group"), None)
        if node.op_type in _CONV and group is None:
            group = 1
        wi = _WEIGHT_INPUT.get(node.op_type, 1)
        weight = inits.get(node.input[wi]) if node.op_type in _CONV and len(node.input) > wi else None
        out[node.name] = NodeInfo(node.op_type, group, weight, _module_from_node(node))
    return out


def _runs(events: list[dict], skip_runs: int) -> list[tuple[float, float]]:
    runs = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    return runs[skip_runs:]


def parse_ort_profile(source: str | pathlib.Path | list[dict], *, skip_runs: int = 0,
                      nodes: dict[str, NodeInfo] | None = None, groups: dict[str, Group] | None = None
                      ) -> tuple[list[OpTime], int]:
    """(OpTime units, runs counted) from an ORT profile file or its parsed event list."""
    events = json.loads(pathlib.Path(source).read_text()) if not isinstance(source, list) else source
    runs = _runs(events, skip_runs)
    nodes, units = nodes or {}, {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        ts = float(e.get("ts", 0))
        if runs and not any(a <= ts <= b for a, b in runs):
            continue
        node_name, args = name[: -len("_kernel_time")], e.get("args") or {}
        unit = _node_unit(node_name, args, nodes.get(node_name), groups or {})
        key = (unit.op, unit.kind, unit.module, unit.shapes)
        unit = units.setdefault(key, unit)
        unit.time_us += float(e.get("dur", 0))
        unit.host_us += float(e.get("dur", 0))
        unit.calls += 1
    return list(units.values()), len(runs)


def _node_unit(node_name: str, args: dict, info: NodeInfo | None, groups: dict[str, Group]) -> OpTime:
    op_type = str(args.get("op_name") or (info.op_type if info else "unknown"))
    shapes = _event_shapes(args)
    wi = _WEIGHT_INPUT.get(op_type, 1)
    if op_type in _CONV and wi > 1:  # a QLinearConv: keep (x, w); a prepacked weight is absent from the event
        shapes = (shapes or [[]])[:1] + [next((s for s in shapes[1:] if len(s) >= 3), [])]
    if info and info.weight_shape and (len(shapes) < 2 or not shapes[1]):
        shapes = (shapes or [[]])[:1] + [list(info.weight_shape)]
    kind = classify_onnx(op_type, shapes, info.group if info else None)
    module = group_of(info.module, groups) if info and info.module and groups else (info.module if info else "")
    return OpTime(op_type, kind, module or ROOT, ", ".join(str(s) for s in shapes if s))


def profiled_session(ort: Any, onnx_path: str | pathlib.Path, workdir: pathlib.Path, *, threads: int,
                     opt_level: str = "basic", providers: Iterable[Any] = ("CPUExecutionProvider",)) -> Any:
    """An InferenceSession that profiles every run to workdir/ort_profile_*.json and writes the graph it runs to
    workdir/ort_optimized.onnx."""
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"unknown ORT optimisation level {opt_level!r}; valid: {', '.join(OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "ort_profile")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[opt_level]
    so.optimized_model_filepath = str(workdir / "ort_optimized.onnx")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=so, providers=list(providers))
