"""Jetson (Tegra) board facts: board model, L4T release, power mode, and where board power can be read.

Jetson boards have no NVML power or clocks: the power mode comes from `nvpmodel -q`, the board from the device
tree, and board power from jtop (jetson-stats) or tegrastats (see bench.measure.energy.TegraPowerMeter).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.env.machine import read_text


def is_jetson() -> bool:
    """A Jetson (Tegra) board: /etc/nv_tegra_release, or a jetson device-tree model."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    return "jetson" in (read_text("/proc/device-tree/model") or "").lower()


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def jetson_power_source() -> str | None:
    """Where board power is read on this Jetson: "jtop" (preferred), "tegrastats", or None."""
    if _has_module("jtop"):
        return "jtop"
    return "tegrastats" if shutil.which("tegrastats") else None


def jetson_info() -> dict[str, Any]:
    """Board model, L4T release and power mode (nvpmodel -q); {} when not a Jetson. Best effort."""
    if not is_jetson():
        return {}
    out: dict[str, Any] = {"jetson": True}
    board = read_text("/proc/device-tree/model")
    if board is not None:
        out["board"] = board.strip("\x00\n ")
    release = (read_text("/etc/nv_tegra_release") or "").splitlines()
    if release:
        out["l4t_release"] = release[0].strip()
    out["power_mode"] = nvpmodel_mode()
    out["power_source"] = jetson_power_source()
    return out


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
