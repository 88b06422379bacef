"""CPU instructions per forward pass, counted by valgrind's callgrind: work counted where time cannot be trusted.

On a shared VM wall time moves with the neighbours; the instructions a forward executes do not. ONE valgrind
process (`--tool=callgrind --collect-atstart=no --instr-atstart=no`) runs this module's child over a list of
cases, so torch's start-up under valgrind is paid once. The child builds, prepares (bench.backends.prepare) and
warms up every case, then switches instrumentation on through `vgdb` (torch's import uninstrumented: ~35 s, not
~150 s; where vgdb fails the parent reruns with `--instr-atstart=yes`: slower, same counts). Each counted forward
is bracketed by `torch._C._valgrind_toggle()` / `_valgrind_toggle_and_dump_stats()`: one dump part
`callgrind.out.<pid>.<part>` (Ir in its `summary:` line; the termination dump is ignored). After every forward the
child records which entry each dump was for; part k maps to record k, so a timeout keeps what was counted and a
forward that raises (it still dumps) shifts nothing. Backends: eager, compile (inductor built for AVX2) and
onnxruntime (1 intra-op thread), all prepared before instrumentation.

Determinism: PYTHONHASHSEED=0, gc off in counted forwards, up to 50 warm-ups (Python specialises its bytecode over
the first tens of calls) and glibc's tcache at 32 chunks a size (MALLOC_TUNABLE: at 7, malloc's bins carry state
from forward to forward, 0.23% on block:msla 128x128; at 4096 they drift for many forwards, 0.55% on evit-b0).
What a count cannot see: cache misses and memory bandwidth (a bandwidth-bound op counts like a cached one),
threads beyond one (counted at torch.set_num_threads(1) whatever the case's `threads`), GPU work (CUDA cases get
a reason), time in the kernel (page faults, syscalls), and wide vectors: valgrind 3.19 hides AVX-512/AMX, so
oneDNN and ATen run their AVX2 kernels. Python dispatch is counted: a small model's count is mostly overhead.

Cost on the 2-core development VM (3 forwards, eager fp32, one case per process, other work on the machine):
block:msla 128x128 50-60 s a valgrind process, evit-b0:msla 256x256 80-100 s; a forward runs ~300x its native
time, instrumented or not (evit-b0: 8 s), so warm-ups stop after WARMUP_BUDGET_S. Spread of the forwards in a
process: 0.05% (block:msla 128x128; 0.2% after four other cases: malloc's state), 0.07% (evit-b0, 79.7M); the
same case in two processes: 0.01-0.04%. An extra 1x1 conv of M MACs adds 0.32 M instructions, linearly; a
matmul's count follows its kernel's blocking, not its MACs alone (1024x512 @ 512xN: N 512 -> 520, +1.6% MACs:
+1.2%; N 517, +1.0% MACs: +4.4%, a tail that is not a multiple of 8).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from bench.cases import Case
from bench.files import atomic_write_json
from bench.launch.workdir import temporary_workdir

if TYPE_CHECKING:
    from bench.results.lifecycle import RunState

DEFAULT_FORWARDS = 3
DEFAULT_TIMEOUT_S = 3600.0
VALGRIND_MISSING = "valgrind not found: apt-get install valgrind"
CPU_ONLY = "instructions count CPU work only"
VGDB_WAIT_S = 120.0
WARMUPS, WARMUP_BUDGET_S = 50, 20.0  # uncounted forwards a case, until the budget (block:msla 128: 10 -> 0.4%)
MALLOC_TUNABLE = "glibc.malloc.tcache_count=32"  # freed chunks kept per small size (glibc: 7); module docstring
Entry = tuple[Case, str | None]  # a case, and the builder that replaces its registry model (or None)


@dataclass(frozen=True)
class InstructionCount:
    """One case's count: the median of its forwards (NaN with a reason where it could not be counted)."""

    instructions: float
    spread_pct: float  # (max - min) / median of the forwards, percent
    forwards: int
    wall_s: float  # wall time of the valgrind process(es) that counted it (shared by its cases), start-up included
    reason: str = ""
    counts: tuple[int, ...] = ()  # instructions of each counted forward, in order

    @classmethod
    def of(cls, counts: list[int], wall_s: float) -> "InstructionCount":
        med = float(statistics.median(counts))
        return cls(med, (max(counts) - min(counts)) / med * 100.0, len(counts), wall_s, "", tuple(counts))

    @classmethod
    def failed(cls, reason: str, wall_s: float = 0.0) -> "InstructionCount":
        return cls(math.nan, math.nan, 0, wall_s, reason)


