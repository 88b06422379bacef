"""Energy of the timed iterations: NVML's total-energy counter on NVIDIA GPUs, board rails on Jetson (best effort).

Usage (the engine):

    ok, reason = available(device)          # or make_meter(device) -> (meter | None, reason)
    meter = EnergyMeter(index); meter.start(); ...timed loop...; torch.cuda.synchronize(); r = meter.stop()
    columns = energy_columns(r, images=n_iters * batch)   # energy_j_per_image, mean_power_w

NVML (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded, Volta and newer) is read
before and after; it updates every ~10-100 ms, so a window under ~1 s is flagged (`short_window`) and the
engine should time at least ~1 s of iterations for energy. The counter is the whole GPU's: another process on
the same GPU contaminates it (recorded as a caveat, not detected). Pre-Volta GPUs raise NVMLError_NotSupported
-> `available()` is False with that reason; so do MIG instances.

Jetson has no NVML power: `TegraPowerMeter` samples the board's VDD_IN rail (the whole board's input power)
from `jtop` (jetson-stats) when importable, else from `tegrastats`, in a background thread, and integrates it.
Best effort: any failure gives a reading with `energy_j = None` and the reason.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.env import gpu, jetson

SHORT_WINDOW_S = 1.0


@dataclass
class EnergyReading:
    energy_j: float | None
    elapsed_s: float
    source: str  # "nvml", "jtop:VDD_IN", "tegrastats:VDD_IN"
    reason: str = ""  # why energy_j is None
    notes: list[str] = field(default_factory=list)

    @property
    def mean_power_w(self) -> float | None:
        if self.energy_j is None or self.elapsed_s <= 0:
            return None
        return self.energy_j / self.elapsed_s


def energy_columns(reading: EnergyReading | None, images: int) -> dict:
    """The result columns from a reading: energy_j_per_image and mean_power_w (NaN where unavailable)."""
    nan = float("nan")
    if reading is None or reading.energy_j is None or images <= 0:
        return {"energy_j_per_image": nan, "mean_power_w": nan}
    return {"energy_j_per_image": reading.energy_j / images, "mean_power_w": reading.mean_power_w}


def available(device: Any = 0) -> tuple[bool, str]:
    """(True, "") when NVML's energy counter can be read for this CUDA device, else (False, reason).

    `device` is a torch CUDA index, "cuda", "cuda:N" or a torch.device; "cpu" gives (False, reason).
    """
    try:
        idx = gpu.cuda_index(device)
    except ValueError:
        return False, f"NVML not available: energy is measured on NVIDIA GPUs, not on {torch.device(device).type}"
    if not torch.cuda.is_available():
        return False, "NVML not available: CUDA not available"
    try:
        with gpu.nvml() as nv:
            return _probe(nv, idx)
    except RuntimeError as e:  # NVML itself is not available
        return False, str(e)


def _probe(nv: Any, idx: int) -> tuple[bool, str]:
    """Read the counter once: the only reliable test (pre-Volta GPUs and MIG instances raise NotSupported)."""
    try:
        h, _ = gpu.nvml_handle(nv, idx)
        nv.nvmlDeviceGetTotalEnergyConsumption(h)
        return True, ""
    except nv.NVMLError_NotSupported:
        return False, "NVML not available: the total-energy counter is not supported on this GPU (pre-Volta or MIG)"
    except nv.NVMLError as e:
        return False, f"NVML not available: {e}"
    except Exception as e:  # a torch index with no NVML device, ...
        return False, f"NVML not available: {type(e).__name__}: {e}"


class EnergyMeter:
    """NVML total-energy counter of one CUDA device, read at start() and stop().

    Construct only after `available()` said yes, else it raises RuntimeError with the reason. The caller
    synchronises the device before stop() so that the work is inside the window.
    """

    def __init__(self, device_index: Any = 0):
        ok, reason = available(device_index)
        if not ok:
            raise RuntimeError(reason)
        self._nvml = gpu.nvml_init()
        self._handle, self.match = gpu.nvml_handle(self._nvml, gpu.cuda_index(device_index))
        self._e0: int | None = None
        self._t0 = 0.0

    def _read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def start(self) -> None:
        self._e0 = self._read_mj()
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        if self._e0 is None:
            raise RuntimeError("EnergyMeter.stop() before start()")
        e1 = self._read_mj()
        dt = time.perf_counter() - self._t0
        notes = ["whole-GPU counter: other processes on this GPU are included"]
        if dt < SHORT_WINDOW_S:
            notes.append(f"short_window: {dt:.3f} s < {SHORT_WINDOW_S} s; the counter updates every 10-100 ms")
        delta = e1 - self._e0
        self._e0 = None
        if delta < 0:  # counter reset (driver reload) during the window
            return EnergyReading(None, dt, "nvml", "NVML energy counter went backwards (driver reset?)", notes)
        return EnergyReading(delta / 1000.0, dt, "nvml", "", notes)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass

    def __enter__(self) -> "EnergyMeter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._e0 is not None:
            self.reading = self.stop()
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Jetson: board power from the VDD_IN rail (best effort)

_TEGRA_VDD_IN = re.compile(r"VDD_IN\s+(\d+)\s*mW")


def parse_tegrastats_vdd_in_mw(line: str) -> float | None:
    """Instantaneous VDD_IN power in mW from one tegrastats line ('... VDD_IN 5123mW/4980mW ...'), or None."""
    m = _TEGRA_VDD_IN.search(line)
    return float(m.group(1)) if m else None


class TegraPowerMeter:
    """Samples VDD_IN (board input power) while running, integrates power over time (trapezoid)."""

    def __init__(self, interval_ms: int = 100):
        self.interval_ms = interval_ms
        self.source = None
        self._samples: list[tuple[float, float]] = []  # (t, W)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._jtop = None
        self.error = ""

    @staticmethod
    def available() -> tuple[bool, str]:
        if not jetson.is_jetson():
            return False, "not a Jetson board"
        if jetson.jetson_power_source():
            return True, ""
        return False, "Jetson power: neither jtop (jetson-stats) nor tegrastats found"

    def _run_tegrastats(self) -> None:
        exe = shutil.which("tegrastats")
        try:
            self._proc = subprocess.Popen([exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                mw = parse_tegrastats_vdd_in_mw(line)
                if mw is not None:
                    self._samples.append((time.perf_counter(), mw / 1000.0))
                if self._stop.is_set():
                    break
        except Exception as e:  # pragma: no cover - Jetson only
            self.error = f"tegrastats failed: {e}"

    def _run_jtop(self) -> None:  # pragma: no cover - Jetson only
        try:
            from jtop import jtop
            with jtop(interval=self.interval_ms / 1000.0) as j:
                while not self._stop.is_set() and j.ok():
                    p = j.power
                    w = None
                    rails = p.get("rail", {}) if isinstance(p, dict) else {}
                    for name, rail in rails.items():
                        if "VDD_IN" in name.upper():
                            w = rail.get("power", None)
                    if w is None and isinstance(p, dict):
                        w = p.get("tot", {}).get("power")
                    if w is not None:
                        self._samples.append((time.perf_counter(), float(w) / 1000.0))
        except Exception as e:
            self.error = f"jtop failed: {e}"

    def start(self) -> None:
        self._samples.clear()
        self._stop.clear()
        if jetson.jetson_power_source() == "jtop":
            self.source, target = "jtop:VDD_IN", self._run_jtop
        else:
            self.source, target = "tegrastats:VDD_IN", self._run_tegrastats
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def stop(self) -> EnergyReading:
        t1 = time.perf_counter()
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=3)
        dt = t1 - self._t0
        s = [(t, w) for t, w in self._samples if self._t0 <= t <= t1 + self.interval_ms / 1000.0]
        if len(s) < 2:
            return EnergyReading(None, dt, self.source or "jetson", self.error or
                                 f"too few power samples ({len(s)}) in {dt:.2f} s", ["board power (VDD_IN)"])
        e = sum((t2 - t1_) * (w1 + w2) / 2 for (t1_, w1), (t2, w2) in zip(s, s[1:]))
        span = s[-1][0] - s[0][0]
        e *= dt / span if span > 0 else 1.0  # scale the sampled span to the window
        return EnergyReading(e, dt, self.source or "jetson", "", ["board power (VDD_IN), includes CPU and DRAM"])

    def close(self) -> None:  # same interface as EnergyMeter
        if self._thread is not None and self._thread.is_alive():
            self.stop()


def make_meter(device: Any) -> tuple[Any | None, str]:
    """The right meter for a device: (EnergyMeter | TegraPowerMeter | None, reason when None)."""
    d = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if d.type != "cuda":
        return None, f"NVML not available: energy is measured on NVIDIA GPUs, not on {d.type}"
    ok, reason = available(d)
    if ok:
        return EnergyMeter(d), ""
    tok, treason = TegraPowerMeter.available()
    if tok:
        return TegraPowerMeter(), ""
    return None, reason
