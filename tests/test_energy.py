import math
import types

import pytest
import torch

from bench import env
from bench.env import gpu as env_gpu, jetson as env_jetson
from bench.measure import energy
from bench.measure.energy import EnergyMeter, EnergyReading, available, energy_columns, make_meter, \
    parse_tegrastats_vdd_in_mw

HAS_CUDA = torch.cuda.is_available()


def test_cpu_is_unavailable_with_reason():
    ok, reason = available("cpu")
    assert ok is False
    assert reason.startswith("NVML not available:") and "cpu" in reason
    meter, reason = make_meter("cpu")
    assert meter is None and reason.startswith("NVML not available:")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA path; this machine has CUDA")
def test_cuda_without_gpu_is_unavailable():
    ok, reason = available("cuda:0")
    assert not ok and reason.startswith("NVML not available:")
    with pytest.raises(RuntimeError, match="NVML not available"):
        EnergyMeter(0)
    info = env.gpu_info("cuda")
    assert info["available"] is False and "CUDA not available" in info["reason"]


def test_columns_from_reading():
    r = EnergyReading(energy_j=12.0, elapsed_s=4.0, source="nvml")
    assert r.mean_power_w == 3.0
    assert energy_columns(r, images=6) == {"energy_j_per_image": 2.0, "mean_power_w": 3.0}
    cols = energy_columns(None, images=6)
    assert math.isnan(cols["energy_j_per_image"]) and math.isnan(cols["mean_power_w"])
    cols = energy_columns(EnergyReading(None, 1.0, "nvml", "why"), images=3)
    assert math.isnan(cols["energy_j_per_image"])


def test_tegrastats_parsing():
    line = ("RAM 2481/7620MB (lfb 1x4MB) CPU [3%@1420,1%@1420] GR3D_FREQ 0% VDD_IN 5123mW/4980mW "
            "VDD_CPU_GPU_CV 480mW/478mW VDD_SOC 1440mW/1437mW")
    assert parse_tegrastats_vdd_in_mw(line) == 5123.0
    assert parse_tegrastats_vdd_in_mw("RAM 1/2MB CPU [1%@100]") is None


class _FakeNVML(types.ModuleType):
    """A stand-in for pynvml: counts millijoules; can pretend to be a pre-Volta GPU."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self, supported=True):
        super().__init__("pynvml")
        self.supported = supported
        self.mj = 1_000_000
        self.NVMLError_NotSupported.__bases__ = (self.NVMLError,)

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.supported:
            raise self.NVMLError_NotSupported("Not Supported")
        self.mj += 2500  # 2.5 J per read
        return self.mj


def _patch(monkeypatch, fake):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(env_gpu, "nvml_init", lambda: fake)
    monkeypatch.setattr(env_gpu, "nvml_handle", lambda pynvml, idx: (object(), "uuid"))


def test_nvml_path_with_fake_counter(monkeypatch):
    fake = _FakeNVML()
    _patch(monkeypatch, fake)
    assert available("cuda:0") == (True, "")
    m = EnergyMeter("cuda:0")
    m.start()
    r = m.stop()
    assert r.source == "nvml" and r.energy_j == pytest.approx(2.5)
    assert any("short_window" in n for n in r.notes)
    with pytest.raises(RuntimeError, match="before start"):
        m.stop()


def test_pre_volta_not_supported(monkeypatch):
    _patch(monkeypatch, _FakeNVML(supported=False))
    ok, reason = available(0)
    assert not ok and "not supported" in reason and reason.startswith("NVML not available:")


def test_jetson_tegrastats_meter_with_fake_tool(monkeypatch, tmp_path):
    # A stand-in tegrastats printing a constant 5 W board input power every 50 ms.
    exe = tmp_path / "tegrastats"
    exe.write_text("#!/bin/sh\nwhile true; do echo 'RAM 1/2MB VDD_IN 5000mW/5000mW VDD_SOC 900mW/900mW'; "
                   "sleep 0.05; done\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(env_jetson, "is_jetson", lambda: True)
    monkeypatch.setattr(env_jetson, "_has_module", lambda name: False)
    assert energy.TegraPowerMeter.available() == (True, "")
    meter, reason = make_meter("cuda:0") if not HAS_CUDA else (energy.TegraPowerMeter(), "")
    assert isinstance(meter, energy.TegraPowerMeter) and reason == ""
    meter.start()
    __import__("time").sleep(0.6)
    r = meter.stop()
    meter.close()
    assert r.source == "tegrastats:VDD_IN" and r.energy_j is not None, r
    assert r.mean_power_w == pytest.approx(5.0, rel=0.05)


def test_jetson_power_mode_from_nvpmodel(monkeypatch, tmp_path):
    exe = tmp_path / "nvpmodel"
    exe.write_text("#!/bin/sh\necho 'NVPM WARN: patching'\necho 'NV Power Mode: MAXN'\necho 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    assert env.nvpmodel_mode() == "MAXN (0)"
    monkeypatch.setattr(env_jetson, "is_jetson", lambda: True)
    info = env.jetson_info()
    assert info["jetson"] is True and info["power_mode"] == "MAXN (0)"


def test_cpu_metadata():
    assert isinstance(env.device_name("cpu"), str) and env.device_name("cpu")
    assert all(isinstance(v, bool) for v in env.cpu_isa().values())


class _FakeNVMLDevices(_FakeNVML):
    """Two NVML devices with names and memory: the parent-side readers (no torch, no CUDA init)."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return f"GPU{h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=(h + 1) * 2**30, free=(h + 1) * 2**29)

    def nvmlSystemGetDriverVersion(self):
        return b"999.1"

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 300_000


def test_parent_side_gpu_facts_come_from_nvml(monkeypatch):
    monkeypatch.setattr(env_gpu, "nvml_init", lambda: _FakeNVMLDevices())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    env_gpu.gpus.cache_clear()
    try:
        (g,) = env.gpus()
        assert g["index"] == 0 and g["nvml_index"] == 1 and g["name"] == "GPU1" and g["driver"] == "999.1"
        assert g["memory_total_mb"] == 2048 and g["power_limit_w"] == 300 and "pstate" not in g
        assert env.device_name("cuda:0") == "GPU1" and env.device_name("cuda") == "GPU1"
        assert env.free_memory_bytes("cuda:0") == 2**30 and env.free_memory_bytes("cuda:1") is None
    finally:
        env_gpu.gpus.cache_clear()
