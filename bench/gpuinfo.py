"""CUDA device metadata: GPU name, SM count, clocks, driver, CUDA version, power limit; Jetson board and power mode.

Sources: `torch.cuda` (name, SMs, memory, capability, UUID, PCI ids, CUDA runtime torch was built with) and NVML
through `pynvml` (package nvidia-ml-py: driver, CUDA driver version, clocks, power limit, persistence mode,
P-state, temperature). NVML is optional: every field it provides is None when it is missing, with the reason in
`nvml_error`. Jetson boards have no NVML power or clocks; there the power mode comes from `nvpmodel -q` and the
board from the device tree.

torch's device index and NVML's index differ when CUDA_VISIBLE_DEVICES is set or when CUDA orders devices by speed
(the default) and NVML by PCI bus: `nvml_handle` matches the torch device to its NVML handle by UUID, then by PCI
bus id, and only then by index (recorded in `nvml_match`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch


def cuda_index(device: Any) -> int:
    """The index of a CUDA device given as int, "cuda", "cuda:N" or torch.device (plain "cuda": the current one)."""
    if isinstance(device, int):
        return device
    d = torch.device(device)
    if d.type != "cuda":
        raise ValueError(f"not a CUDA device: {d}")
    if d.index is not None:
        return d.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def nvml_import():
    """The pynvml module, initialised; raises RuntimeError('NVML not available: ...') when it cannot be."""
    try:
        import pynvml
    except ImportError as e:
        raise RuntimeError(f"NVML not available: pynvml (package nvidia-ml-py) is not installed ({e})") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise RuntimeError(f"NVML not available: {e}") from None
    except OSError as e:  # the shared library failed to load in an unusual way
        raise RuntimeError(f"NVML not available: {e}") from None
    return pynvml


def nvml_handle(pynvml, index: int) -> tuple[Any, str]:
    """NVML handle of torch's CUDA device `index` and how it was matched ("uuid", "pci", "index")."""
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        s = str(uuid)
        for cand in (s, f"GPU-{s}", f"MIG-{s}"):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(cand), "uuid"
            except Exception:
                pass
    dom, bus, dev = (getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    if bus is not None and dev is not None:
        pci = f"{(dom or 0):08x}:{bus:02x}:{dev:02x}.0"
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(pci), "pci"
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index), "index"


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _nvml_fields(index: int) -> dict:
    out: dict[str, Any] = {}
    try:
        pynvml = nvml_import()
    except RuntimeError as e:
        out["nvml_error"] = str(e)
        return out
    try:
        h, how = nvml_handle(pynvml, index)
        out["nvml_match"] = how
        out["driver_version"] = _s(_try(pynvml.nvmlSystemGetDriverVersion))
        cuda_drv = _try(getattr(pynvml, "nvmlSystemGetCudaDriverVersion_v2", pynvml.nvmlSystemGetCudaDriverVersion))
        if cuda_drv:
            out["cuda_driver_version"] = f"{cuda_drv // 1000}.{(cuda_drv % 1000) // 10}"
        C = pynvml
        out["sm_clock_mhz"] = _try(C.nvmlDeviceGetClockInfo, h, C.NVML_CLOCK_SM)
        out["mem_clock_mhz"] = _try(C.nvmlDeviceGetClockInfo, h, C.NVML_CLOCK_MEM)
        out["sm_clock_max_mhz"] = _try(C.nvmlDeviceGetMaxClockInfo, h, C.NVML_CLOCK_SM)
        out["mem_clock_max_mhz"] = _try(C.nvmlDeviceGetMaxClockInfo, h, C.NVML_CLOCK_MEM)
        out["sm_clock_app_mhz"] = _try(C.nvmlDeviceGetApplicationsClock, h, C.NVML_CLOCK_SM)
        lim = _try(C.nvmlDeviceGetEnforcedPowerLimit, h) or _try(C.nvmlDeviceGetPowerManagementLimit, h)
        out["power_limit_w"] = lim / 1000.0 if lim else None
        pw = _try(C.nvmlDeviceGetPowerUsage, h)
        out["power_now_w"] = pw / 1000.0 if pw is not None else None
        out["pstate"] = _try(C.nvmlDeviceGetPerformanceState, h)
        out["temperature_c"] = _try(C.nvmlDeviceGetTemperature, h, C.NVML_TEMPERATURE_GPU)
        out["persistence_mode"] = _try(C.nvmlDeviceGetPersistenceMode, h)
        mig = _try(C.nvmlDeviceGetMigMode, h)
        out["mig_mode"] = mig[0] if isinstance(mig, (list, tuple)) else mig
        energy = _try(C.nvmlDeviceGetTotalEnergyConsumption, h)
        out["energy_counter"] = energy is not None
    except Exception as e:  # pragma: no cover - depends on the driver
        out["nvml_error"] = f"NVML query failed: {e}"
    finally:
        _try(pynvml.nvmlShutdown)
    return out


