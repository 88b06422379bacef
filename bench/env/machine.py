"""Host and CPU facts: time stamp, CPU model and features, core counts, free RAM, package versions, git commit.

No torch and no GPU here: the runner parent reads these before any child exists.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "numpy", "scipy", "pandas", "pyarrow", "psutil", "nvidia-ml-py", "onnx", "onnxruntime",
            "onnxscript", "torch-tensorrt", "tensorrt", "timm", "densebench")
# x86 flags, then ARM features, that say whether reduced precision runs natively (VNNI: int8 dot products)
ISA_KEYS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_fp16",
            "amx_tile",
            "bf16", "fphp", "asimdhp", "sve", "sve2")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_text(path: str) -> str | None:
    """A small system file's stripped text, None where it is missing or unreadable (facts are best effort)."""
    try:
        return Path(path).read_text(errors="ignore").strip()
    except OSError:
        return None


@lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (x86 "model name", ARM "Hardware"/"cpu model"), else platform's word."""
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def cpu_isa() -> dict[str, bool]:
    """Reduced-precision CPU features (x86 flags; ARM Features): whether bf16/fp16 are native; {} if unknown."""
    flags: set[str] = set()
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return {k: (k in flags) for k in ISA_KEYS} if flags else {}


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except ImportError:
        pass
    return os.cpu_count() or 1


def usable_cpus() -> int:
    """The CPUs this process may run on (affinity, e.g. under taskset or a container), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def free_ram_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def git_commit() -> dict:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out
