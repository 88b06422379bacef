"""The ExecuTorch backend (XNNPACK delegate) on the CPU: block:msla at 128x128 in fp32 and int8 end to end through
bench.run (the fork server, the child, numerics against eager fp32, the delegation columns), its ETDump profile,
fallback ops and the "not a measurement" verdict on a model whose conv XNNPACK does not take, every output with
options["all_outputs"], an empty ETDump failing its profile, the combinations it cannot run as reasons; and int8
for the compile backend (pt2e with the X86 inductor quantizer).

Skipped as a module without the optional extra (densebench[executorch]). Cost on 2 cores: importing executorch.exir
(~10 s, once per process), block:msla lowered once for the profile and three times by the end-to-end run (fp32,
int8, the int8 localisation: 5-10 s each, plus the children's imports); the tiny models lower in ~2 s; compile int8 through inductor runs only with DENSEBENCH_SLOW_TESTS=1.
"""
import json
import os

import pytest
import torch
from torch import nn

from bench.backends.base import package_version

if package_version("executorch") is None:
    pytest.skip("executorch is not installed (optional extra: pip install densebench[executorch])",
                allow_module_level=True)

import bench  # noqa: E402
from bench.backends import BACKENDS, Unsupported, prepare, unsupported_reason  # noqa: E402
from bench.backends import executorch as et_backend  # noqa: E402
from bench.backends import graph_counts  # noqa: E402
from bench.backends import torch_compile  # noqa: E402
from bench.backends.delegation import columns  # noqa: E402
from bench.measure.numerics import evaluate  # noqa: E402
from bench.profiling.et_events import EmptyEtdump, parse_events, read_events  # noqa: E402
from models.complexity import count_macs, count_model_macs  # noqa: E402

SLOW = os.environ.get("DENSEBENCH_SLOW_TESTS") == "1"
NAME, RES = "block:msla", 128
# fp32 against eager fp32 on block:msla at 128 (executorch 1.5.1, torch 2.14.1, this AVX512 CPU): 2.8e-08 .. 3.1e-08;
# float32 rounding only, so 1e-6 leaves 30x headroom and still fails on any real lowering error.
FP32_TOL = 1e-6
# int8 (pt2e XNNPACKQuantizer, per-channel weights, 8 calibration images) on block:msla at 128: rel_err
# 1.33e-02 .. 1.38e-02 over input seeds 0-4 (prepare, 2 threads). 3e-2 is the stated bound: ~2x the measurement, well below what a
# broken quantization gives (a wrong scale or a quantized division is > 1e-1).
INT8_TOL = 3e-2
# compile int8 (X86InductorQuantizer, inductor with freezing) on block:msla at 128: rel_err 9.4e-03.
COMPILE_INT8_TOL = 3e-2


