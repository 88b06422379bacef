"""Memory: peak resident memory of this process (CPU), CUDA peaks, and the would-it-fit estimate for attention.

CPU peak: Linux keeps the resident high-water mark (VmHWM) per process and resets it when "5" is written to
/proc/self/clear_refs, so `PeakRSS` resets it at the start and reads it at the end: exact, and free during timing.
Where that is not possible, a thread polls psutil's RSS every `interval_s` instead (polling can miss short peaks).
"""
from __future__ import annotations

import resource
import threading
from typing import Any
from pathlib import Path

MB = 2**20
ELEM_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakRSS:
    """Peak RSS of this process between start() and stop(), in bytes (method recorded in .method)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PeakRSS":
        self.peak = rss_bytes()
        if _reset_hwm():
            self.method = "VmHWM"
        else:
            self.method = "poll"
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self.method == "VmHWM":
            self.peak = max(self.peak, (_status_kb("VmHWM") or 0) * 1024)
        return self.peak

    def __enter__(self) -> "PeakRSS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def limit_address_space(extra_bytes: int) -> None:
    """RLIMIT_AS = current virtual size + extra_bytes (CPU-only children; CUDA reserves huge virtual ranges)."""
    vm = (_status_kb("VmSize") or 0) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    new = vm + int(extra_bytes)
    if hard != resource.RLIM_INFINITY:
        new = min(new, hard)
    resource.setrlimit(resource.RLIMIT_AS, (new, hard))


def is_oom_error(exc: BaseException) -> bool:
    """True for every way torch and Python report running out of memory (CUDA, CPU allocator, MemoryError)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                      getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
        if oom_types and isinstance(exc, oom_types):
            return True
    except Exception:
        pass
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in msg for s in (
        "out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
        "failed to allocate", "std::bad_alloc", "cudnn_status_alloc_failed", "cublas_status_alloc_failed"))


def attention_footprint(name: str, height: int, width: int, batch: int) -> int:
    """Elements of the largest attention-score matrix (batch x heads x Nq x Nk) one forward would materialise.

    Traced on the meta device (no memory, well under a second), recording every scaled_dot_product_attention call
    and every softmax; 0 for models without either. Fused kernels (CPU/CUDA flash) avoid materialising it, ONNX
    exports and the math path do not, so this is the worst case.
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    from models.registry import build_model, input_shape

    largest = [0]

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention:
                q, k = args[0], args[1]
                n = 1
                for s in q.shape[:-1]:
                    n *= int(s)
                largest[0] = max(largest[0], n * int(k.shape[-2]))
            elif func in (torch.softmax, F.softmax, torch.Tensor.softmax):
                largest[0] = max(largest[0], int(args[0].numel()))
            return func(*args, **kwargs)

    with torch.device("meta"):
        model = build_model(name)
    x = torch.empty(input_shape(name, height, width, batch), device="meta")
    with torch.no_grad(), Spy():
        model(x)
    return largest[0]


def materialises_scores(device_type: str, backend: str, precision: str) -> bool:
    """Whether the attention will hold the N^2 scores in memory for this setting.

    In PyTorch, scaled_dot_product_attention picks a flash / memory-efficient kernel (O(N) memory) on the CPU and
    on CUDA as long as the head dim is last and contiguous, which the softmax mixer guarantees (measured on torch
    2.14 CPU, fp32: block:softmax at 2048x2048, N = 16384, peaks ~70 MB above its baseline; the math path would
    hold 2 x 8 x 16384^2 x 4 B = 17 GB). ONNX exports (opset < 23 has no attention op: MatMul + Softmax) and
    TensorRT engines built from them are assumed to materialise the scores.
    """
    return backend in ("onnxruntime", "tensorrt")


def fit_reason(name: str, height: int, width: int, batch: int, precision: str, available: int | None,
               fraction: float = 0.9) -> str | None:
    """Reason to skip when the attention scores and their softmax (two live N^2 tensors on the math path) would
    exceed `fraction` of the available memory; None when they fit or nothing is known."""
    if available is None:
        return None
    elems = attention_footprint(name, height, width, batch)
    need = 2 * elems * ELEM_BYTES.get(precision, 4)
    if need > fraction * available:
        return (f"would not fit: softmax attention scores + probabilities need ~{need / 2**30:.1f} GiB "
                f"(2 x batch x heads x N^2 = 2 x {elems:.3g} elements, {precision}) > {fraction:.0%} of the "
                f"{available / 2**30:.1f} GiB available")
    return None


class PeakMemory:
    """Peak memory of the timed loop: the CUDA allocator's peaks (after the prepared weights), or on CPU the
    peak RSS above the child's baseline before the build, which includes pages of libraries first touched by
    the case (e.g. oneDNN kernels); CPU weights are the exact tensor bytes of the fp32 build."""

    def __init__(self, case: Any, built: Any):  # bench.cases.Case, bench.measure.child.Built
        self.case, self.built = case, built
        self.weights_cuda = 0
        self.peak_rss: Any = None

    def start(self) -> None:
        if self.case.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            self.weights_cuda = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_rss = PeakRSS().start()

    def stop(self, info: dict) -> dict[str, float]:
        if self.case.device_type == "cuda":
            return self._cuda_columns(info)
        p = self.peak_rss.stop() - self.built.rss0
        info["memory_method"] = f"peak rss ({self.peak_rss.method}) above the child's baseline; weights = tensor bytes"
        return {"peak_mem_mb": max(0, p) / MB, "weights_mem_mb": self.built.weight_bytes / MB,
                "activations_mem_mb": max(0, p - self.built.weight_bytes) / MB}

    def _cuda_columns(self, info: dict) -> dict[str, float]:
        import torch

        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        if self.case.backend in ("onnxruntime", "tensorrt"):
            info["memory_note"] = "torch's allocator does not see memory the backend allocates itself"
        return {"peak_mem_mb": peak / MB, "peak_mem_reserved_mb": torch.cuda.max_memory_reserved() / MB,
                "weights_mem_mb": self.weights_cuda / MB,
                "activations_mem_mb": max(0, peak - self.weights_cuda) / MB}
