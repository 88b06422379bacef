"""GPU facts: NVML (package nvidia-ml-py, module pynvml) in the parent, NVML plus torch.cuda in the child.

The runner parent and the fork server must stay CUDA-clean (a CUDA driver initialised in the fork server breaks
CUDA in every forked child), so nothing here imports torch at import time, and the parent-side readers
(`gpus`, `device_name`, `free_memory_bytes`) go through NVML, which does not initialise CUDA. They map a CUDA index
to NVML's by position, which holds because `cuda_env()` gives the children `CUDA_DEVICE_ORDER=PCI_BUS_ID`
(NVML's order). In the child, `nvml_handle` matches torch's device to NVML by UUID, then PCI bus id (recorded in
`nvml_match`), since there torch may see a device order or a visible set that differs from NVML's.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

from bench.env.jetson import jetson_info
from bench.env.machine import cpu_name, free_ram_bytes


def cuda_env() -> dict[str, str]:
    """For the children: CUDA order = NVML order; torch's availability checks through NVML (no driver init)."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def nvml_init() -> Any:
    """The pynvml module, initialised (the caller shuts it down); RuntimeError('NVML not available: ...') if not."""
    try:
        import pynvml
    except ImportError as e:
        raise RuntimeError(f"NVML not available: pynvml (package nvidia-ml-py) is not installed ({e})") from None
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as e:  # OSError: the shared library failed to load in an unusual way
        raise RuntimeError(f"NVML not available: {e}") from None
    return pynvml


@contextmanager
def nvml() -> Iterator[Any]:
    """`with nvml() as nv:` an initialised pynvml for one query, shut down after it."""
    nv = nvml_init()
    try:
        yield nv
    finally:
        _try(nv.nvmlShutdown)


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _try(fn: Callable, *args: Any) -> Any:
    """fn(*args), None where the driver does not give that fact (NVML raises for unsupported queries)."""
    try:
        return fn(*args)
    except Exception:
        return None


def _ask(nv: Any, query: str, *args: Any) -> Any:
    """nv.<query>(*args), None where unsupported or where this pynvml version lacks the query."""
    return _try(lambda: getattr(nv, query)(*args))


def _visible_indices(count: int) -> list[int] | None:
    """NVML indices of the CUDA-visible devices, in CUDA order; None if CUDA_VISIBLE_DEVICES uses UUIDs."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None:
        return list(range(count))
    out = []
    for t in (t.strip() for t in vis.split(",")):
        if not t:
            continue
        if not t.lstrip("-").isdigit():
            return None
        i = int(t)
        if i < 0 or i >= count:
            break  # CUDA stops at the first invalid entry
        out.append(i)
    return out


def _nvml_facts(nv: Any, h: Any) -> dict[str, Any]:
    """What NVML says about one device: memory, clocks, power, state (None where unsupported)."""
    mem = _ask(nv, "nvmlDeviceGetMemoryInfo", h)
    cc = _ask(nv, "nvmlDeviceGetCudaComputeCapability", h)
    pci = _ask(nv, "nvmlDeviceGetPciInfo", h)
    lim = _ask(nv, "nvmlDeviceGetEnforcedPowerLimit", h) or _ask(nv, "nvmlDeviceGetPowerManagementLimit", h)
    pw = _ask(nv, "nvmlDeviceGetPowerUsage", h)
    mig = _ask(nv, "nvmlDeviceGetMigMode", h)
    return {
        "memory_total_mb": mem.total / 2**20 if mem else None,
        "memory_free_mb": mem.free / 2**20 if mem else None,
        "compute_capability": ".".join(map(str, cc)) if cc else None,
        "pci_bus_id": _s(pci.busId) if pci else None,
        "sm_clock_mhz": _ask(nv, "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM),
        "mem_clock_mhz": _ask(nv, "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_MEM),
        "sm_clock_max_mhz": _ask(nv, "nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_SM),
        "mem_clock_max_mhz": _ask(nv, "nvmlDeviceGetMaxClockInfo", h, nv.NVML_CLOCK_MEM),
        "sm_clock_app_mhz": _ask(nv, "nvmlDeviceGetApplicationsClock", h, nv.NVML_CLOCK_SM),
        "power_limit_w": lim / 1000.0 if lim else None,
        "power_now_w": pw / 1000.0 if pw is not None else None,
        "pstate": _ask(nv, "nvmlDeviceGetPerformanceState", h),
        "temperature_c": _ask(nv, "nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU),
        "persistence_mode": _ask(nv, "nvmlDeviceGetPersistenceMode", h),
        "mig_mode": mig[0] if isinstance(mig, (list, tuple)) else mig,
        "energy_counter": _ask(nv, "nvmlDeviceGetTotalEnergyConsumption", h) is not None,
    }


@lru_cache(maxsize=None)
def gpus() -> tuple[dict, ...]:
    """One dict per CUDA-visible GPU (CUDA order), from NVML only: name, driver and the facts NVML gives."""
    try:
        with nvml() as nv:
            idx = _visible_indices(nv.nvmlDeviceGetCount())
            driver = _s(_try(nv.nvmlSystemGetDriverVersion))
            out = []
            for cuda_i, i in enumerate(idx or ()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                d = {"index": cuda_i, "nvml_index": i, "name": _s(nv.nvmlDeviceGetName(h)), "driver": driver}
                d.update((k, v) for k, v in _nvml_facts(nv, h).items() if v is not None)
                out.append(d)
            return tuple(out)
    except Exception:  # no NVML, or a driver that fails a query: no GPU facts rather than no run
        return ()


def cuda_available() -> bool:
    """torch's word (imports torch: for the child, or a parent that does not fork)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except (ImportError, RuntimeError):
        return False