class Float64Tail(nn.Module):
    """A 1x1 conv XNNPACK takes, then a 3x3 conv in float64, which it does not (it runs fp32, fp16 and quantized
    int8 only): most MACs fall back to the portable kernels. (A conv3d falls back too, but the portable
    convolution kernel of executorch 1.5.1 then fails at run time with error 0x12: not a cheap fixture.)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.c64 = nn.Conv2d(8, 8, 3, padding=1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c64(self.conv(x).double()).float()


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.a(x))
        return y, self.b(y)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)


# -- reasons --------------------------------------------------------------------------------------------------------

def test_registered_and_not_installed_is_a_reason(monkeypatch, tmp_path):
    assert "executorch" in BACKENDS
    monkeypatch.setattr(et_backend, "package_version", lambda *d: None)
    reason = unsupported_reason("executorch", "cpu", "fp32")
    assert reason == "executorch is not installed (optional extra: pip install densebench[executorch])"
    model, x = _tiny()
    with pytest.raises(Unsupported, match="not installed"):
        prepare(model, x, backend="executorch", device="cpu", precision="fp32", workdir=tmp_path)


def test_missing_dependency_is_named(monkeypatch):
    monkeypatch.setattr(et_backend, "_DEPENDENCIES", (("densebench_no_such_module", "no-such-dist"),))
    reason = unsupported_reason("executorch", "cpu", "int8")
    assert "dependency no-such-dist is not installed" in reason and "densebench[executorch]" in reason


@pytest.mark.parametrize("device,precision,channels_last,words", [
    ("cpu", "fp16", False, "fp32 and int8 only"),
    ("cpu", "bf16", False, "fp32 and int8 only"),
    ("cpu", "fp32", True, "channels_last has no meaning"),
    ("cpu", "tf32", False, "no tf32 on cpu"),
])
def test_unsupported_combinations_are_reasons(device, precision, channels_last, words, tmp_path):
    reason = unsupported_reason("executorch", device, precision, channels_last=channels_last)
    assert reason and words in reason
    model, x = _tiny()
    with pytest.raises(Unsupported) as e:
        prepare(model, x, backend="executorch", device=device, precision=precision, channels_last=channels_last,
                workdir=tmp_path)
    assert str(e.value) == reason


def test_cuda_is_a_reason():
    assert et_backend.unsupported("cuda", "fp32", False, False) == "executorch runs on the CPU here (XNNPACK delegate)"
    assert torch_compile.unsupported("cuda", "int8", False, False).startswith("compile int8")
    assert torch_compile.unsupported("cpu", "int8", False, False) is None


def test_compile_int8_without_torchao_is_a_reason(monkeypatch):
    monkeypatch.setattr(torch_compile, "package_version", lambda *d: None)
    assert "needs torchao" in torch_compile.unsupported("cpu", "int8", False, False)


def test_import_failures_are_one_line_reasons(monkeypatch, tmp_path):
    """executorch re-raises a missing dependency as "pybindings._C is not found": the reason names the module;
    a runtime built for another torch names the mismatch; prepare turns either into Unsupported."""
    try:
        try:
            raise ModuleNotFoundError("No module named 'ruamel'", name="ruamel")
        except ModuleNotFoundError as inner:
            raise ModuleNotFoundError("The prebuilt extension module executorch.extension.pybindings._C is not "
                                      "found.", name="executorch.extension.pybindings._C") from inner
    except ModuleNotFoundError as e:
        chained = e
    reason = et_backend.import_reason(chained)
    assert "module 'ruamel' is missing" in reason and "\n" not in reason
    mismatch = et_backend.import_reason(ImportError("_C.so: undefined symbol: _ZN3c104impl8GPUTrace"))
    assert f"cannot share torch {torch.__version__}" in mismatch
    monkeypatch.setattr(et_backend, "_load", lambda: (None, reason))
    model, x = _tiny()
    with pytest.raises(Unsupported) as info:
        prepare(model, x, backend="executorch", device="cpu", precision="fp32", workdir=tmp_path)
    assert str(info.value) == reason


# -- what ran where, every output, ETDump -------------------------------------------------------------------------

def test_fallback_conv_is_not_a_measurement(tmp_path):
    """A float64 conv falls back to the portable kernels: it is named with its MACs, the shares say so, the verdict
    says the case does not measure XNNPACK; the numbers still match eager, and the MACs match FlopCounterMode's."""
    torch.manual_seed(0)
    model, x = Float64Tail().eval(), torch.randn(1, 3, 16, 16)
    ref = model(x).detach()
    p = prepare(model, x, backend="executorch", device="cpu", precision="fp32", workdir=tmp_path)
    assert evaluate(p.fn(), ref, "fp32")["rel_err"] < FP32_TOL
    d = p.info["delegation"]
    assert d["macs_total"] == count_model_macs(Float64Tail().eval(), x)
    assert d["fallback"]["aten.convolution"] == 1 and d["fallback_macs"]["aten.convolution"] > 0
    assert d["verdict"].startswith("not a measurement of XNNPACK") and "aten.convolution" in d["verdict"]
    cols = columns(p.info)
    assert cols["delegated_macs_share"] < 0.1 and cols["delegated_ops_share"] < 1
    assert "aten.convolution x1" in cols["fallback_ops"]


