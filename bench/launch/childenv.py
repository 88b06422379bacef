"""The environment of a child process: malloc settings that keep freed memory, CUDA device order, our path, and
death with its parent."""
from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

from bench.env import cuda_env

REPO = Path(__file__).resolve().parents[2]


# glibc's malloc returns large blocks to the OS after every free (mmap/munmap, heap trimming), so every inference
# iteration page-faults its activations afresh. On the 2-core development VM that made separate processes of the
# same case differ by up to 2x (block:relu-linear at 1024x1024: 15 vs 30 ms medians, bimodal; with these
# settings 13-17 ms), which no within-run statistic can see. A serving process keeps its memory; so do we.
# Values already in the environment win; the ones used are recorded in meta.json (env.malloc).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}


# OpenMP threads bound to their CPUs (libgomp's OMP_PROC_BIND) in A/B children: on the 2-core development VM the
# per-cycle SD of an A/A log ratio of evit-b1:msla at 1024x2048 fell from 4.2% (2 threads, free to migrate) to
# 0.4% bound, and from 0.8% to 0.4% at 1 thread (docs/METHODOLOGY.md). A value in the environment wins; the main
# job's children are not bound (their absolute times stay those of an unpinned deployment).
AB_BIND_ENV = {"OMP_PROC_BIND": "true"}


def child_env() -> dict:
    env = dict(os.environ)
    for k, v in MALLOC_ENV.items():
        env.setdefault(k, v)
    env.update(cuda_env())
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def set_pdeathsig() -> None:
    """Die (SIGKILL) when the parent dies, so a killed run leaves no orphan measuring in the background."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
