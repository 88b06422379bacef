"""CPU instructions per forward pass, counted under valgrind's callgrind: the child half, run as
`python -m bench.measure.instructions --spec FILE --out FILE` inside ONE valgrind process that bench.launch.callgrind
(the parent half) starts over a list of cases, so torch's start-up under valgrind is paid once. Work is counted
where time cannot be trusted: on a shared VM wall time moves with the neighbours; the instructions a forward
executes do not.

The child builds, prepares (bench.backends.prepare) and warms up every case, then switches instrumentation on
through `vgdb` (torch's import uninstrumented: ~35 s, not ~150 s). Each counted forward is bracketed by
`torch._C._valgrind_toggle()` / `_valgrind_toggle_and_dump_stats()`: one dump part per forward; after every
forward the child records which entry each dump was for (the parent maps part k to record k). Backends: eager,
compile (inductor built for AVX2) and onnxruntime (1 intra-op thread), all prepared before instrumentation.

Determinism: PYTHONHASHSEED=0, gc off in counted forwards, up to 50 warm-ups (Python specialises its bytecode over
the first tens of calls) and glibc's tcache at 32 chunks a size (bench.launch.callgrind.MALLOC_TUNABLE: at 7,
malloc's bins carry state from forward to forward, 0.23% on block:msla 128x128; at 4096 they drift for many
forwards, 0.55% on evit-b0).
What a count cannot see: cache misses and memory bandwidth (a bandwidth-bound op counts like a cached one),
threads beyond one (counted at torch.set_num_threads(1) whatever the case's `threads`), GPU work (CUDA cases get
a reason), time in the kernel (page faults, syscalls), and wide vectors: valgrind 3.19 hides AVX-512/AMX, so
oneDNN and ATen run their AVX2 kernels. Python dispatch is counted: a small model's count is mostly overhead.

Cost on the 2-core development VM (3 forwards, eager fp32, one case per process, other work on the machine):
block:msla 128x128 50-60 s a valgrind process, evit-b0:msla 256x256 80-100 s; a forward runs ~300x its native
time, instrumented or not (evit-b0: 8 s; 45 s at 512x512 on a slow day), so warm-ups stop after WARMUP_BUDGET_S
(a whole model needs one: its blocks' code runs many times a forward). Spread of the forwards in a
process: 0.05% (block:msla 128x128; 0.2% after four other cases: malloc's state), 0.07% (evit-b0, 79.7M); the
same case in two processes: 0.01-0.04%. An extra 1x1 conv of M MACs adds 0.32 M instructions, linearly; a
matmul's count follows its kernel's blocking, not its MACs alone (1024x512 @ 512xN: N 512 -> 520, +1.6% MACs:
+1.2%; N 517, +1.0% MACs: +4.4%, a tail that is not a multiple of 8).
"""
from __future__ import annotations

import functools
import gc
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.cases import Case
from bench.child_args import flag_values
from bench.files import atomic_write_json

VGDB_WAIT_S = 120.0
WARMUPS, WARMUP_BUDGET_S = 50, 20.0  # uncounted forwards a case, until the budget (block:msla 128: 10 -> 0.4%)
USAGE = "usage: python -m bench.measure.instructions --spec FILE --out FILE"


# ---------------------------------------------------------------------------------------------------------------
# under valgrind: python -m bench.measure.instructions --spec FILE --out FILE


@dataclass
class _Child:
    """What the child reports; written to --out after every forward, so a timeout keeps what was counted."""

    out: Path
    reasons: dict[str, str] = field(default_factory=dict)  # entry index -> why it was not counted
    dumps: list[int] = field(default_factory=list)  # entry index of each dump, in order
    instr_error: str = ""
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds since the child started, when it ended
    t0: float = field(default_factory=time.monotonic)

    def stage(self, name: str) -> None:
        self.stages[name] = round(time.monotonic() - self.t0, 2)

    def save(self) -> None:
        atomic_write_json(self.out, {"reasons": self.reasons, "dumps": self.dumps, "instr_error": self.instr_error,
                                     "stages": self.stages})


def _child_main(spec: dict, child: _Child) -> None:
    import torch

    from models.registry import error_line
    from models.user import load_from_env

    child.stage("import torch")
    torch.set_num_threads(1)
    try:
        if not torch._C._valgrind_supported_platform():
            raise RuntimeError("this torch build has no valgrind bindings")
        load_from_env()
    except Exception as e:  # noqa: BLE001 - every entry gets the reason
        child.reasons.update({str(i): error_line(e) for i in range(len(spec["entries"]))})
    fns = {} if child.reasons else _prepare_all(spec, child)
    if fns and spec["fast"]:
        child.instr_error = _instrumentation_on(spec["vgdb_prefix"])
        child.stage("instrumentation on")
    if fns and not child.instr_error:
        ids, f = list(fns), int(spec["forwards"])
        _run_schedule([i for _ in range(f) for i in ids] if spec["alternate"] else [i for i in ids for _ in range(f)],
                      fns, child)
        child.stage("counted forwards")
    child.save()


