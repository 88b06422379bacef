"""Backends on the CPU for every variant model (small resolution), the unsupported matrix, the TensorRT
version -> kwargs table; CUDA/TensorRT tests skip with a reason where absent.

Cost control (2 shared cores): per variant, `compile` is checked with dynamo's capture only (compile_backend
"eager": the graph capture, guards and autocast tracing are ours to get right); the full inductor path (C++
codegen, ~20 s) runs once on the msla block, and for all variants only with DENSEBENCH_SLOW_TESTS=1 (~2-5 min each).
ONNX export: the dynamo exporter (default, ~15 s) once on msla, the TorchScript exporter for the other variants.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench import backends
from bench.backends import trt
from bench.backends import (BACKENDS, PRECISIONS, Prepared, Unsupported, prepare, reference_output,
                            tensorrt_api, tensorrt_compile_kwargs, tensorrt_model_dtype, unsupported_reason)
from bench.measure.numerics import TOLERANCES, evaluate
from models.registry import build_model, example_input, list_models

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = backends.tensorrt_version() is not None
SLOW = os.environ.get("DENSEBENCH_SLOW_TESTS") == "1"
VARIANTS = ("evit-b0:msla", "evit-b0:relu-linear", "evit-b0:softmax", "evit-b0:large-kernel")
RES = 64


def test_variants_registered():
    assert set(VARIANTS) <= set(list_models())


def test_registry_order_and_lazy_extras():
    # The order is the CLI's and the report's; the optional extras load only when their backend is used.
    assert BACKENDS == ("eager", "compile", "cudagraphs", "onnxruntime", "tensorrt", "openvino", "executorch")
    code = ("import sys, bench.backends; "
            "print(sorted(m for m in ('onnxruntime', 'torch_tensorrt', 'tensorrt', 'openvino', 'executorch', 'nncf') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]"


def _case(name, res=RES):
    torch.manual_seed(0)
    model = build_model(name)
    x = example_input(name, res, res)
    ref = reference_output(model, x)  # before prepare(), which may cast the model
    return model, x, ref


def _check(p: Prepared, ref, precision, exact=False):
    y = p.fn()
    assert isinstance(y, torch.Tensor) and y.shape == ref.shape
    num = evaluate(y, ref, precision)
    assert math.isfinite(num["rel_err"]), num
    assert num["numerics_ok"], num
    if exact:
        assert num["rel_err"] == 0.0
    json.dumps(p.info)  # backend_info must be plain JSON
    assert p.build_s >= 0.0
    return y, num


# --- every variant, cpu ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_eager_cpu_fp32_bf16(name, tmp_path):
    model, x, ref = _case(name)
    p = prepare(model, x, backend="eager", device="cpu", precision="fp32", workdir=tmp_path)
    _check(p, ref, "fp32", exact=True)
    assert p.info["backend"] == "eager" and p.info["threads"] == torch.get_num_threads()
    p = prepare(model, x, backend="eager", device="cpu", precision="bf16", workdir=tmp_path)
    y, num = _check(p, ref, "bf16")
    assert y.dtype == torch.bfloat16  # autocast really ran in bf16 ...
    assert 1e-5 < num["rel_err"] < TOLERANCES["bf16"]  # ... and moved the output, within tolerance
    assert "cpu_isa" in p.info


@pytest.mark.parametrize("name", VARIANTS)
def test_compile_cpu_capture(name, tmp_path):
    model, x, ref = _case(name)
    p = prepare(model, x, backend="compile", device="cpu", precision="fp32", workdir=tmp_path,
                options={"compile_backend": "eager"})
    _check(p, ref, "fp32")
    assert p.info["compiler"] == "eager" and p.info["mode"] == "default" and p.build_s > 0


def test_compile_cpu_inductor_block_bf16(tmp_path):
    model, x, ref = _case("block:msla")
    p = prepare(model, x, backend="compile", device="cpu", precision="bf16", workdir=tmp_path)
    y, num = _check(p, ref, "bf16")
    assert p.info["compiler"] == "inductor" and p.info["torch"] == torch.__version__
    assert num["rel_err"] > 1e-6  # autocast was traced into the graph: bf16 moved the output


@pytest.mark.skipif(not SLOW, reason="inductor compile of a model takes minutes on 2 cores; DENSEBENCH_SLOW_TESTS=1")
@pytest.mark.parametrize("name", VARIANTS)
def test_compile_cpu_inductor_models(name, tmp_path):
    model, x, ref = _case(name)
    p = prepare(model, x, backend="compile", device="cpu", precision="fp32", workdir=tmp_path)
    _check(p, ref, "fp32")


@pytest.mark.parametrize("name", VARIANTS)
def test_onnxruntime_cpu(name, tmp_path):
    model, x, ref = _case(name)
    exporter = "dynamo" if name.endswith(":msla") else "torchscript"
    p = prepare(model, x, backend="onnxruntime", device="cpu", precision="fp32", workdir=tmp_path,
                options={"onnx_exporter": exporter})
    y, num = _check(p, ref, "fp32")
    assert num["rel_err"] < 1e-5
    info = p.info
    assert info["providers"] == ["CPUExecutionProvider"] and info["opset"] == backends.ONNX_OPSET
    assert info["onnxruntime"] and info["intra_op_threads"] == torch.get_num_threads()
    assert p.build_s == pytest.approx(info["export_s"] + info["session_s"], abs=2e-3)
    assert info["onnx_bytes"] > 10_000 and not list(tmp_path.iterdir())  # private temp folder removed


# --- options ---------------------------------------------------------------------------------------------------

def test_channels_last_eager(tmp_path):
    model, x, ref = _case("evit-b0:msla")
    p = prepare(model, x, backend="eager", device="cpu", precision="fp32", channels_last=True, workdir=tmp_path)
    _check(p, ref, "fp32")
    assert p.info["channels_last"] is True
    w = next(m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.dim() == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_fold_eager(tmp_path):
    model, x, ref = _case("evit-b0:large-kernel")
    assert unsupported_reason("eager", "cpu", "fp32", fold=True) is None
    p = prepare(model, x, backend="eager", device="cpu", precision="fp32", fold=True, workdir=tmp_path)
    _check(p, ref, "fp32")
    assert p.info["folded"] is True


def test_set_fp32_math_keeps_every_getter_consistent():
    # Mixing torch's legacy allow_tf32 flags and the fp32_precision API makes getters raise (inductor reads
    # both kinds): after set_fp32_math every getter must answer, and agree.
    assert backends.set_fp32_math("cpu", "fp32") == {}
    try:
        s = backends.set_fp32_math("cuda", "tf32")
        assert s == {"allow_tf32": True, "float32_matmul_precision": "high"}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            assert torch.backends.cuda.matmul.fp32_precision == "tf32"
            assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        s = backends.set_fp32_math("cuda", "fp32")
        assert s == {"allow_tf32": False, "float32_matmul_precision": "highest"}
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        backends.set_fp32_math("cuda", "fp32")


# --- unsupported combinations: a reason, never a crash -----------------------------------------------------------

def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)


CPU_UNSUPPORTED = [
    ("eager", "tf32", "no tf32 on cpu"),
    ("compile", "tf32", "no tf32 on cpu"),
    ("cudagraphs", "fp32", "CUDA only"),
    ("cudagraphs", "fp16", "CUDA only"),
    ("onnxruntime", "fp16", "fp32 only"),
    ("onnxruntime", "bf16", "fp32 only"),
    ("onnxruntime", "tf32", "no tf32 on cpu"),
    ("tensorrt", "fp32", "NVIDIA GPUs"),
    ("tensorrt", "fp16", "NVIDIA GPUs"),
]


@pytest.mark.parametrize("backend,precision,words", CPU_UNSUPPORTED)
def test_cpu_unsupported(backend, precision, words, tmp_path):
    reason = unsupported_reason(backend, "cpu", precision)
    assert reason and words in reason
    model, x = _tiny()
    with pytest.raises(Unsupported) as e:
        prepare(model, x, backend=backend, device="cpu", precision=precision, workdir=tmp_path)
    assert str(e.value) == reason


def test_supported_cpu_matrix():
    ok = {(b, p) for b in BACKENDS for p in PRECISIONS if unsupported_reason(b, "cpu", p) is None}
    # openvino: fp32 where the extra is installed, bf16 where its CPU plugin also reports BF16 (tests/test_openvino.py)
    # and int8 where nncf is installed and the plugin reports INT8 (tests/test_int8.py)
    openvino = {("openvino", p) for p in ("fp32", "bf16", "int8") if unsupported_reason("openvino", "cpu", p) is None}
    assert (("openvino", "fp32") in openvino) == (importlib.util.find_spec("openvino") is not None)
    # executorch: fp32 and int8 where the extra is installed (tests/test_executorch.py); compile int8 needs torchao
    executorch = {("executorch", p) for p in ("fp32", "int8") if unsupported_reason("executorch", "cpu", p) is None}
    assert (("executorch", "fp32") in executorch) == (importlib.util.find_spec("executorch") is not None)
    compile_int8 = {("compile", "int8")} if importlib.util.find_spec("torchao") is not None else set()
    assert ok == {("eager", "fp32"), ("eager", "fp16"), ("eager", "bf16"), ("compile", "fp32"),
                  ("compile", "fp16"), ("compile", "bf16"), ("onnxruntime", "fp32"),
                  ("onnxruntime", "int8")} | openvino | executorch | compile_int8


def test_unknown_names_list_valid():
    assert "valid: eager, compile" in unsupported_reason("tvm", "cpu", "fp32")
    assert "valid: fp32, tf32" in unsupported_reason("eager", "cpu", "int4")
    assert "valid: cpu, cuda" in unsupported_reason("eager", "mps", "fp32")
    if not HAS_CUDA:
        assert "CUDA not available" in unsupported_reason("eager", "cuda:3", "fp32")


def test_option_combinations():
    assert "NCHW" in unsupported_reason("onnxruntime", "cpu", "fp32", channels_last=True)
    assert unsupported_reason("eager", "cpu", "fp32", channels_last=True) is None


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA path; this machine has CUDA")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_absent(backend, tmp_path):
    assert unsupported_reason(backend, "cuda", "fp16") == "CUDA not available on this machine"
    model, x = _tiny()
    with pytest.raises(Unsupported, match="CUDA not available"):
        prepare(model, x, backend=backend, device="cuda:0", precision="fp16", workdir=tmp_path)


# --- TensorRT: version handling, error paths -------------------------------------------------------------------

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize("version,api", [("2.4.0", "enabled_precisions"), ("2.9.0+cu128", "enabled_precisions"),
                                         ("2.10.0", "explicit_typing"), ("2.12.1", "explicit_typing"),
                                         ("2.13.0", "autocast"), ("2.14.0a0+git1234", "autocast"),
                                         ("3.0.0", "autocast"), ("2.8.0+jp62", "enabled_precisions")])
def test_tensorrt_api_by_version(version, api):
    assert tensorrt_api(version) == api


def test_tensorrt_kwargs_table():
    k = tensorrt_compile_kwargs
    base = {"truncate_double": True}
    # <= 2.9: enabled_precisions, weak typing
    assert k("2.9.0", "fp16") == {**base, "disable_tf32": True, "enabled_precisions": {F32, F16}}
    assert k("2.5.1", "bf16") == {**base, "disable_tf32": True, "enabled_precisions": {F32, BF16}}
    assert k("2.9.0", "fp32") == {**base, "disable_tf32": True, "enabled_precisions": {F32}}
    assert k("2.9.0", "tf32") == {**base, "disable_tf32": False, "enabled_precisions": {F32}}
    # 2.10-2.12: explicit typing, precision from the (cast) model
    for v in ("2.10.0", "2.11.0", "2.12.0"):
        for p in PRECISIONS:
            kw = k(v, p)
            assert kw == {**base, "disable_tf32": p != "tf32", "use_explicit_typing": True}
            assert "enabled_precisions" not in kw and "enable_autocast" not in kw
        assert tensorrt_model_dtype(v, "fp16") == F16 and tensorrt_model_dtype(v, "bf16") == BF16
        assert tensorrt_model_dtype(v, "fp32") == F32
    # >= 2.13: enabled_precisions removed; autocast
    assert k("2.13.0", "fp16") == {**base, "disable_tf32": True, "use_explicit_typing": True,
                                   "enable_autocast": True, "autocast_low_precision_type": F16}
    assert k("2.14.1", "bf16")["autocast_low_precision_type"] == BF16
    assert k("2.13.0", "fp32") == {**base, "disable_tf32": True, "use_explicit_typing": True}
    assert k("2.13.0", "tf32")["disable_tf32"] is False
    for v in ("2.13.0", "2.9.0"):
        assert tensorrt_model_dtype(v, "fp16") == F32
    for v in ("2.13.0", "2.14.0", "3.1.0"):
        for p in PRECISIONS:
            assert "enabled_precisions" not in k(v, p)


def test_tensorrt_bad_inputs():
    with pytest.raises(ValueError, match="cannot parse"):
        tensorrt_api("nightly")
    with pytest.raises(ValueError, match="valid"):
        tensorrt_compile_kwargs("2.13.0", "int4")


def test_tensorrt_not_installed_or_broken(monkeypatch, tmp_path):
    model, x = _tiny()
    monkeypatch.setattr(trt, "tensorrt_version", lambda: None)
    with pytest.raises(Unsupported, match="torch-tensorrt is not installed"):
        trt.prepare(model, x, torch.device("cpu"), "fp16", {}, {}, tmp_path)
    if not HAS_TRT:
        monkeypatch.setattr(trt, "tensorrt_version", lambda: "2.13.0")
        with pytest.raises(Unsupported, match="does not import"):
            trt.prepare(model, x, torch.device("cpu"), "fp16", {}, {}, tmp_path)
    if HAS_CUDA:
        monkeypatch.setattr(trt, "tensorrt_version", lambda: None)
        assert "not installed" in unsupported_reason("tensorrt", "cuda", "fp16")


# --- CUDA (skip cleanly without a GPU) ---------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA not available on this machine")


@needs_cuda
@pytest.mark.parametrize("backend,precision", [("eager", "fp32"), ("eager", "fp16"), ("eager", "tf32"),
                                               ("cudagraphs", "fp16"), ("compile", "fp16")])
def test_cuda_backends(backend, precision, tmp_path):
    model, x, ref = _case("evit-b0:msla", 128)
    p = prepare(model, x, backend=backend, device="cuda", precision=precision, workdir=tmp_path)
    y, _ = _check(p, ref, precision)
    assert y.is_cuda


@needs_cuda
def test_cuda_onnxruntime_or_reason(tmp_path):
    model, x, ref = _case("evit-b0:msla", 128)
    reason = unsupported_reason("onnxruntime", "cuda", "fp16")
    if reason:
        assert "CUDA execution provider" in reason
        return
    p = prepare(model, x, backend="onnxruntime", device="cuda", precision="fp16", workdir=tmp_path)
    _check(p, ref, "fp16")


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs CUDA and torch-tensorrt (optional extra)")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_cuda(precision, tmp_path):
    model, x, ref = _case("evit-b0:msla", 128)
    p = prepare(model, x, backend="tensorrt", device="cuda", precision=precision, workdir=tmp_path)
    _check(p, ref, precision)
    assert p.info["torch_tensorrt"] == backends.tensorrt_version()


# --- the GPU self-check script -----------------------------------------------------------------------------------

def test_gpu_selfcheck_plan():
    from tools.gpu_selfcheck import VARIANTS as SC_VARIANTS, plan
    cases = plan([512, 1024, 2048], quick=False)
    assert {(m, r) for m, r, b, p in cases if b == "eager" and p == "fp16"} == \
        {(m, r) for m in SC_VARIANTS for r in (512, 1024, 2048)}
    assert {b for _, _, b, _ in cases} == set(BACKENDS) - {"openvino", "executorch"}  # every backend on CUDA
    assert {p for _, _, _, p in cases} == set(PRECISIONS)
    assert all(r == 1024 for _, r, b, _ in cases if b != "eager")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA path; this machine has CUDA")
def test_gpu_selfcheck_without_cuda_exits_cleanly(capsys):
    from tools.gpu_selfcheck import main
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "CUDA not available" in out and "nothing to check" in out