def cuda_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except (ImportError, RuntimeError):
        return 0


def cuda_index(device: Any) -> int:
    """The index of a CUDA device given as int, "cuda", "cuda:N" or torch.device (plain "cuda": the current one).

    Parses the name itself and asks torch only where CUDA is already initialised (before that the current device
    is 0), so the CUDA-clean parent can call it."""
    if isinstance(device, int):
        return device
    kind, _, index = str(device).partition(":")
    if kind != "cuda":
        raise ValueError(f"not a CUDA device: {device}")
    if index:
        return int(index)
    torch = sys.modules.get("torch")
    return torch.cuda.current_device() if torch is not None and torch.cuda.is_initialized() else 0


def nvml_handle(nv: Any, index: int) -> tuple[Any, str]:
    """NVML handle of torch's CUDA device `index` and how it was matched ("uuid", "pci", "index")."""
    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        for cand in (str(uuid), f"GPU-{uuid}", f"MIG-{uuid}"):
            h = _try(nv.nvmlDeviceGetHandleByUUID, cand)
            if h is not None:
                return h, "uuid"
    dom, bus, dev = (getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    if bus is not None and dev is not None:
        h = _try(nv.nvmlDeviceGetHandleByPciBusId, f"{(dom or 0):08x}:{bus:02x}:{dev:02x}.0")
        if h is not None:
            return h, "pci"
    visible = _visible_indices(nv.nvmlDeviceGetCount()) or []
    return nv.nvmlDeviceGetHandleByIndex(visible[index] if index < len(visible) else index), "index"


def _nvml_fields(index: int) -> dict[str, Any]:
    """gpu_info's NVML part; without NVML only {"nvml_error": reason}."""
    try:
        nv = nvml_init()
    except RuntimeError as e:
        return {"nvml_error": str(e)}
    try:
        h, how = nvml_handle(nv, index)
        cuda_drv = _try(getattr(nv, "nvmlSystemGetCudaDriverVersion_v2", nv.nvmlSystemGetCudaDriverVersion))
        out = {"nvml_match": how, "driver_version": _s(_try(nv.nvmlSystemGetDriverVersion))}
        if cuda_drv:
            out["cuda_driver_version"] = f"{cuda_drv // 1000}.{(cuda_drv % 1000) // 10}"
        out.update(_nvml_facts(nv, h))
        return out
    except Exception as e:  # pragma: no cover - depends on the driver
        return {"nvml_error": f"NVML query failed: {e}"}
    finally:
        _try(nv.nvmlShutdown)


def gpu_info(device: Any = "cuda") -> dict:
    """Metadata of one CUDA device (torch.cuda, then NVML, then Jetson); {"available": False, "reason": ...}
    without CUDA. Initialises CUDA: for the child or a tool, not the runner parent."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "reason": "CUDA not available: " + _no_cuda_reason()}
    idx = cuda_index(device)
    if idx >= torch.cuda.device_count():
        return {"available": False, "reason": f"no CUDA device {idx}: {torch.cuda.device_count()} visible"}
    p = torch.cuda.get_device_properties(idx)
    out: dict[str, Any] = {
        "available": True, "index": idx, "name": p.name, "sm_count": p.multi_processor_count,
        "capability": f"{p.major}.{p.minor}", "total_memory_mb": round(p.total_memory / 2**20, 1),
        "uuid": str(getattr(p, "uuid", "")) or None, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "torch": torch.__version__, "bf16_supported": bool(torch.cuda.is_bf16_supported()),
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
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA"
    try:
        n = torch.cuda.device_count()
    except RuntimeError as e:  # pragma: no cover
        return str(e)
    if n == 0:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        return "no CUDA device visible" + (f" (CUDA_VISIBLE_DEVICES={vis!r})" if vis is not None else "")
    return "torch.cuda.is_available() is False"


def device_name(device: Any) -> str:
    """The device_name column: the CPU model for "cpu"; for CUDA the GPU's name from NVML (no CUDA init in the
    parent), torch only where NVML does not know the device (that initialises CUDA)."""
    if str(device).split(":")[0] != "cuda":
        return cpu_name()
    idx = cuda_index(device)
    g = gpus()
    if idx < len(g):
        return g[idx]["name"]
    import torch

    return torch.cuda.get_device_name(idx)


def free_memory_bytes(device: str) -> int | None:
    """Memory available for a new process on `device` (RAM for cpu; NVML free memory for cuda:N), None if unknown."""
    if str(device).split(":")[0] != "cuda":
        return free_ram_bytes()
    idx = cuda_index(device)
    try:
        with nvml() as nv:
            vis = _visible_indices(nv.nvmlDeviceGetCount())
            if vis is None or idx >= len(vis):
                return None
            return int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(vis[idx])).free)
    except Exception:  # no NVML or a failing query: unknown, the runner then does not pre-check memory
        return None