def _prepare_all(spec: dict, child: _Child) -> dict[int, Callable[[], Any]]:
    """Every entry built, prepared and warmed up, before instrumentation where it starts off."""
    from models.registry import error_line

    fns: dict[int, Callable[[], Any]] = {}
    for i, entry in enumerate(spec["entries"]):
        step = "build"
        try:
            fn = _prepare_entry(entry, spec["workdir"])
            child.stage(f"build {i}")
            step, t0 = "warm-up", time.perf_counter()
            for _ in range(WARMUPS):
                fn()
                if time.perf_counter() - t0 > WARMUP_BUDGET_S:
                    break
            fns[i] = fn
            child.stage(f"warm-up {i}")
        except Exception as e:  # noqa: BLE001 - a failing case becomes a reason
            child.reasons[str(i)] = f"in {step}: {error_line(e)}"
    return fns


def _run_schedule(schedule: list[int], fns: dict[int, Callable[[], Any]], child: _Child) -> None:
    """One counted forward (one dump part) per slot of the schedule, in order."""
    import torch

    from models.registry import error_line

    gc.disable()  # a collection inside a counted forward would be counted
    for i in schedule:
        if str(i) in child.reasons:
            continue
        gc.collect()
        torch._C._valgrind_toggle()
        try:
            fns[i]()
        except Exception as e:  # noqa: BLE001 - a failing case becomes a reason
            child.reasons[str(i)] = f"in forward: {error_line(e)}"
        finally:
            torch._C._valgrind_toggle_and_dump_stats()
            child.dumps.append(i)  # even after a failure: the part numbers stay aligned
        child.save()


def _prepare_entry(entry: Mapping[str, Any], workdir: str) -> Callable[[], Any]:
    """The prepared forward of one entry: fp32 build, the case's example input, bench.backends.prepare."""
    import torch

    from bench import backends
    from models.registry import build_model, example_input

    case = Case.from_spec(entry["case"])
    torch.manual_seed(case.seed)
    model = _load_builder(entry["builder"])() if entry.get("builder") else build_model(case.model)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"builder {entry['builder']!r} returned {type(model).__name__}, not an nn.Module")
    x = example_input(case.model, case.height, case.width, case.batch, seed=case.seed)
    return backends.prepare(model.eval(), x, backend=case.backend, device=case.device, precision=case.precision,
                            channels_last=case.channels_last, fold=case.folded, workdir=workdir).fn


def _load_builder(spec: str) -> Callable[[], Any]:
    """'package.module:function' or 'path/to/file.py:function' -> the function."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"builder {spec!r}; accepted: 'module:function' or 'path.py:function'")
    module = _load_file(str(Path(where).resolve())) if where.endswith(".py") else importlib.import_module(where)
    return getattr(module, name)


@functools.lru_cache(maxsize=None)
def _load_file(path: str) -> Any:
    """A builder file, imported once per process (A and B may name the same file, which may register models)."""
    module_spec = importlib.util.spec_from_file_location(f"densebench_builder_{Path(path).stem}", path)
    if not Path(path).is_file() or module_spec is None or module_spec.loader is None:
        raise FileNotFoundError(f"builder file {path}: no such file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _instrumentation_on(vgdb_prefix: str) -> str:
    """Switch callgrind's instrumentation on for this process through vgdb; "" or why not. The wait is busy:
    valgrind serves vgdb between basic blocks of running code."""
    cmd = ["vgdb", f"--vgdb-prefix={vgdb_prefix}", f"--pid={os.getpid()}", "instrumentation", "on"]
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        return f"vgdb: {e.strerror}"
    deadline = time.monotonic() + VGDB_WAIT_S
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            return f"vgdb did not answer in {VGDB_WAIT_S:.0f} s"
    text = p.stdout.read().decode(errors="replace").strip() if p.stdout else ""
    return "" if p.returncode == 0 else f"vgdb exited with code {p.returncode}: {text[-300:]}"


def parse_args(argv: list[str]) -> tuple[Path, Path] | str:
    """(spec, out) from `--spec FILE --out FILE` (either order, `--flag=FILE` too), or what is wrong with argv.
    The parent (bench.launch.callgrind) always writes this one form."""
    got = flag_values(argv, ("--spec", "--out"))
    if isinstance(got, str):
        return got
    missing = [f for f in ("--spec", "--out") if f not in got]
    if missing:
        return f"the following arguments are required: {', '.join(missing)}"
    return Path(got["--spec"]), Path(got["--out"])


def main(argv: list[str] | None = None) -> int:
    """Count the spec's entries into --out; exit status 2 with a usage line for arguments of another form."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(args, str):
        print(f"{USAGE}\nbench.measure.instructions: error: {args}", file=sys.stderr)
        return 2
    spec, out = args
    _child_main(json.loads(spec.read_text()), _Child(out))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown, which would run instrumented