# ---------------------------------------------------------------------------------------------------------------
# the parent: public API


def count_instructions(cases: list[Case], *, forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S,
                       workdir: Path, env: Mapping[str, str] | None = None) -> dict[str, InstructionCount]:
    """Instructions per forward of each case, keyed by case_id, all in ONE valgrind process (one case after the
    other). `env` is added to the child's environment (e.g. DENSEBENCH_MODELS_FROM)."""
    unique = list({c.case_id: c for c in cases}.values())
    counts = _count([(c, None) for c in unique], forwards, False, timeout_s, Path(workdir), env)
    return {c.case_id: n for c, n in zip(unique, counts)}


def count_pair_instructions(case_a: Case, case_b: Case, *, builder_a: str | None = None, builder_b: str | None = None,
                            forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S,
                            workdir: Path, env: Mapping[str, str] | None = None,
                            ) -> tuple[InstructionCount, InstructionCount]:
    """A and B in the same valgrind process, forwards alternating A, B, A, B, ...; a builder ("module:function" or
    "path.py:function", a zero-argument function returning the nn.Module) replaces that side's registry model (the
    case still gives the input, the backend and the precision)."""
    a, b = _count([(case_a, builder_a), (case_b, builder_b)], forwards, True, timeout_s, Path(workdir), env)
    return a, b


