"""What an ExecuTorch program runs where, read from its lowered edge graph: the ops and MACs the XNNPACK delegate
took and those left to the portable kernels, the delegates' MAC-carrying nodes in order (the profile maps
XNNPACK's events onto them), and, for int8, which arithmetic runs on quantized data (read from the converted pt2e graph).

The lowered graph (`to_edge_transform_and_lower(...).exported_program().graph_module`, read BEFORE
`to_executorch()`, which rewrites it in place with memory-planning nodes) holds the ops the portable kernels run
at its top level and one `executorch_call_delegate` per delegated subgraph, whose `LoweredBackendModule` keeps
the edge nodes it was lowered from (`original_module`): counting both is what
`executorch.devtools.backend_debug.get_delegation_info` does. `getitem` (tuple indexing) is not an op and is not
counted.

MACs come from each node's `meta["val"]` shapes with torch.utils.flop_counter's formulas (FLOPs / 2), the ones
`models.complexity` sums, so a graph's MACs match `count_macs` wherever the edge graph keeps the model's
convolutions and matrix products (the softmax mixer's SDPA is decomposed into bmm there: same arithmetic).
"""
from __future__ import annotations

import math
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import flop_counter as fc

from bench.backends.delegation import Delegation
from bench.profiling.opkinds import classify_aten, conv_kind

RUNTIME = "XNNPACK"
_DELEGATE_CALL = "executorch_call_delegate"
_NOT_OPS = {"getitem", _DELEGATE_CALL}
_DEQUANT = ("dequantize_per_tensor", "dequantize_per_channel", "dequantize_per_token", "dequantize_affine")
_QUANT_OPS = ("quantize_per_tensor", "quantize_per_channel", "quantize_per_token", "quantize_affine",
              "choose_qparams") + _DEQUANT


@dataclass(frozen=True)
class MacNode:
    """One MAC-carrying node: its op, kind (bench.profiling.opkinds), MACs, module path and whether its data
    inputs are dequantized (it runs on int8 data)."""
    op: str
    kind: str
    macs: int
    module: str
    int8: bool


def op_name(target: Any) -> str:
    """'aten.expand_copy' for an aten / edge overload (overload dropped), 'getitem' for tuple indexing."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return str(schema.name).replace("::", ".")
    name = getattr(target, "__name__", None) or str(target)
    return name.rsplit(".", 1)[0] if name.count(".") >= 2 else name


def _base(op: str) -> str:
    return op.split(".")[-1]


def _shape(arg: Any) -> list[int] | None:
    """A node's (first) output shape from export's meta["val"] or ShapeProp's meta["tensor_meta"]."""
    meta = getattr(arg, "meta", None)
    if not isinstance(meta, dict):
        return None
    shape = None
    for key in ("val", "tensor_meta"):
        val = meta.get(key)
        if isinstance(val, (tuple, list)) and not hasattr(val, "shape") and val:  # a multi-output op
            val = val[0]
        shape = getattr(val, "shape", None)
        if shape is not None:
            break
    try:
        return [int(d) for d in shape] if shape is not None else None
    except TypeError:  # a symbolic size
        return None


def node_macs(node: Any) -> int:
    """MACs of one call_function node (convolution, mm, bmm, addmm, baddbmm, linear, matmul, scaled dot-product
    attention), 0 for others or when a shape is missing."""
    base, args = _base(op_name(node.target)), node.args
    shapes = [_shape(a) for a in args[:3]]
    out = _shape(node)
    try:
        if base in ("convolution", "conv2d", "conv1d", "conv3d", "_convolution") and shapes[0] and shapes[1] and out:
            transposed = bool(args[6]) if base in ("convolution", "_convolution") and len(args) > 6 else False
            return fc.conv_flop_count(shapes[0], shapes[1], out, transposed=transposed) // 2
        if base == "mm" and shapes[0] and shapes[1]:
            return fc.mm_flop(shapes[0], shapes[1]) // 2
        if base == "bmm" and shapes[0] and shapes[1]:
            return fc.bmm_flop(shapes[0], shapes[1]) // 2
        if base in ("addmm", "baddbmm") and shapes[1] and shapes[2]:
            flop = fc.mm_flop if base == "addmm" else fc.bmm_flop
            return flop(shapes[1], shapes[2]) // 2
        if base == "linear" and shapes[0] and shapes[1]:
            return math.prod(shapes[0][:-1]) * shapes[1][0] * shapes[1][1]
        if base == "matmul" and shapes[0] and out:
            return math.prod(out) * shapes[0][-1]
        if base == "scaled_dot_product_attention" and all(shapes):  # QK^T and AV, as models.complexity counts
            q, k, v = shapes
            return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])
    except (IndexError, TypeError, ValueError):
        return 0
    return 0


def _kind(node: Any) -> str:
    base = _base(op_name(node.target))
    if base in ("convolution", "conv2d", "conv1d", "_convolution"):
        return conv_kind(_shape(node.args[0]), _shape(node.args[1]))
    return classify_aten(base)


