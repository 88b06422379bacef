"""onnxruntime int8 and what the CPU execution provider ran: static QDQ quantization of the exported fp32 graph,
and a one-run profiled look at the optimised graph (node list, provider, shapes) for the delegation record and the
share of MACs that really ran on int8 data.

Quantization (`quantize`): `quant_pre_process` (symbolic + ONNX shape inference and ORT's basic optimisation, as
ORT's quantization guide recommends before static quantization), then `quantize_static` in QDQ format with MinMax
ranges from the shared calibration set (bench.backends.int8): weights per-channel symmetric int8, activations
per-tensor asymmetric uint8 (U8S8). On x86-64 U8S8 is the pair ORT's MLAS kernels are built for (VPMADDUBSW /
AVX512-VNNI VPDPBUSD take u8 x s8); with int8 activations (S8S8) ORT left two of block:msla's four convs and one
of its two matmuls as float Conv/MatMul between DequantizeLinear and QuantizeLinear (measured, onnxruntime 1.32).

Kept in float (`float_nodes`, option `int8_float_ops`, computed from the graph by op type):
- "attention" (default): Div, Softmax, and MatMul nodes whose two operands are both computed (activation x
  activation: linear attention's K^T V and Q(K^T V), softmax attention's QK^T and AV). The second linear-attention
  matmul produces numerator and denominator in one tensor, so one per-tensor scale quantizes both. Measured on
  evit-b0:msla at 256 (seeds 0, 1): rel_err 0.018 / 0.026 without exclusions, 0.0084 / 0.0087 with them. An
  excluded node only loses its own QDQ pair: when both inputs still arrive quantized (K^T V: relu(K) and pad(V) are
  quantized data movement) ORT fuses it into MatMulIntegerToFloat anyway; each excluded entry says what it ran as
  (`int8_share`).
- "div-softmax": Div and Softmax only. ORT's QDQ quantizer has no int8 Div, so Div stays float either way; Softmax
  it would quantize (block:softmax: rel_err 0.0136 quantized, 0.0134 float).
- "none": nothing excluded.

What ran (`ran_nodes`): a separate session with the timed session's options plus profiling writes the optimised
graph and profiles one run; each node event gives op, provider and runtime shapes. MACs: a convolution's output
elements x its weight's (Cin/groups x kernel); a matmul's output elements x K. A prepacked weight missing from the
event is read from the optimised graph's initializers. A float conv in ORT's NCHWc blocked layout (fp32 graphs)
computes its channels padded to the block, and its shapes say so: evit-b0:msla at 256 fp32 counts 144.7 M MACs
here against 137.2 M on the model (the int8 graph, without NCHWc convs, counts 137.2 M exactly). Int8 ops are the
integer kernels (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, MatMulIntegerToFloat, ...); a
Conv/MatMul/Gemm between DequantizeLinear nodes runs float.
"""
from __future__ import annotations

import json
import pathlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from bench.backends.base import Unsupported
from bench.backends.delegation import Delegation
from bench.backends.int8 import calibration_set

FLOAT_OPS = {"attention": ("Div", "Softmax", "MatMul"), "div-softmax": ("Div", "Softmax"), "none": ()}
DEFAULT_FLOAT_OPS = "attention"
_WHY = {"Div": "division (linear attention's normaliser): float; ORT's QDQ quantizer has no int8 Div",
        "Softmax": "softmax kept float",
        "MatMul": "activation x activation matmul (attention): kept float, one per-tensor scale would cover "
                  "linear attention's numerator and denominator"}
CPU_EP = "CPUExecutionProvider"
INT8_OPS = frozenset({"QLinearConv", "NhwcQLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger",
                      "MatMulInteger16", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention"})
_CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "QLinearConv", "NhwcQLinearConv",
                       "ConvInteger"})
_MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "TransposeMatMul", "Gemm", "FusedGemm", "QLinearMatMul",
                         "MatMulInteger", "MatMulInteger16", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                         "QGemm"})
