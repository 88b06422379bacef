"""bench.profiling: op kinds, time attribution, MACs per kind, ORT / TensorRT sources, bandwidth and roofline.

Timing assertions are shares of one profile (never absolute times): a module made of one heavy op must put most
of its time in that op's kind, whatever the machine's speed or load.
"""
from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.profiling.attribute import KIND_COLUMNS, MODULE_COLUMNS, TOP_COLUMNS
from bench.profiling.bandwidth import Roofline, add_roofline, measure_roofline, triad_bandwidth
from bench.profiling.case import profile_model, profile_registry_model
from bench.profiling.macs import count_costs, total_macs, totals_by_kind
from bench.profiling.modules import ROOT, Group, group_of, module_groups
from bench.profiling.opkinds import OP_KINDS, classify_aten, conv_kind, is_kind, kind_order
from bench.profiling.ort_events import NodeInfo, _torchscript_path, classify_onnx, parse_ort_profile
from bench.profiling.trt_events import classify_trt_layer, parse_trt_trace
from models.complexity import count_macs
from models.registry import build_model, example_input

THREADS = 2
DOMINANT = 0.8  # a lone heavy op vs Python/hook overhead around it: in practice > 0.98


# --------------------------------------------------------------------------------------------------------------
# the classifier


@pytest.mark.parametrize("weight, cin, kind", [
    ((256, 128, 1, 1), 128, "conv-1x1"),
    ((64, 3, 3, 3), 3, "conv-dense"),
    ((384, 16, 1, 1), 384, "conv-grouped"),
    ((128, 1, 3, 3), 128, "dw3"),
    ((128, 1, 5, 5), 128, "dw5"),
    ((128, 1, 7, 7), 128, "dw7"),
    ((128, 1, 21, 21), 128, "dw21"),
    ((128, 1, 9, 9), 128, "dw9"),
    ((128, 1, 1, 7), 128, "dw-strip-1x7"),
    ((128, 1, 7, 1), 128, "dw-strip-7x1"),
    ((128, 1, 1, 11), 128, "dw-strip-1x11"),
    ((128, 1, 11, 1), 128, "dw-strip-11x1"),
    ((128, 1, 1, 21), 128, "dw-strip-1x21"),
    ((128, 1, 21, 1), 128, "dw-strip-21x1"),
    ((128, 1, 3, 5), 128, "dw3x5"),
    ((256, 1, 3, 3), 128, "dw3"),  # depth multiplier 2 is still depthwise
])
def test_conv_kinds_from_shapes(weight, cin, kind):
    shapes = [[1, cin, 32, 32], list(weight), [weight[0]], [], [], [], []]
    for name in ("aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
                 "aten.conv2d.default", "aten::cudnn_convolution"):
        assert classify_aten(name, shapes) == kind, name
    assert is_kind(kind)
    assert classify_onnx("Conv", shapes[:2]) == kind
    groups = cin // weight[1]
    assert classify_onnx("Conv", [[]], group=groups) == "conv-unknown"  # no weight shape: not guessed
    assert conv_kind(None, weight, groups) == kind  # groups given (ONNX attribute): the input is not needed


@pytest.mark.parametrize("names, kind", [
    (("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear", "aten::einsum"),
     "matmul"),
    (("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
      "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
      "aten::_scaled_dot_product_cudnn_attention"), "attention"),
    (("aten::softmax", "aten::_softmax", "aten::log_softmax"), "softmax"),
    (("aten::batch_norm", "aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training",
      "aten::layer_norm", "aten::native_layer_norm", "aten::group_norm", "aten::native_group_norm"), "norm"),
    (("aten::relu", "aten::relu_", "aten::gelu", "aten::hardswish", "aten::add", "aten::mul", "aten::div",
      "aten::clamp_min"), "elementwise"),
    (("aten::upsample_bilinear2d", "aten::upsample_bicubic2d", "aten::upsample_nearest2d"), "resize"),
    (("aten::add.Tensor", "aten::div.Tensor", "aten.mul.Tensor"), "elementwise"),
    (("aten::permute", "aten::transpose", "aten::transpose.int", "aten::contiguous", "aten::copy_", "aten::cat", "aten::pad",
      "aten::constant_pad_nd", "aten::reshape", "aten::clone", "aten::empty"), "layout"),
    (("aten::sum", "aten::mean", "aten::amax", "aten::adaptive_avg_pool2d"), "reduction"),
    (("aten::some_new_op", "cudaStreamSynchronize"), "other"),
    (("mkldnn::_linear_pointwise", "aten.addmm.default", "aten_ops.addmm.default"), "matmul"),
])
def test_non_conv_kinds(names, kind):
    for name in names:
        assert classify_aten(name, [[2, 3]]) == kind, name


