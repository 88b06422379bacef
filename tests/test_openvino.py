"""The OpenVINO backend on the CPU: block:msla at 128x128 through prepare() and end to end through bench.run (the
fork server, the child, the numerics against eager fp32), and the combinations it cannot run as reasons.

Skipped without the optional extra (densebench[openvino]); the "not installed" reason is checked either way.
Cost (2 cores): two conversions (~1 s each) and one short run (~15 s).
"""
import json

import pytest
import torch

import bench
from bench.backends import BACKENDS, Unsupported, prepare, reference_output, unsupported_reason
from bench.backends import openvino as ov_backend
from bench.measure.numerics import TOLERANCES, evaluate
from models.registry import build_model, example_input

NAME = "block:msla"
RES = 128
# OpenVINO fp32 against eager fp32 on block:msla at 128x128, measured with openvino 2026.4.1 / torch 2.14.1 on this
# AVX512 CPU: rel_err 2.77e-08 .. 2.99e-08 over seeds 0-4 (2 threads) and 2.80e-08 at 1 thread through the engine.
# Float32 rounding differences only; 1e-6 leaves 30x headroom and still fails on any real conversion error.
FP32_TOL = 1e-6
# bf16 (measured 2.07e-04 .. 2.14e-04 over seeds 0-4): must move the output (bf16 really ran) and stay within the
# suite's bf16 tolerance.
BF16_MOVED = 1e-5


def _case():
    torch.manual_seed(0)
    model = build_model(NAME)
    x = example_input(NAME, RES, RES)
    return model, x, reference_output(model, x)


def _tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)


def test_registered_and_not_installed_is_a_reason(monkeypatch, tmp_path):
    assert "openvino" in BACKENDS
    monkeypatch.setattr(ov_backend, "_openvino", lambda: None)
    reason = unsupported_reason("openvino", "cpu", "fp32")
    assert reason == "openvino is not installed (optional extra: pip install densebench[openvino])"
    model, x = _tiny()
    with pytest.raises(Unsupported, match="not installed"):
        prepare(model, x, backend="openvino", device="cpu", precision="fp32", workdir=tmp_path)


@pytest.mark.parametrize("device,precision,channels_last,words", [
    ("cpu", "fp32", True, "channels_last has no meaning"),
    ("cpu", "fp16", False, "fp32 and bf16 only"),
    ("cpu", "tf32", False, "no tf32 on cpu"),
    ("cpu", "int4", False, "unknown precision 'int4'"),
])
def test_unsupported_combinations_are_reasons(device, precision, channels_last, words, tmp_path):
    pytest.importorskip("openvino")
    reason = unsupported_reason("openvino", device, precision, channels_last=channels_last)
    assert reason and words in reason
    model, x = _tiny()
    with pytest.raises(Unsupported) as e:
        prepare(model, x, backend="openvino", device=device, precision=precision, channels_last=channels_last,
                workdir=tmp_path)
    assert str(e.value) == reason


def test_int8_needs_nncf_and_the_plugins_int8(monkeypatch):
    """int8 is a reason, not a crash, without nncf (named with the extra to install) or without INT8 in the CPU
    plugin's OPTIMIZATION_CAPABILITIES."""
    pytest.importorskip("openvino")
    monkeypatch.setattr(ov_backend, "package_version", lambda *d: None if d == ("nncf",) else "1")
    assert unsupported_reason("openvino", "cpu", "int8") == (
        "openvino int8 needs nncf (optional extra: pip install densebench[openvino])")
    monkeypatch.setattr(ov_backend, "package_version", lambda *d: "1")
    monkeypatch.setattr(ov_backend, "_cpu_capabilities", lambda: ("FP32", "BF16"))
    reason = unsupported_reason("openvino", "cpu", "int8")
    assert reason and "does not report INT8" in reason and "FP32, BF16" in reason


def test_cuda_is_a_reason():
    pytest.importorskip("openvino")
    reason = unsupported_reason("openvino", "cuda", "fp32")
    assert reason in ("CUDA not available on this machine", "openvino runs on the CPU here")
    # with or without a GPU, the backend's own check says CPU only
    assert ov_backend.unsupported("cuda", "fp32", False, False) == "openvino runs on the CPU here"


def test_fp32_and_bf16_prepare(tmp_path):
    pytest.importorskip("openvino")
    model, x, ref = _case()
    p = prepare(model, x, backend="openvino", device="cpu", precision="fp32", workdir=tmp_path)
    y = p.fn()
    assert isinstance(y, torch.Tensor) and y.shape == ref.shape and y.dtype == torch.float32
    assert evaluate(y, ref, "fp32")["rel_err"] < FP32_TOL
    info = p.info
    json.dumps(info)
    assert info["inference_precision"] == "f32" and info["performance_hint"] == "LATENCY"
    assert info["inference_threads"] == torch.get_num_threads() and info["openvino"]
    assert p.build_s == pytest.approx(info["convert_s"] + info["compile_s"], abs=2e-3)

    reason = unsupported_reason("openvino", "cpu", "bf16")
    if reason is not None:  # the CPU plugin does not report BF16: a reason, never a crash
        assert "BF16" in reason
        return
    p = prepare(model, x, backend="openvino", device="cpu", precision="bf16", workdir=tmp_path)
    num = evaluate(p.fn(), ref, "bf16")
    assert p.info["inference_precision"] == "bf16"  # read back from the compiled model
    assert BF16_MOVED < num["rel_err"] < TOLERANCES["bf16"] and num["numerics_ok"]


def test_end_to_end_through_the_engine(tmp_path):
    """The real path: the plan, the fork server, the child's prepare/timing/numerics; fp16 is a row with a reason."""
    pytest.importorskip("openvino")
    run = bench.run([NAME], level="block", res=[RES], backends="openvino", precision="fp32,fp16", threads=1,
                    design="isolated", min_time=0.05, max_time=0.2, calibrate=False, wait_quiet=0,
                    out=tmp_path, report=False)
    rows = {r["precision"]: r for _, r in run.results.iterrows()}
    ok = rows["fp32"]
    assert ok["status"] == "ok", ok["reason"]
    assert ok["numerics_ok"] and ok["rel_err"] < FP32_TOL  # against eager fp32, computed by the engine
    assert ok["latency_ms_median"] > 0 and ok["build_s"] > 0
    info = json.loads(ok["backend_info"])
    assert info["backend"] == "openvino" and info["inference_threads"] == 1 and info["inference_precision"] == "f32"
    assert rows["fp16"]["status"] == "unsupported" and "fp32 and bf16 only" in rows["fp16"]["reason"]