def test_all_outputs_returns_every_output(tmp_path):
    torch.manual_seed(0)
    model, x = TwoOutputs().eval(), torch.randn(1, 3, 8, 8)
    y_ref, z_ref = (t.detach() for t in model(x))
    every = prepare(model, x, backend="executorch", device="cpu", precision="fp32", workdir=tmp_path,
                    options={"all_outputs": True}).fn()
    assert isinstance(every, tuple) and len(every) == 2
    assert evaluate(every[0], y_ref, "fp32")["rel_err"] < FP32_TOL
    assert evaluate(every[1], z_ref, "fp32")["rel_err"] < FP32_TOL  # without the option: the first (other tests)


def test_etdump_is_read_and_an_empty_one_fails(tmp_path):
    """The ETDump of real runs attributes every microsecond of Method::execute; one written before any execution,
    and an empty file, fail the profile instead of reading as zero time."""
    model, x = _tiny()
    lowered = et_backend.lower(model, x, "fp32")
    pte = tmp_path / "tiny.pte"
    pte.write_bytes(lowered.pte)
    program, method = et_backend.load(pte, etdump=True)
    program.write_etdump_result_to_file(str(tmp_path / "before.etdp"), str(tmp_path / "before.bin"))
    with pytest.raises(EmptyEtdump, match="no execution events"):
        read_events(tmp_path / "before.etdp")
    (tmp_path / "zero.etdp").write_bytes(b"")
    with pytest.raises(EmptyEtdump, match="could not be read"):
        read_events(tmp_path / "zero.etdp")
    for _ in range(3):
        method.execute([x])
    program.write_etdump_result_to_file(str(tmp_path / "ran.etdp"), str(tmp_path / "ran.bin"))
    events = read_events(tmp_path / "ran.etdp")
    ops, runs, info = parse_events(events, skip_runs=1, mac_nodes=lowered.mac_nodes)
    assert runs == 2 and info["delegate_calls"] == 1 and info["delegate_profile"] == "per XNNPACK operator"
    total_ms = sum(o.time_us for o in ops) / 1e3 / runs
    assert total_ms == pytest.approx(info["execute_ms_per_run"], rel=1e-3)
    assert any(o.kind == "conv-dense" and o.op.startswith("Convolution") for o in ops)  # matched with its node
    with pytest.raises(EmptyEtdump, match="warm-up"):
        parse_events(events, skip_runs=3)


def test_graph_macs_cover_mm_and_bmm():
    """node_macs on an exported graph with a linear and a batched matmul equals FlopCounterMode's count."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return y @ y.transpose(1, 2)

    model, x = Mixed().eval(), torch.randn(2, 5, 16)
    gm = torch.export.export(model, (x,)).run_decompositions().graph_module
    assert sum(graph_counts.node_macs(n) for n in gm.graph.nodes if n.op == "call_function") == \
        count_model_macs(model, x)


# -- end to end --------------------------------------------------------------------------------------------------

def test_profile_case_reads_the_etdump(tmp_path):
    """profile_case dispatches an executorch case to its ETDump: the kinds sum to Method::execute, MSLA's convs keep
    their kinds (matched with their edge nodes), the MACs per kind sum to the counter's; fp16 is a reason."""
    from bench.plan import make_plan
    from bench.profiling.case import profile_case

    case = make_plan(NAME, level="block", res=str(RES), backends="executorch", precision="fp32",
                     threads="1").cases[0]
    p = profile_case(case, workdir=tmp_path, iters=3, warmup=1)
    assert p.source == "executorch" and p.iters == 3 and p.info["threads"] == 1
    assert p.time_ms == pytest.approx(p.profiled_ms, rel=1e-3) and p.profiled_ms > 0
    assert p.info["delegates_matched"].startswith("4/4")
    kinds = p.by_kind().set_index("op_kind")
    assert {"conv-1x1", "dw5", "conv-grouped", "matmul", "layout"} <= p.kinds()
    assert kinds["macs"].sum() == count_macs(NAME, RES, RES)
    other = make_plan(NAME, level="block", res=str(RES), backends="executorch", precision="fp16",
                      threads="1").cases[0]
    with pytest.raises(Unsupported, match="executorch"):
        profile_case(other, workdir=tmp_path)