def is_jetson() -> bool:
    """A Jetson (Tegra) board: /etc/nv_tegra_release, or a tegra device-tree model."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return "jetson" in Path("/proc/device-tree/model").read_text(errors="ignore").lower()
    except OSError:
        return False


def jetson_info() -> dict:
    """Board model, L4T release and power mode (nvpmodel -q); {} when not a Jetson. Best effort."""
    if not is_jetson():
        return {}
    out: dict[str, Any] = {"jetson": True}
    try:
        out["board"] = Path("/proc/device-tree/model").read_text(errors="ignore").strip("\x00\n ")
    except OSError:
        pass
    try:
        out["l4t_release"] = Path("/etc/nv_tegra_release").read_text(errors="ignore").splitlines()[0].strip()
    except (OSError, IndexError):
        pass
    out["power_mode"] = nvpmodel_mode()
    out["power_source"] = "jtop" if _has_module("jtop") else ("tegrastats" if shutil.which("tegrastats") else None)
    return out


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def nvpmodel_mode() -> str | None:
    """The Jetson power mode as `nvpmodel -q` says it ("NV Power Mode: MAXN" + mode id), or None."""
    exe = shutil.which("nvpmodel")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    mode = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("nv power mode")), None)
    ids = [ln for ln in lines if re.fullmatch(r"\d+", ln)]
    if mode and ids:
        return f"{mode} ({ids[0]})"
    return mode or (lines[0] if lines else None)


def gpu_info(device: Any = "cuda") -> dict:
    """Metadata of one CUDA device; {"available": False, "reason": ...} without CUDA."""
    if not torch.cuda.is_available():
        return {"available": False, "reason": "CUDA not available: " + _no_cuda_reason()}
    idx = cuda_index(device)
    if idx >= torch.cuda.device_count():
        return {"available": False, "reason": f"no CUDA device {idx}: {torch.cuda.device_count()} visible"}
    p = torch.cuda.get_device_properties(idx)
    out: dict[str, Any] = {
        "available": True,
        "index": idx,
        "name": p.name,
        "sm_count": p.multi_processor_count,
        "capability": f"{p.major}.{p.minor}",
        "total_memory_mb": round(p.total_memory / 2**20, 1),
        "uuid": str(getattr(p, "uuid", "")) or None,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch": torch.__version__,
        "bf16_supported": bool(torch.cuda.is_bf16_supported()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    for k in ("L2_cache_size", "clock_rate", "memory_clock_rate", "memory_bus_width", "is_integrated"):
        v = getattr(p, k, None)
        if v is not None:
            out[k.lower()] = v
    out.update(_nvml_fields(idx))
    out.update(jetson_info())
    return out


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA"
    try:
        n = torch.cuda.device_count()
    except Exception as e:  # pragma: no cover
        return str(e)
    if n == 0:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        return "no CUDA device visible" + (f" (CUDA_VISIBLE_DEVICES={vis!r})" if vis is not None else "")
    return "torch.cuda.is_available() is False"


def device_name(device: Any) -> str:
    """A short name for the device_name column: the GPU name, or the CPU model."""
    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(cuda_index(d))
    return cpu_model()


def cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.lower().startswith(("model name", "hardware", "cpu model")):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def cpu_isa() -> dict:
    """Reduced-precision CPU features from /proc/cpuinfo (x86 flags; ARM Features): whether bf16/fp16 are native."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags: set[str] = set()
    for ln in text.splitlines():
        if ln.lower().startswith(("flags", "features")):
            flags.update(ln.split(":", 1)[1].split())
            break
    keys = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile",  # x86
            "bf16", "fphp", "asimdhp", "sve", "sve2")  # ARM
    return {k: (k in flags) for k in keys if flags}
