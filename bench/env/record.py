"""The environment record of a run (meta.json "env"): everything about the machine and software a result
depends on. Reads GPUs through NVML only, so the runner parent stays CUDA-clean until torch is asked last."""
from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

from bench.env.gpu import cuda_available, gpus
from bench.env.machine import cpu_name, git_commit, package_versions, physical_cores, read_text, usable_cpus


def environment(argv: list[str] | None = None) -> dict[str, Any]:
    """Host, CPU, RAM, GPUs, package versions, git commit and command line (argv; default sys.argv)."""
    import psutil

    vm = psutil.virtual_memory()
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_name(),
        "cpu_physical_cores": physical_cores(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_usable": usable_cpus(),
        "cpu_governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "ram_total_gb": round(vm.total / 2**30, 2),
        "ram_available_gb": round(vm.available / 2**30, 2),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": list(gpus()),
        "packages": package_versions(),
        "git": git_commit(),
        "command": argv if argv is not None else sys.argv,
        "cwd": os.getcwd(),
    }
    env.update(_torch_facts())
    return env


def _torch_facts() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "torch_parallel": torch.__config__.parallel_info().splitlines()[:6],
            "cuda_available": cuda_available()}