def test_kind_table_order_and_onnx_names():
    assert len(set(OP_KINDS)) == len(OP_KINDS)
    assert kind_order("dw9") > kind_order("dw21") and kind_order("dw9") < kind_order("matmul")
    for op, kind in (("MatMul", "matmul"), ("Gemm", "matmul"), ("Softmax", "softmax"), ("Relu", "elementwise"),
                     ("Erf", "elementwise"), ("Resize", "resize"), ("Transpose", "layout"),
                     ("BatchNormalization", "norm"), ("ReduceMean", "reduction"), ("Attention", "attention")):
        assert classify_onnx(op) == kind, op


# --------------------------------------------------------------------------------------------------------------
# lone ops: each lands in its own kind


class MatMul(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class Attention(nn.Module):
    """q, k, v packed in one input (3, B, heads, N, d); the fused kernel, or its math path."""

    def __init__(self, math_path: bool = False) -> None:
        super().__init__()
        self.math_path = math_path

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv.unbind(0)
        if self.math_path:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v)


LONE = {
    "matmul": (lambda: MatMul(1024), (1024, 1024), 1024 ** 3),
    "dw21": (lambda: nn.Conv2d(64, 64, 21, padding=10, groups=64), (1, 64, 64, 64), 64 * 64 * 64 * 441),
    "conv-1x1": (lambda: nn.Conv2d(256, 256, 1), (1, 256, 64, 64), 256 * 256 * 64 * 64),
    # softmax attention over a 64x64 map: 4096 tokens, one head of 32
    "attention": (lambda: Attention(), (3, 1, 1, 4096, 32), 2 * 4096 * 4096 * 32),
    "attention-math": (lambda: Attention(math_path=True), (3, 1, 2, 1024, 32), 2 * 2 * 1024 * 1024 * 32),
}


@pytest.mark.parametrize("case", list(LONE))
def test_lone_op_lands_in_its_kind(case):
    make, shape, macs = LONE[case]
    kind = case.split("-math")[0]
    p = profile_model(make().eval(), torch.randn(shape), threads=THREADS, iters=3, warmup=2)
    df = p.by_kind()
    assert list(df.columns) == list(KIND_COLUMNS)
    row = df.set_index("op_kind").loc[kind]
    assert row["time_share"] > DOMINANT, df
    assert row["macs"] == macs and row["mac_share"] == 1.0
    assert math.isclose(df["time_share"].sum(), 1.0) and math.isclose(df["mac_share"].sum(), 1.0)
    assert math.isclose(df["time_ms"].sum(), p.time_ms)
    assert row["gmacs_per_s"] > 0 and row["intensity_macs_per_byte"] > 0
    top = p.top_ops(3)
    assert list(top.columns) == list(TOP_COLUMNS)
    assert top["op_kind"].iloc[0] == kind and top["macs"].iloc[0] == macs  # MACs joined onto the profiled op
    assert p.profiled_ms > 0 and p.unprofiled_ms > 0


# --------------------------------------------------------------------------------------------------------------
# module groups


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.attn = nn.Conv2d(c, c, 1)
        self.mlp = nn.Conv2d(c, c, 5, padding=2, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.attn(x))


