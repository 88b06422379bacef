"""What a case's model really returned and did, checked once per process outside the timed loop.

The parent's dense-output check runs on the meta device (shapes only): a model whose real output is a tuple, all
NaN, or of another shape on the real device would otherwise be timed into an `ok` row. So the child checks the
eager fp32 output it computes anyway (the numerics reference) on the case's device: one tensor, (B, C, H/s, W/s)
with an integer stride s, every value finite; otherwise the row is an error with that reason.

A model must leave torch's global state alone: a forward that calls torch.set_num_threads(16) runs a row labelled
"1 thread" on 16, and a default dtype changed to float64 changes every model built after it. The child snapshots
the state before the build and compares after the build, the first forward and the timing.

Eager fp32 is the numerics reference of every other setting, so its own error needs a reference of its own: a
float64 forward of a copy of the model on the CPU (`float64_reference`), in the case's first process only (one
forward of a double-size model), skipped with a note when it would not fit in the memory left.
"""
from __future__ import annotations

import copy
import resource
from dataclasses import dataclass
from typing import Any

from bench.cases import Case
from bench.env import free_memory_bytes

FLOAT64_MEMORY_SHARE = 0.5  # of the memory available now: a float64 forward needs about twice the fp32 peak


class OutputError(RuntimeError):
    """The model's real output, or what its forward did, makes the case unmeasurable; one line."""


def check_dense(y: Any, case: Case) -> None:
    """OutputError unless `y` is one finite (B, C, H/s, W/s) tensor for the case's image size and batch."""
    import torch

    where = f"on {case.device} ({case.height}x{case.width}, batch {case.batch})"
    if not isinstance(y, torch.Tensor):
        raise OutputError(f"the model's output {where} is a {type(y).__name__}, not a tensor; accepted: one "
                          "(B, C, H/s, W/s) tensor")
    shape = tuple(y.shape)
    stride = case.height // shape[-2] if y.dim() == 4 and shape[-2] else 0
    if not stride or shape[0] != case.batch or (shape[-2] * stride, shape[-1] * stride) != (case.height, case.width):
        raise OutputError(f"the model's output {where} has shape {shape}, not dense; accepted: (B, C, H/s, W/s) "
                          "with s an integer stride")
    finite = torch.isfinite(y)
    if not bool(finite.all()):
        bad = int(finite.numel() - finite.sum())
        raise OutputError(f"the model's output {where} has {bad} of {finite.numel()} values NaN or infinite; "
                          "accepted: finite outputs")


@dataclass(frozen=True)
class TorchState:
    """The global settings of torch a model could change from inside its builder or forward."""

    threads: int
    default_dtype: str

    @staticmethod
    def now() -> "TorchState":
        import torch

        return TorchState(torch.get_num_threads(), str(torch.get_default_dtype()))

    def check(self, during: str) -> None:
        """OutputError when the state differs from this snapshot, after putting it back (so that the other
        sides of an interleaved process are not measured in it)."""
        import torch

        now = TorchState.now()
        if now == self:
            return
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(getattr(torch, self.default_dtype.removeprefix("torch.")))
        parts = [f"thread count {self.threads} -> {now.threads}" if now.threads != self.threads else "",
                 f"default dtype {self.default_dtype} -> {now.default_dtype}"
                 if now.default_dtype != self.default_dtype else ""]
        raise OutputError(f"the model changed torch's global state during {during} ({', '.join(p for p in parts if p)});"
                          " accepted: models that leave torch.set_num_threads and the default dtype alone")


def float64_reference(model: Any, x: Any) -> tuple[Any, str]:
    """(float64 CPU output of a copy of `model` on `x`, note); (None, why) when it would not fit: it needs about
    twice the fp32 run's peak (this process's peak RSS, or the CUDA allocator's) plus the float64 weights."""
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if x.is_cuda:
        peak = max(peak, torch.cuda.max_memory_allocated(x.device))
    need = 2 * peak + sum(t.numel() * 8 for t in [*model.parameters(), *model.buffers()])
    avail = free_memory_bytes("cpu")
    if avail is not None and need > FLOAT64_MEMORY_SHARE * avail:
        return None, (f"not measured: a float64 reference forward would need ~{need / 2**20:.0f} MB, more than "
                      f"{FLOAT64_MEMORY_SHARE:.0%} of the {avail / 2**20:.0f} MB available")
    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        y = ref(x.detach().to(device="cpu", dtype=torch.float64))
    return y, "eager fp32 against a float64 forward of the same weights on the CPU"