def _module(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _is_dequant(arg: Any) -> bool:
    return getattr(arg, "op", None) == "call_function" and _base(op_name(arg.target)) in _DEQUANT


def _data_inputs(node: Any) -> list[Any]:
    """The tensor operands whose precision decides the arithmetic (a conv's input and weight, both sides of a
    matrix product, attention's q, k, v; addmm's bias left out)."""
    base, args = _base(op_name(node.target)), node.args
    if base in ("addmm", "baddbmm"):
        return list(args[1:3])
    return list(args[:3]) if base == "scaled_dot_product_attention" else list(args[:2])


def mac_node(node: Any) -> MacNode | None:
    macs = node_macs(node)
    if not macs:
        return None
    int8 = all(_is_dequant(a) for a in _data_inputs(node))
    return MacNode(op_name(node.target), _kind(node), macs, _module(node), int8)


def _calls(graph_module: Any) -> Iterator[Any]:
    """call_function nodes, those of subgraphs a higher-order op runs (e.g. wrap_with_autocast) included; a
    delegate's lowered module is not a GraphModule and is not entered (see `delegates`)."""
    for n in graph_module.graph.nodes:
        if n.op != "call_function":
            continue
        yield n
        if op_name(n.target) == _DELEGATE_CALL:
            continue
        for a in n.args:
            sub = getattr(graph_module, a.target, None) if getattr(a, "op", None) == "get_attr" else None
            if sub is not None and hasattr(sub, "graph"):
                yield from _calls(sub)


def delegates(graph_module: Any) -> list[tuple[str, Any]]:
    """(backend id, original edge graph module) of each delegate call, in the order the program calls them."""
    out = []
    for n in _calls(graph_module):
        if op_name(n.target) == _DELEGATE_CALL:
            lowered = getattr(graph_module, n.args[0].target)
            out.append((str(lowered.backend_id), lowered.original_module.graph_module))
    return out


def _ops(graph_module: Any) -> list[Any]:
    return [n for n in _calls(graph_module) if op_name(n.target) not in _NOT_OPS]


def delegation(graph_module: Any) -> Delegation:
    """Ops and MACs in the delegates vs at the top level (the portable kernels), from the lowered graph."""
    inside = [n for _, sub in delegates(graph_module) for n in _ops(sub)]
    outside = _ops(graph_module)
    fallback = Counter(op_name(n.target) for n in outside)
    fallback_macs: Counter = Counter()
    for n in outside:
        fallback_macs[op_name(n.target)] += node_macs(n)
    macs_in = sum(node_macs(n) for n in inside)
    macs_out = sum(fallback_macs.values())
    return Delegation(runtime=RUNTIME, ops_total=len(inside) + len(outside), ops_delegated=len(inside),
                      macs_total=macs_in + macs_out, macs_delegated=macs_in, fallback=dict(fallback),
                      fallback_macs={k: v for k, v in fallback_macs.items() if v})


def delegate_mac_nodes(graph_module: Any) -> list[list[MacNode]]:
    """Per delegate call (program order), its MAC-carrying nodes in graph order."""
    return [[m for m in map(mac_node, _calls(sub)) if m] for _, sub in delegates(graph_module)]


def _annotated(node: Any) -> bool:
    annotation = node.meta.get("quantization_annotation")
    return bool(getattr(annotation, "_annotated", False))


def _kept_float(node: Any) -> bool:
    """An arithmetic op (not layout, not quantize/dequantize) the quantizer did not annotate: it runs in float
    between a dequantize and a quantize, or wholly in float (the mixers' autocast-disabled region)."""
    if not hasattr(node.target, "_schema") or _shape(node) is None:
        return False  # tuple indexing, a higher-order op's call (its body is visited), an op without a tensor out
    op = op_name(node.target)
    if _base(op) in _QUANT_OPS or op.startswith("quantized_decomposed") or _base(op).startswith("_assert"):
        return False
    if classify_aten(_base(op).removesuffix("_copy")) == "layout" or _base(op) == "_clone_dim_order":
        return False
    return not _annotated(node)


def int8_record(converted: Any, example: Any) -> dict:
    """The `int8` entry's graph-derived part, from the converted pt2e graph (convert_pt2e's output, whose nodes
    keep the quantizer's annotations; subgraphs of higher-order ops included): the arithmetic the quantizer left
    in float (op -> nodes) and the share of MACs in convs / matrix products whose operands are dequantized int8
    (the dequantize -> op -> quantize patterns the runtime runs as int8 kernels). Shapes are propagated on
    `example` first (convert_pt2e's new nodes carry none)."""
    with torch.no_grad():
        ShapeProp(converted).propagate(example)
    nodes = list(_calls(converted))
    floats = Counter(op_name(n.target) for n in nodes if _kept_float(n))
    macs = [m for m in map(mac_node, nodes) if m]
    total = sum(m.macs for m in macs)
    q = sum(m.macs for m in macs if m.int8)
    excluded = [f"{op} x{k}: kept in float (the quantizer did not annotate it)"
                for op, k in sorted(floats.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"excluded": excluded, "macs_share": round(q / total, 4) if total else None, "macs_int8": q,
            "macs_total": total}


def annotate_failure(quantizer: str, error: BaseException) -> str:
    """One line for a pt2e quantizer that raised while annotating a model (e.g. torchao 0.18's X86 quantizer
    asserts on a conv + add whose other operand it does not expect): where it failed and the first message line."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" in {frames[-1].name}" if frames else ""
    line = (str(error).strip().splitlines() or [""])[0][:160]
    return (f"{quantizer} failed to annotate this model ({type(error).__name__}{where}{': ' + line if line else ''}"
            "): a limitation of the quantizer for this graph")