class TinyNet(nn.Module):
    def __init__(self, c: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c // 4), Block(c))])
        self.head = nn.Conv2d(c, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(self.stem(x))
        return F.interpolate(self.head(x), scale_factor=2.0, mode="bilinear")


def test_module_groups_rule():
    g = module_groups(TinyNet())
    assert g == {"stem": Group("stem", "stem", "other"), "blocks.0": Group("blocks.0", "blocks.0", "other"),
                 "blocks.0.1.attn": Group("blocks.0.1.attn", "blocks.0", "mixer"),
                 "blocks.0.1.mlp": Group("blocks.0.1.mlp", "blocks.0", "ffn"), "head": Group("head", "head", "other")}
    assert group_of("blocks.0.1.attn.weight", g) == "blocks.0.1.attn" and group_of("nowhere", g) == ROOT
    with torch.device("meta"):
        evit, seg, nxt, blk = (build_model(n) for n in ("evit-b1:msla", "segformer-b0-ade20k", "segnext-t-ade20k",
                                                        "block:msla"))
    e = module_groups(evit)
    assert {"backbone.stem", "backbone.stages.0", "backbone.stages.3", "head"} <= set(e)
    assert e["backbone.stages.3.1.context"] == Group("backbone.stages.3.1.context", "backbone.stages.3", "mixer")
    assert e["backbone.stages.3.1.local"].part == "ffn"
    s = module_groups(seg)
    assert s["encoder.stages.0.blocks.0.attn"].part == "mixer" and s["encoder.stages.0.blocks.0.mlp"].part == "ffn"
    assert "decode_head" in s
    assert module_groups(nxt)["encoder.stages.2.blocks.0.attn"].stage == "encoder.stages.2"
    assert module_groups(blk) == {"context": Group("context", "context", "mixer")}


def test_time_and_macs_land_in_their_modules(tmp_path):
    trace = tmp_path / "tiny.json.gz"
    p = profile_model(TinyNet(), torch.randn(1, 3, 64, 64), threads=THREADS, iters=2, warmup=1, trace_path=trace)
    kinds_of: dict[str, set] = {}
    for o in p.ops:
        kinds_of.setdefault(o.module, set()).add(o.kind)
    assert kinds_of["stem"] - {"framework"} == {"conv-dense"}
    assert kinds_of["blocks.0"] - {"framework"} == {"conv-grouped", "elementwise"}  # Block's residual add
    assert kinds_of["blocks.0.1.attn"] - {"framework"} == {"conv-1x1"}
    assert kinds_of["blocks.0.1.mlp"] - {"framework"} == {"dw5"}
    assert kinds_of["head"] - {"framework"} == {"conv-1x1"}
    assert kinds_of[ROOT] - {"framework"} == {"resize"}
    df = p.by_module()
    assert list(df.columns) == list(MODULE_COLUMNS)
    m = df.set_index("module")
    hw, c = 64 * 64, 64
    assert m.loc["stem", "macs"] == hw * c * 3 * 9 and m.loc["blocks.0.1.attn", "macs"] == hw * c * c
    assert m.loc["blocks.0.1.mlp", "macs"] == hw * c * 25 and m.loc["blocks.0", "macs"] == hw * c * 4 * 9
    assert m.loc["blocks.0.1.mlp", "part"] == "ffn" and m.loc["blocks.0.1.attn", "stage"] == "blocks.0"
    assert math.isclose(df["time_share"].sum(), 1.0) and math.isclose(df["mac_share"].sum(), 1.0)
    assert (df["time_ms"] > 0).all()
    stages = p.by_stage()
    assert set(zip(stages["stage"], stages["part"])) >= {("blocks.0", "mixer"), ("blocks.0", "ffn")}
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    assert {"module:blocks.0.1.attn", "module:head"} <= {e.get("name") for e in events}


# --------------------------------------------------------------------------------------------------------------
# MACs per kind: sum to the suite's count, land in the right kinds


@pytest.mark.parametrize("name, res", [("block:msla", 128), ("block:softmax", 128), ("block:large-kernel", 128),
                                       ("block:relu-linear", 128), ("evit-b1:msla", 256)])
def test_macs_per_kind_sum_to_count_macs(name, res):
    costs = count_costs(build_model(name), example_input(name, res, res))
    assert total_macs(costs) == count_macs(name, res, res)
    by = totals_by_kind(costs)
    assert all(is_kind(k) for k in by) and "other" not in by, {k: v.ops for k, v in by.items()}
    n, c = (res // 16) ** 2, 128  # blocks: the stride-16 map, 128 channels
    if name == "block:large-kernel":
        for k, taps in (("dw5", 25), ("dw-strip-1x7", 7), ("dw-strip-11x1", 11), ("dw-strip-21x1", 21)):
            assert by[k].macs == n * c * taps, k
        assert by["conv-1x1"].macs == 3 * n * c * c
    if name == "block:softmax":
        assert by["attention"].macs == 2 * n * n * c and by["conv-1x1"].macs == 4 * n * c * c
    if name == "block:msla":
        assert by["dw5"].macs == n * 3 * c * 25 and by["conv-grouped"].macs == n * 3 * c * 16
    if name.startswith("block:"):
        assert by["norm"].macs == 0 and by["norm"].bytes > 0  # counted in bytes, not MACs


@pytest.fixture(scope="module")
def folded_profiles(tmp_path_factory):
    """torch (conv+BN folded, as ONNX export folds them) and ORT profiles of two blocks at 128x128."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = {}
    for name in ("block:large-kernel", "block:msla"):
        t = profile_registry_model(name, 128, 128, threads=THREADS, iters=3, warmup=2, fold=True)
        o = profile_registry_model(name, 128, 128, source="onnxruntime", threads=THREADS, iters=3, warmup=2,
                                   workdir=tmp_path_factory.mktemp("ort"))
        out[name] = (t, o)
    return out


@pytest.mark.parametrize("name", ["block:large-kernel", "block:msla"])
def test_ort_and_torch_agree_on_kinds(folded_profiles, name):
    t, o = folded_profiles[name]
    assert t.kinds() == o.kinds(), (sorted(t.kinds()), sorted(o.kinds()))
    kinds = o.by_kind()
    assert math.isclose(kinds["time_share"].sum(), 1.0)
    assert kinds["macs"].sum() == count_macs(name, 128, 128)  # the folded model's MACs: BN has none
    assert set(o.by_module()["module"]) == {"context"}  # module paths from the exported node names
    tk = t.by_kind().set_index("op_kind")
    with_macs = set(tk.index[tk["macs"] > 0])
    assert with_macs and (tk.loc[list(with_macs), "time_ms"] > 0).all()  # both passes put the convs in one kind
    assert t.top_ops(1000)["macs"].sum() == count_macs(name, 128, 128)  # every counted MAC joins a profiled op


def test_ort_profile_parser_reads_graph_when_events_lack_shapes():
    def node(name, op, ts, shapes=None):
        args = {"op_name": op, **({"input_type_shape": shapes} if shapes else {})}
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": 10, "args": args}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},  # warm-up run, skipped
              node("/context/fn/dw/Conv", "Conv", 10), {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              node("/context/fn/dw/Conv", "Conv", 210), node("/context/fn/Relu", "Relu", 230, [{"float": [1, 8]}]),
              {"cat": "Node", "name": "/context/fn/Relu_fence_before", "ts": 229, "dur": 1}]
    nodes = {"/context/fn/dw/Conv": NodeInfo("Conv", 128, (128, 1, 1, 21), "context.fn.dw")}
    ops, runs = parse_ort_profile(events, skip_runs=1, nodes=nodes, groups={"context": Group("context", "context",
                                                                                              "mixer")})
    assert runs == 1
    assert {(o.kind, o.module, o.calls, o.time_us) for o in ops} == {("dw-strip-1x21", "context", 1, 10.0),
                                                                     ("elementwise", ROOT, 1, 10.0)}
    assert _torchscript_path("/context/fn/aggreg.0/aggreg.0.0/Conv") == "context.fn.aggreg.0.0"


# --------------------------------------------------------------------------------------------------------------
# TensorRT


TRT_TRACE = [
    {"name": "[CONVOLUTION]-[aten_ops.convolution.default]-[/convolution_3]", "ph": "X", "ts": 0, "dur": 400.0,
     "tid": 1, "pid": "engine Engine Execution", "args": {}},
    {"name": "[CONVOLUTION]-[aten_ops.convolution.default]-[/convolution_4] + [ACTIVATION]-[aten_ops.gelu.default]"
             "-[/gelu]", "ph": "X", "ts": 400, "dur": 200.0, "tid": 1, "pid": "engine Engine Execution", "args": {}},
    {"name": "[MATRIX_MULTIPLY]-[aten_ops.matmul.default]-[/matmul_1]", "ph": "X", "ts": 600, "dur": 100.0,
     "tid": 1, "pid": "engine Engine Execution", "args": {}},
    {"name": "[SOFTMAX]-[aten_ops._softmax.default]-[/softmax]", "ph": "X", "ts": 700, "dur": 50.0, "tid": 1,
     "pid": "engine Engine Execution", "args": {}},
    {"name": "Reformatting CopyNode for Input Tensor 0 to [CONVOLUTION]-[aten_ops.convolution.default]-[/conv_3]",
     "ph": "X", "ts": 750, "dur": 30.0, "tid": 1, "pid": "engine Engine Execution", "args": {}},
    {"name": "[ELEMENTWISE]-[aten_ops.add.Tensor]-[/add_2]", "ph": "X", "ts": 780, "dur": 20.0, "tid": 1,
     "pid": "engine Engine Execution", "args": {}},
]
TRT_LAYERS = {"Layers": [{"Name": TRT_TRACE[0]["name"], "LayerType": "CaskConvolution", "Kernel": [1, 21],
                          "Groups": 128, "OutMaps": 128, "Inputs": [{"Dimensions": [1, 128, 64, 64]}]}]}


def test_trt_trace_parser(tmp_path):
    path = tmp_path / "engine_engine_exectuion_profile.trace"
    path.write_text(json.dumps(TRT_TRACE, indent=2))
    ops = parse_trt_trace(path, layer_info=json.dumps(TRT_LAYERS))
    kinds = {o.shapes: o.kind for o in ops}
    assert [kinds[e["name"]] for e in TRT_TRACE] == ["dw-strip-1x21", "conv-unknown", "matmul", "softmax",
                                                     "layout", "elementwise"]
    assert sum(o.time_us for o in ops) == 800.0
    assert {o.op for o in ops} >= {"convolution", "matmul", "_softmax", "add"}
    trex = [{"count": 10}] + [{"name": e["name"], "timeMs": e["dur"] / 1e3, "averageMs": 0.0} for e in TRT_TRACE]
    assert {o.kind for o in parse_trt_trace(trex)} == {"conv-unknown", "matmul", "softmax", "layout",
                                                       "elementwise"}
    assert classify_trt_layer("{ForeignNode[[MATRIX_MULTIPLY]-[aten_ops.scaled_dot_product_attention.default]-"
                              "[/sdpa]...[SOFTMAX]-[aten_ops._softmax.default]-[/s]]}")[1] == "attention"


def _has_torch_tensorrt() -> bool:
    import importlib

    try:
        importlib.import_module("torch_tensorrt")
    except Exception:  # missing, or installed against another CUDA / TensorRT
        return False
    return True


@pytest.mark.skipif(not torch.cuda.is_available() or not _has_torch_tensorrt(),
                    reason="needs a CUDA GPU and torch-tensorrt")
def test_trt_profile_on_gpu(tmp_path):
    p = profile_registry_model("block:large-kernel", 512, 512, source="tensorrt", workdir=tmp_path,
                               precision="fp16", iters=3, warmup=2)
    df = p.by_kind()
    assert p.time_ms > 0 and math.isclose(df["time_share"].sum(), 1.0)
    assert any(k.startswith(("dw", "conv")) for k in p.kinds())


# --------------------------------------------------------------------------------------------------------------
# bandwidth and roofline


def test_triad_bandwidth_is_sane():
    bw = triad_bandwidth("cpu", "fp32", THREADS, runs=5)
    assert 0 < bw["gb_per_s"] < 2000
    assert bw["bytes_credited"] == 3 * bw["array_mb"] * 2**20
    assert bw["array_mb"] >= 4 * bw["llc_mb"] and bw["array_mb"] >= 64


def test_roofline_helper():
    roof = Roofline(peak_gmacs_per_s=100.0, bandwidth_gb_per_s=20.0)
    assert roof.ridge_macs_per_byte == 5.0
    assert roof.attainable(1.0) == 20.0 and roof.attainable(50.0) == 100.0
    table = pd.DataFrame({"op_kind": ["dw21", "matmul", "layout"], "macs": [10, 10, 0],
                          "intensity_macs_per_byte": [0.5, 50.0, 0.0], "gmacs_per_s": [5.0, 60.0, 0.0]})
    out = add_roofline(table, roof)
    assert out["attainable_gmacs_per_s"].tolist() == [10.0, 100.0, 0.0]
    assert out["roofline_frac"].tolist()[:2] == [0.5, 0.6]
    assert out["bound"].tolist() == ["memory", "compute", ""]


def test_measured_roofline():
    roof, peak, bw = measure_roofline("cpu", "fp32", THREADS, seconds=0.2)
    assert roof.peak_gmacs_per_s == peak["gmacs_per_s"] > 0 and roof.bandwidth_gb_per_s == bw["gb_per_s"] > 0
    assert roof.ridge_macs_per_byte > 0