_WEIGHT_INPUT = {"QLinearConv": 3, "NhwcQLinearConv": 3}  # other convs: input 1


def float_policy(options: dict) -> tuple[str, tuple[str, ...]]:
    """The option `int8_float_ops` and its op types; Unsupported for an unknown value."""
    policy = str(options.get("int8_float_ops", DEFAULT_FLOAT_OPS))
    if policy not in FLOAT_OPS:
        raise Unsupported(f"unknown int8_float_ops {policy!r}; valid: {', '.join(FLOAT_OPS)}")
    return policy, FLOAT_OPS[policy]


def float_nodes(graph: Any, op_types: Iterable[str]) -> list[dict]:
    """The nodes of `graph` (onnx GraphProto) of these op types to keep in float, each {"name", "op", "why"};
    a MatMul only when both operands are computed (neither an initializer nor a Constant's output)."""
    op_types = set(op_types)
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for n in graph.node:
        if n.op_type not in op_types:
            continue
        if n.op_type == "MatMul" and any(i in consts for i in n.input[:2]):
            continue
        out.append({"name": n.name, "op": n.op_type, "why": _WHY[n.op_type]})
    return out


class _Reader:
    """onnxruntime's CalibrationDataReader protocol (its ABC accepts any class with get_next) over the shared
    calibration set: one feed per image, then None."""

    def __init__(self, name: str, x: torch.Tensor) -> None:
        self._feeds = iter([{name: c.detach().cpu().contiguous().numpy()} for c in calibration_set(x)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # part of the protocol; MinMax reads the set once
        pass


def quantize(fp32_path: pathlib.Path, out_path: pathlib.Path, x: torch.Tensor, options: dict) -> dict:
    """Pre-process and QDQ-quantize `fp32_path` into `out_path`; returns the `int8` entry's static part."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    policy, op_types = float_policy(options)
    pre = out_path.with_name(out_path.stem + "_pre.onnx")
    # The graph's shapes are static, so ONNX shape inference has them all; ORT's symbolic pass is skipped because
    # when it cannot finish it saves sym_shape_infer_temp.onnx into the current directory (the user's).
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre), load_external_data=False).graph
    excluded = float_nodes(graph, op_types)
    reader = _Reader(graph.input[0].name, x)
    quantize_static(str(pre), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    nodes_to_exclude=[e["name"] for e in excluded], extra_options={"WeightSymmetric": True})
    return {"scheme": "onnxruntime static QDQ (quant_pre_process, quantize_static, MinMax calibration); the CPU EP "
                      "fuses DequantizeLinear -> op -> QuantizeLinear into integer kernels",
            "weights": "per-channel symmetric int8",
            "activations": "per-tensor asymmetric uint8 (U8S8, the pair ORT's x86 kernels are built for)",
            "float_ops": policy, "excluded": excluded}


@dataclass(frozen=True)
class RanNode:
    """One node of the graph ORT ran: its name, op, execution provider, MACs and whether they ran on int8."""
    name: str
    op: str
    provider: str
    macs: int = 0
    int8: bool = False


def ran_nodes(ort: Any, model_path: pathlib.Path, so: Any, providers: list, x: torch.Tensor,
              workdir: pathlib.Path) -> list[RanNode]:
    """Open a profiled session with the options `so` (also writing the optimised graph), run it once on `x`
    and read each node's op, provider and shapes from the profile."""
    import onnx

    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "ort_graph_profile")
    so.optimized_model_filepath = str(workdir / "ort_ran.onnx")
    sess = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
    sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().contiguous().numpy()})
    events = json.loads(pathlib.Path(sess.end_profiling()).read_text())
    del sess
    graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    inits = {i.name: [int(d) for d in i.dims] for i in graph.initializer}
    weights = {n.name: inits.get(n.input[_WEIGHT_INPUT.get(n.op_type, 1)]) for n in graph.node
               if n.op_type in _CONV_OPS and len(n.input) > _WEIGHT_INPUT.get(n.op_type, 1)}
    return [_ran(e, weights) for e in events
            if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]


