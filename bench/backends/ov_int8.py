"""OpenVINO int8 and what the CPU plugin ran: NNCF post-training quantization of the converted fp32 model, and the
compiled model's runtime graph read back (each node's layer type, runtime precision and shapes) for the
delegation record and the share of MACs that ran on int8 data.

Quantization (`quantize`): `nncf.quantize` on the converted ov.Model with the shared calibration set
(bench.backends.int8), all of it (subset_size = its length), preset PERFORMANCE (symmetric int8 activations, OV's
default for the CPU) and per-channel symmetric int8 weights (NNCF's default for convolutions and matmuls with a
weight). model_type TRANSFORMER was tried (evit-b1:msla at 512, 1 thread, attention matmuls kept float): rel_err
0.0057 against 0.0080 without it, no speed gain (102 against 94 ms best of 15): not used, the models are conv nets.
The compiled model keeps f32 as the inference precision, so what NNCF left unquantized runs f32 (this CPU plugin
would default to bf16 where the CPU has it).

Kept in float (`float_nodes`, option `int8_float_ops`, the ignored scope by node name, computed from the graph):
- "attention" (default): Divide (floating point), Softmax, ScaledDotProductAttention (softmax attention converts to
  one, and the plugin runs it as a fused subgraph) and MatMul nodes with two computed operands (attention's
  activation x activation matmuls). Measured (rel_err against eager fp32): evit-b0:msla at 256 0.0056 with them
  float, 0.18 with the matmuls int8 (0.17 with nothing excluded); evit-b1:msla at 512 0.0080 against 0.20, at no
  measurable cost (94 against 94 ms best of 15, 1 thread). The second linear-attention matmul produces numerator
  and denominator in one tensor, and one per-tensor scale quantizes both.
- "div-softmax": Divide, Softmax and ScaledDotProductAttention only (block:msla at 128: rel_err 0.065 to 0.095
  over four builds, against 0.12 to 0.13 with nothing excluded; with the matmuls int8 the error varies from build
  to build, with them float it does not: 0.0092 each time).
- "none": nothing excluded.

What ran (`runtime_nodes`): `compiled.get_runtime_model()`; every node there is executed by the CPU plugin (there
is no fallback device). MACs: a Convolution's output elements x its weight's (Cin/groups x kernel; a grouped
weight is [G, Cout/G, Cin/G, *kernel]); a MatMul's output elements x K; FullyConnected's output x K; a fused
attention subgraph (ScaledDotProductAttention) L x S x (E + Ev) per batch and head. A node is int8 when its
runtimePrecision is u8 or i8.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from bench.backends.base import Unsupported
from bench.backends.delegation import Delegation
from bench.backends.int8 import calibration_set

FLOAT_OPS = {"attention": ("Divide", "Softmax", "ScaledDotProductAttention", "MatMul"),
             "div-softmax": ("Divide", "Softmax", "ScaledDotProductAttention"), "none": ()}
DEFAULT_FLOAT_OPS = "attention"
_WHY = {"Divide": "division (linear attention's normaliser) kept float",
        "Softmax": "softmax kept float",
        "ScaledDotProductAttention": "softmax attention (QK^T, softmax, AV in one op) kept float",
        "MatMul": "activation x activation matmul (attention) kept float: one per-tensor scale would cover linear "
                  "attention's numerator and denominator"}
RUNTIME = "OpenVINO CPU plugin"
_NOT_RUN = frozenset({"Const", "Input", "Output", "Parameter", "Result", "Constant"})
_INT8 = frozenset({"u8", "i8"})


def float_policy(options: dict) -> tuple[str, tuple[str, ...]]:
    """The option `int8_float_ops` and its op types; Unsupported for an unknown value."""
    policy = str(options.get("int8_float_ops", DEFAULT_FLOAT_OPS))
    if policy not in FLOAT_OPS:
        raise Unsupported(f"unknown int8_float_ops {policy!r}; valid: {', '.join(FLOAT_OPS)}")
    return policy, FLOAT_OPS[policy]


def _computed(output: Any) -> bool:
    """An op input fed by computation, not by a constant (or a constant's conversion)."""
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() != "Constant"


def float_nodes(ov_model: Any, op_types: Iterable[str]) -> list[dict]:
    """The ops of `ov_model` of these types to keep in float, each {"name", "op", "why"}: a Divide only on
    floating-point data (not shape arithmetic), a MatMul only with two computed operands."""
    op_types = set(op_types)
    out = []
    for op in ov_model.get_ordered_ops():
        t = op.get_type_name()
        if t not in op_types:
            continue
        if t == "Divide" and not op.get_output_element_type(0).is_real():
            continue
        if t == "MatMul" and not all(_computed(op.input_value(i)) for i in range(2)):
            continue
        out.append({"name": op.get_friendly_name(), "op": t, "why": _WHY[t]})
    return out


def quantize(nncf: Any, ov_model: Any, x: torch.Tensor, options: dict) -> tuple[Any, dict]:
    """The quantized model and the `int8` entry's static part."""
    policy, op_types = float_policy(options)
    excluded = float_nodes(ov_model, op_types)
    data = [c.detach().cpu().contiguous().numpy() for c in calibration_set(x)]
    scope = nncf.IgnoredScope(names=[e["name"] for e in excluded])
    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # its INFO lines (one per ignored node) would flood the child's log
    try:
        q_model = nncf.quantize(ov_model, nncf.Dataset(data), preset=nncf.QuantizationPreset.PERFORMANCE,
                                subset_size=len(data), ignored_scope=scope)
    finally:
        nncf_logger.setLevel(level)
    return q_model, {"scheme": "NNCF post-training quantization (nncf.quantize, preset PERFORMANCE, min-max "
                               "ranges on the calibration set); the CPU plugin runs FakeQuantize-marked ops in int8",
                     "weights": "per-channel symmetric int8",
                     "activations": "per-tensor symmetric int8 (u8 where the data are non-negative)",
                     "float_ops": policy, "excluded": excluded}


@dataclass(frozen=True)
class RuntimeNode:
    """One node of the compiled model's runtime graph."""
    name: str
    layer: str
    precision: str
    macs: int = 0

    @property
    def int8(self) -> bool:
        return self.precision in _INT8


def _shape(partial: Any) -> list[int]:
    return [int(d.get_length()) for d in partial] if partial.is_static else []


def _rt(info: Any, key: str) -> str:
    return str(info[key].astype(str)) if key in info else ""


def layer_macs(layer: str, ins: list[list[int]], out: list[int], fused: str = "") -> int:
    """MACs of one runtime node from its shapes (0 for other layers or missing shapes)."""
    if not out or not ins or not ins[0]:
        return 0
    if layer == "Convolution" and len(ins) > 1 and len(ins[1]) >= 3:
        w = ins[1]
        return math.prod(out) * math.prod(w[2:] if len(w) == len(out) + 1 else w[1:])
    a = ins[0]
    if layer == "MatMul" and len(a) >= 2 and len(out) >= 2:
        return math.prod(out) * (a[-1] if a[-2] == out[-2] else a[-2])
    if layer == "FullyConnected":
        return math.prod(out) * a[-1]
    if "ScaledDotProductAttention" in fused and len(ins) >= 3 and len(ins[2]) >= 2:
        s = ins[2][-2]  # V is [..., S, Ev]; Q [..., L, E]; out [..., L, Ev]
        return (math.prod(a) + math.prod(out)) * s
    return 0


def runtime_nodes(compiled: Any) -> list[RuntimeNode]:
    """The executed nodes of the compiled model's runtime graph (constants, inputs and outputs left out)."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = _rt(info, "layerType")
        if layer in _NOT_RUN:
            continue
        ins = [_shape(op.input_value(i).get_partial_shape()) for i in range(op.get_input_size())]
        shape = _shape(op.get_output_partial_shape(0)) if op.get_output_size() else []
        out.append(RuntimeNode(op.get_friendly_name(), layer, _rt(info, "runtimePrecision"),
                               layer_macs(layer, ins, shape, _rt(info, "originalLayersNames"))))
    return out


def delegation(nodes: list[RuntimeNode]) -> Delegation:
    """Every runtime node is the plugin's: no fallback exists on the CPU plugin."""
    macs = sum(n.macs for n in nodes)
    return Delegation(RUNTIME, len(nodes), len(nodes), macs, macs)


def int8_share(nodes: list[RuntimeNode], excluded: Iterable[dict] = ()) -> dict:
    """The `int8` entry's graph-derived part: MACs in u8/i8 runtime nodes over all MAC-carrying nodes' MACs; each
    excluded node with the runtime precision of the node it ended in ("ran_as", by name; absent when fused away)."""
    total = sum(n.macs for n in nodes)
    q = sum(n.macs for n in nodes if n.int8)
    by_name = {n.name: n for n in nodes}
    marked = [{**e, "ran_as": f"{by_name[e['name']].layer} {by_name[e['name']].precision}" if e["name"] in by_name
               else "fused into another runtime node"} for e in excluded]
    return {"macs_share": round(q / total, 4) if total else None, "macs_int8": q, "macs_total": total,
            "int8_layers": dict(Counter(n.layer for n in nodes if n.int8 and n.macs)),
            "float_mac_layers": dict(Counter(f"{n.layer} {n.precision}" for n in nodes if n.macs and not n.int8)),
            "excluded": marked}
