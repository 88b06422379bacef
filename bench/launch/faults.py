"""Test-only fault injection: the parent copies env DENSEBENCH_FAULT into the case (settings.fault) and the child
fails that way at the stage `fault:<kind>`, so every failure path of the engine is exercised for real:

  crash  -> os.abort() in the child (SIGABRT: status error)
  hang   -> sleep forever (status timeout)
  oom    -> on CPU: cap the child's address space (RLIMIT_AS) then allocate past it, which raises torch's real
            allocator error; on CUDA: allocate more than the device has (torch.OutOfMemoryError); status oom
  error  -> raise RuntimeError (status error)
  sigkill-> the child SIGKILLs itself (status error: a SIGKILL without the kernel's OOM evidence, see outcome.py)
  kind@PATTERN applies it only to cases whose model matches the fnmatch PATTERN (e.g. crash@block:*).
bench.launch.worker hands `inject_after_build` to the child's case sequence as its after_build hook, so the
measuring code knows nothing of faults. Do not set it outside tests.
"""
from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time
from typing import Callable

from bench.cases import Case
from bench.measure.memory import limit_address_space

FAULT_ENV = "DENSEBENCH_FAULT"
FAULTS = ("crash", "hang", "oom", "error", "sigkill")


def fault_for(case: Case) -> str | None:
    """The fault kind this case asks for (settings.fault, filtered by its @PATTERN), or None."""
    f = case.settings.fault
    if not f:
        return None
    kind, _, pat = str(f).partition("@")
    if pat and not fnmatch.fnmatchcase(case.model, pat):
        return None
    return kind


def inject_after_build(case: Case, stage: Callable[[str], None]) -> None:
    """The child's `after_build` hook (bench.measure.child.run_case): the case's fault, at stage fault:<kind>."""
    kind = fault_for(case)
    if kind:
        stage(f"fault:{kind}")
        inject(kind, case.device)


def inject(kind: str, device: str) -> None:
    import torch

    if kind == "crash":
        sys.stderr.flush()
        os.abort()
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "error":
        raise RuntimeError("injected error (DENSEBENCH_FAULT=error)")
    if kind == "oom":
        if device.startswith("cuda"):
            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            torch.empty(int(total * 2), dtype=torch.uint8, device=device)
        else:
            limit_address_space(256 * 2**20)
            torch.empty(2**36, dtype=torch.uint8)  # 64 GiB past a 256 MiB allowance: the allocator's real error
        raise RuntimeError("injected oom did not fail (unexpected)")
    raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; valid: {', '.join(FAULTS)}")