def _shapes(entries: Any) -> list[list[int]]:
    out = []
    for entry in entries or []:
        shape = next(iter(entry.values()), []) if isinstance(entry, dict) and entry else []
        out.append([int(d) for d in shape] if isinstance(shape, list) else [])
    return out


def _prod(shape: Iterable[int]) -> int:
    p = 1
    for d in shape:
        p *= int(d)
    return p


def _ran(event: dict, weights: dict[str, list[int] | None]) -> RanNode:
    args = event.get("args") or {}
    name, op = event["name"][: -len("_kernel_time")], str(args.get("op_name", ""))
    ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
    return RanNode(name, op, str(args.get("provider", "")), node_macs(op, ins, outs, weights.get(name)),
                   op in INT8_OPS)


def node_macs(op: str, ins: list[list[int]], outs: list[list[int]], graph_weight: list[int] | None = None) -> int:
    """MACs of one conv / matmul node from its runtime shapes (0 for other ops or missing shapes)."""
    out = outs[0] if outs else []
    if not out:
        return 0
    if op in _CONV_OPS:
        wi = _WEIGHT_INPUT.get(op, 1)
        w = ins[wi] if len(ins) > wi and len(ins[wi]) >= 3 else graph_weight
        return _prod(out) * _prod(w[1:]) if w and len(w) >= 3 else 0
    if op in _MATMUL_OPS and ins and len(ins[0]) >= 2 and len(out) >= 2:
        a = ins[0]
        k = a[-1] if a[-2] == out[-2] else a[-2]  # A is [..., M, K], or [..., K, M] when transposed
        return _prod(out) * k
    return 0


def delegation(nodes: list[RanNode], provider: str = CPU_EP, runtime: str = "onnxruntime CPU EP") -> Delegation:
    """Counts over the nodes ORT ran: those on `provider` are delegated, the others fell back."""
    off = [n for n in nodes if n.provider != provider]
    fallback_macs: Counter = Counter()
    for n in off:
        fallback_macs[n.op] += n.macs
    return Delegation(runtime, len(nodes), len(nodes) - len(off), sum(n.macs for n in nodes),
                      sum(n.macs for n in nodes if n.provider == provider), dict(Counter(n.op for n in off)),
                      {k: v for k, v in fallback_macs.items() if v})


def int8_share(nodes: list[RanNode], excluded: Iterable[dict] = ()) -> dict:
    """The `int8` entry's graph-derived part: MACs on int8 kernels over all conv / matmul MACs that ran, and each
    excluded node with the op it ran as ("ran_as"): excluding a node only withholds its own QDQ pair, so an
    excluded MatMul whose two inputs arrive quantized from their producers is still fused into an integer kernel
    (MatMulIntegerToFloat), and the share counts it as int8."""
    total = sum(n.macs for n in nodes)
    q = sum(n.macs for n in nodes if n.int8)
    by_name = {n.name: n for n in nodes}
    marked = []
    for e in excluded:
        ran = by_name.get(e["name"]) or next((n for n in nodes if n.name.startswith(e["name"] + "_token")), None)
        ran_as = ran.op if ran else "not in the graph ORT ran (fused or removed)"
        why = e["why"] + (f"; ran as {ran.op} anyway (its inputs arrive quantized)" if ran and ran.int8 else "")
        marked.append({**e, "why": why, "ran_as": ran_as})
    return {"macs_share": round(q / total, 4) if total else None, "macs_int8": q, "macs_total": total,
            "int8_ops": dict(Counter(n.op for n in nodes if n.int8 and n.macs)),
            "float_mac_ops": dict(Counter(n.op for n in nodes if n.macs and not n.int8)), "excluded": marked}