def add_instruction_columns(state: "RunState", cases: list[Case], log: Callable[[str], None] | None = None, *,
                            forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Fill `instructions` / `instructions_spread_pct` of the run's ok rows (one valgrind process for all), note
    every attempted case in meta["instructions"] (case_id -> reason, wall_s, forwards), and save the run.

    Rows already counted (a resumed run) are kept; cases that differ only in `threads` are counted once (counting
    is at one thread); users' models reach the child through the run's models_from."""
    from models.user import MODELS_FROM_ENV

    rows = {r.get("case_id"): r for r in state.rows}
    todo = [c for c in cases if (rows.get(c.case_id) or {}).get("status") == "ok"
            and not _finite(rows[c.case_id].get("instructions"))]
    if not todo:
        return
    work: dict[str, Case] = {}
    for c in todo:
        work.setdefault(_work_key(c), c)  # the first case of each work key counts for all
    sources = (state.meta.get("config") or {}).get("models_from") or []
    if log:
        log(f"instructions: counting {len(work)} case(s) in one valgrind process (torch start-up ~1 min)")
    with temporary_workdir("instructions") as tmp:
        counts = count_instructions(list(work.values()), forwards=forwards, timeout_s=timeout_s, workdir=tmp,
                                    env={MODELS_FROM_ENV: os.pathsep.join(sources)} if sources else None)
    notes = state.meta.setdefault("instructions", {})
    for c in todo:
        n = counts[work[_work_key(c)].case_id]
        notes[c.case_id] = {"reason": n.reason, "wall_s": round(n.wall_s, 1), "forwards": n.forwards}
        if not n.reason:
            rows[c.case_id].update(instructions=n.instructions, instructions_spread_pct=n.spread_pct)
        elif log:
            log(f"instructions: {c.label()}: {n.reason}")
    state.save()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _work_key(case: Case) -> str:
    """The case_id without its thread count: what one-thread counting cannot tell apart."""
    return case.case_id.rsplit("|t", 1)[0]


# ---------------------------------------------------------------------------------------------------------------
# the parent: one valgrind process


def _count(entries: list[Entry], forwards: int, alternate: bool, timeout_s: float, workdir: Path,
           env: Mapping[str, str] | None) -> list[InstructionCount]:
    """The counts of `entries`, in order; CUDA entries and a missing valgrind are decided without a process."""
    if forwards < 1:
        raise ValueError(f"forwards = {forwards}; accepted: an integer >= 1")
    out = [None if c.device_type == "cpu" else InstructionCount.failed(CPU_ONLY) for c, _ in entries]
    todo = [i for i, n in enumerate(out) if n is None]
    if todo:
        counted = ([InstructionCount.failed(VALGRIND_MISSING)] * len(todo) if shutil.which("valgrind") is None
                   else _in_valgrind([entries[i] for i in todo], forwards, alternate, timeout_s, workdir, env))
        for i, n in zip(todo, counted):
            out[i] = n
    return [n for n in out if n is not None]


def _in_valgrind(entries: list[Entry], forwards: int, alternate: bool, timeout_s: float, workdir: Path,
                 env: Mapping[str, str] | None) -> list[InstructionCount]:
    """One valgrind process over the entries: instrumentation switched on by vgdb, else a rerun with it on."""
    from bench.launch.childenv import child_env  # the one environment every child of the suite starts from

    full_env = {**child_env(), **(env or {})}
    full_env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                    GLIBC_TUNABLES=":".join(filter(None, [MALLOC_TUNABLE, full_env.get("GLIBC_TUNABLES")])))
    if platform.machine() == "x86_64":  # valgrind runs AVX2, not AVX-512: inductor must not build for the host
        full_env.update(ATEN_CPU_CAPABILITY="avx2", TORCHINDUCTOR_CPP_MARCH="x86-64-v3")
    workdir.mkdir(parents=True, exist_ok=True)
    wall, result = 0.0, {}
    for fast in ((True, False) if shutil.which("vgdb") else (False,)):
        run_dir = Path(tempfile.mkdtemp(prefix="valgrind-", dir=workdir))
        spec = {"entries": [{"case": c.to_spec(), "builder": b} for c, b in entries], "forwards": forwards,
                "alternate": alternate, "fast": fast, "vgdb_prefix": str(run_dir / "vgdb"), "workdir": str(run_dir)}
        atomic_write_json(run_dir / "spec.json", spec)
        pid, failure, w = _run_valgrind(run_dir, fast, full_env, timeout_s)
        wall += w
        out = run_dir / "result.json"
        result = json.loads(out.read_text()) if out.exists() else {}  # written atomically: complete or absent
        if not result.get("instr_error"):
            return _collect(len(entries), forwards, result, read_parts(run_dir, pid), failure, wall)
    return [InstructionCount.failed(f"callgrind instrumentation: {result['instr_error']}", wall)] * len(entries)


def _run_valgrind(run_dir: Path, fast: bool, env: Mapping[str, str], timeout_s: float) -> tuple[int, str, float]:
    """(pid, why the process failed or "", wall seconds); its process group is killed at the timeout."""
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--instr-atstart={'no' if fast else 'yes'}",
           "--vgdb=yes", f"--vgdb-prefix={run_dir / 'vgdb'}", f"--callgrind-out-file={run_dir}/callgrind.out.%p",
           f"--log-file={run_dir}/valgrind.log", sys.executable, "-m", "bench.measure.instructions",
           "--spec", str(run_dir / "spec.json"), "--out", str(run_dir / "result.json")]
    t0 = time.perf_counter()
    with open(run_dir / "child.log", "wb") as log:
        p = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, failure = p.wait(timeout=timeout_s), ""
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc, failure = p.wait(), f"valgrind timed out after {timeout_s:.0f} s"
    if rc and not failure:
        tail = (run_dir / "child.log").read_text(errors="replace").strip().splitlines() or ["no output"]
        failure = f"valgrind exited with code {rc}: {tail[-1].strip()[:400]}"
    return p.pid, failure, time.perf_counter() - t0


def _collect(n_entries: int, forwards: int, result: dict, parts: list[int], failure: str,
             wall_s: float) -> list[InstructionCount]:
    """Part k belongs to the k-th entry of the child's dump list; an entry needs all its forwards."""
    dumps = result.get("dumps") or []
    if len(parts) < len(dumps):
        failure, dumps = failure or f"callgrind wrote {len(parts)} dumps for {len(dumps)} forwards", []
    per: dict[int, list[int]] = {i: [] for i in range(n_entries)}
    for i, ir in zip(dumps, parts):
        per[i].append(ir)
    reasons, out = result.get("reasons") or {}, []
    for i in range(n_entries):
        reason = reasons.get(str(i)) or ("" if len(per[i]) == forwards else
                                         failure or f"{len(per[i])} of {forwards} forwards counted")
        if not reason and min(per[i]) <= 0:
            reason = "callgrind counted no instructions (instrumentation was off)"
        out.append(InstructionCount.failed(reason, wall_s) if reason else InstructionCount.of(per[i], wall_s))
    return out


def read_parts(run_dir: Path, pid: int) -> list[int]:
    """Ir of each dump made by a client request (one per counted forward), in part order."""
    heads = sorted(_part_header(path) for path in run_dir.glob(f"callgrind.out.{pid}.*"))
    return [ir for _, trigger, ir in heads if trigger.startswith("Client Request")]


def _part_header(path: Path) -> tuple[int, str, int]:
    """(part number, dump trigger, Ir) from a callgrind output file (`summary:` in the header, else `totals:`)."""
    part, trigger, events, ir = 0, "", ["Ir"], 0
    with open(path, errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "part":
                part = int(value)
            elif line.startswith("desc: Trigger:"):
                trigger = line.split(":", 2)[2].strip()
            elif key == "events":
                events = value.split()
            elif key in ("summary", "totals"):
                values, k = value.split(), events.index("Ir") if "Ir" in events else 0
                ir = int(values[k]) if k < len(values) else 0  # the format may leave out trailing zeros
                break
    return part, trigger, ir


# ---------------------------------------------------------------------------------------------------------------
# the child, under valgrind: python -m bench.measure.instructions --spec FILE --out FILE


@dataclass
class _Child:
    """What the child reports; written to --out after every forward, so a timeout keeps what was counted."""

    out: Path
    reasons: dict[str, str] = field(default_factory=dict)  # entry index -> why it was not counted
    dumps: list[int] = field(default_factory=list)  # entry index of each dump, in order
    instr_error: str = ""

    def save(self) -> None:
        atomic_write_json(self.out, {"reasons": self.reasons, "dumps": self.dumps, "instr_error": self.instr_error})


def _child_main(spec: dict, child: _Child) -> None:
    import torch

    from models.registry import error_line
    from models.user import load_from_env

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
    if fns and not child.instr_error:
        ids, f = list(fns), int(spec["forwards"])
        _run_schedule([i for _ in range(f) for i in ids] if spec["alternate"] else [i for i in ids for _ in range(f)],
                      fns, child)
    child.save()


def _prepare_all(spec: dict, child: _Child) -> dict[int, Callable[[], Any]]:
    """Every entry built, prepared and warmed up, before instrumentation where it starts off."""
    from models.registry import error_line

    fns: dict[int, Callable[[], Any]] = {}
    for i, entry in enumerate(spec["entries"]):
        step = "build"
        try:
            fn = _prepare_entry(entry, spec["workdir"])
            step, t0 = "warm-up", time.perf_counter()
            for _ in range(WARMUPS):
                fn()
                if time.perf_counter() - t0 > WARMUP_BUDGET_S:
                    break
            fns[i] = fn
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
    import importlib

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"builder {spec!r}; accepted: 'module:function' or 'path.py:function'")
    module = _load_file(str(Path(where).resolve())) if where.endswith(".py") else importlib.import_module(where)
    return getattr(module, name)


@functools.lru_cache(maxsize=None)
def _load_file(path: str) -> Any:
    """A builder file, imported once per process (A and B may name the same file, which may register models)."""
    import importlib.util

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Count instructions per forward (run under valgrind's callgrind).")
    ap.add_argument("--spec", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    _child_main(json.loads(args.spec.read_text()), _Child(args.out))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the interpreter's teardown, which would run instrumented