def test_end_to_end_fp32_int8_through_the_engine(tmp_path):
    """The real path: plan, fork server, child (prepare, timing, numerics, the int8 localisation); fp16 is a row
    with a reason."""
    run = bench.run([NAME], level="block", res=[RES], backends="executorch", precision="fp32,int8,fp16", threads=1,
                    design="isolated", min_time=0.05, max_time=0.2, calibrate=False, wait_quiet=0,
                    out=tmp_path, report=False)
    rows = {r["precision"]: r for _, r in run.results.iterrows()}
    fp32, int8 = rows["fp32"], rows["int8"]
    for row in (fp32, int8):
        assert row["status"] == "ok", row["reason"]
        assert row["latency_ms_median"] > 0 and row["build_s"] > 0
        assert row["delegated_macs_share"] == 1.0 and 0.5 < row["delegated_ops_share"] < 1
        assert "aten.expand_copy x4" in row["fallback_ops"] and "aten.split_with_sizes_copy x1" in row["fallback_ops"]
    assert fp32["numerics_ok"] and fp32["rel_err"] < FP32_TOL
    assert int8["numerics_ok"] and FP32_TOL < int8["rel_err"] < INT8_TOL
    info = json.loads(fp32["backend_info"])
    assert info["executorch_threads"] == 1 and info["pte_bytes"] > 0
    assert info["delegation"]["macs_total"] == count_macs(NAME, RES, RES)  # the edge graph's MACs == the counter's
    q = json.loads(int8["backend_info"])
    assert q["int8"]["scheme"] == "pt2e XNNPACKQuantizer, static" and q["calibration"]["images"] == 8
    assert any(e.startswith("aten.div x1") for e in q["int8"]["excluded"])  # linear attention's division: float
    assert 0.85 < int8["int8_macs_share"] < 1  # the convs in int8, the attention matmuls in float
    assert rows["fp16"]["status"] == "unsupported" and "fp32 and int8 only" in rows["fp16"]["reason"]


def test_compile_int8_records_and_traces(tmp_path):
    """compile int8's quantization path without inductor codegen (compile_backend="eager"): the X86 quantizer ran,
    calibration and the int8 record are in info, and the output is within the int8 bound."""
    from models.registry import build_model, example_input

    model, x = build_model(NAME), example_input(NAME, RES, RES)
    ref = model(x).detach()
    p = prepare(model, x, backend="compile", device="cpu", precision="int8", workdir=tmp_path,
                options={"compile_backend": "eager"})
    assert evaluate(p.fn(), ref, "int8")["rel_err"] < COMPILE_INT8_TOL
    q = p.info["int8"]
    assert q["scheme"] == "pt2e X86InductorQuantizer, static" and p.info["calibration"]["images"] == 8
    assert q["macs_total"] == count_macs(NAME, RES, RES) and 0.85 < q["macs_share"] < 1
    assert any(e.startswith("aten.div x1") for e in q["excluded"])


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="the engine compiles the quantized block twice with inductor (timing, "
                                     "localisation): 43-77 s on 2 cores with a cold cache, past this module's "
                                     "90-s budget with the rest; DENSEBENCH_SLOW_TESTS=1")
def test_compile_int8_end_to_end(tmp_path):
    run = bench.run([NAME], level="block", res=[RES], backends="compile", precision="int8", threads=1,
                    design="isolated", min_time=0.05, max_time=0.2, calibrate=False, wait_quiet=0,
                    out=tmp_path, report=False)
    row = run.results.iloc[0]
    assert row["status"] == "ok", row["reason"]
    assert row["numerics_ok"] and FP32_TOL < row["rel_err"] < COMPILE_INT8_TOL
    info = json.loads(row["backend_info"])
    assert info["freezing"] is True and info["int8"]["macs_share"] > 0.85
