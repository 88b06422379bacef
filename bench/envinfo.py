"""Environment metadata for meta.json, and device names, without initialising CUDA in the calling process.

GPUs are read through NVML (`nvidia-ml-py`, module `pynvml`); CUDA's own device order is made equal to NVML's by
`CUDA_DEVICE_ORDER=PCI_BUS_ID`, which `cuda_env()` returns for the child processes.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "numpy", "scipy", "pandas", "pyarrow", "psutil", "nvidia-ml-py", "onnx", "onnxruntime",
            "onnxscript", "torch-tensorrt", "tensorrt", "timm", "densebench")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:
        pass
    return os.cpu_count() or 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cuda_env() -> dict[str, str]:
    """For the children: CUDA order = NVML order; torch's availability checks through NVML, which does not
    initialise the CUDA driver (a driver initialised in the fork server would break CUDA in every forked child)."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _visible_indices(count: int) -> list[int] | None:
    """NVML indices of the CUDA-visible devices, in CUDA order; None if CUDA_VISIBLE_DEVICES uses UUIDs."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None:
        return list(range(count))
    out = []
    for t in vis.split(","):
        t = t.strip()
        if not t:
            continue
        if not t.lstrip("-").isdigit():
            return None
        i = int(t)
        if i < 0 or i >= count:
            break
        out.append(i)
    return out


@lru_cache(maxsize=None)
def gpus() -> tuple[dict, ...]:
    """One dict per CUDA-visible GPU (CUDA order): name, memory, driver, SMs/clocks/power where NVML gives them."""
    nv = _nvml()
    if nv is None:
        return ()
    try:
        count = nv.nvmlDeviceGetCount()
        idx = _visible_indices(count)
        if idx is None:
            return ()
        driver = nv.nvmlSystemGetDriverVersion()
        out = []
        for cuda_i, i in enumerate(idx):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            d = {"index": cuda_i, "nvml_index": i, "name": _s(nv.nvmlDeviceGetName(h)), "driver": _s(driver)}
            for key, fn in (("memory_total_mb", lambda: nv.nvmlDeviceGetMemoryInfo(h).total / 2**20),
                            ("memory_free_mb", lambda: nv.nvmlDeviceGetMemoryInfo(h).free / 2**20),
                            ("sm_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
                            ("mem_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
                            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                            ("power_limit_w", lambda: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000),
                            ("compute_capability",
                             lambda: ".".join(map(str, nv.nvmlDeviceGetCudaComputeCapability(h)))),
                            ("pci_bus_id", lambda: _s(nv.nvmlDeviceGetPciInfo(h).busId))):
                try:
                    d[key] = fn()
                except Exception:
                    pass
            out.append(d)
        return tuple(out)
    except Exception:
        return ()


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def cuda_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def device_name(device: str) -> str:
    """'cpu' -> the CPU model; 'cuda:N' -> the GPU's name (NVML; torch as a fallback, which initialises CUDA)."""
    if device == "cpu":
        return cpu_name()
    idx = int(device.split(":")[1]) if ":" in device else 0
    g = gpus()
    if idx < len(g):
        return g[idx]["name"]
    import torch

    return torch.cuda.get_device_name(idx)


def free_memory_bytes(device: str) -> int | None:
    """Memory available for a new process on `device` (RAM for cpu; NVML free memory for cuda:N)."""
    if device == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except Exception:
            return None
    idx = int(device.split(":")[1]) if ":" in device else 0
    nv = _nvml()
    if nv is None:
        return None
    try:
        i = _visible_indices(nv.nvmlDeviceGetCount())
        if i is None or idx >= len(i):
            return None
        return int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i[idx])).free)
    except Exception:
        return None


def git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except Exception:
        return {"commit": None}


def _versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def environment(argv: list[str] | None = None) -> dict:
    """Everything about the machine and the software that a result depends on."""
    import psutil

    env = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_name(),
        "cpu_physical_cores": physical_cores(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_usable": usable_cpus(),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "ram_total_gb": round(psutil.virtual_memory().total / 2**30, 2),
        "ram_available_gb": round(psutil.virtual_memory().available / 2**30, 2),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": list(gpus()),
        "packages": _versions(),
        "git": git_commit(),
        "command": argv if argv is not None else sys.argv,
        "cwd": os.getcwd(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        env["torch_parallel"] = torch.__config__.parallel_info().splitlines()[:6]
        env["cuda_available"] = cuda_available()
    except Exception:
        pass
    return env
