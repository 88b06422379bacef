"""CPU instructions per forward pass, counted by valgrind's callgrind: work counted where time cannot be trusted.

On a shared VM wall time moves with the neighbours; the number of instructions a forward pass executes does not.
One valgrind process (`valgrind --tool=callgrind --collect-atstart=no --instr-atstart=no`) runs this module as a
fresh interpreter over a LIST of cases, so torch's start-up under valgrind is paid once. The child builds and
prepares every case (models.registry or a builder hook, bench.backends.prepare) before switching callgrind's
instrumentation on through `vgdb` (its own pid), because uninstrumented code runs about 4x faster: torch's import
takes ~30 s instead of ~150 s. Then, per case, one warm-up forward and N counted forwards, each bracketed by
`torch._C._valgrind_toggle()` / `_valgrind_toggle_and_dump_stats()`: one dump part file
(`callgrind.out.<pid>.<part>`, event Ir in its `summary:` line) per forward, in order. The child writes the list
of dumps it made (which entry, in order) after every forward, and the parent maps part k to the k-th entry of
that list, so a timeout keeps the cases already counted. Where vgdb is missing or cannot reach the process the
parent reruns with `--instr-atstart=yes` (slow, same counts). Python's gc is off during the counted forwards and
PYTHONHASHSEED=0, so dict layouts do not differ between processes. Backends: eager, torch.compile (inductor
compiles before instrumentation; its C++ compiler runs outside valgrind) and onnxruntime (1 intra-op thread).

What a count cannot see: cache misses and memory bandwidth (a bandwidth-bound op counts like a cached one),
threads beyond one (counted at torch.set_num_threads(1) whatever the case's `threads`; other threads would add
their spinning), GPU work (CUDA cases get a reason), time in the kernel (page faults, syscalls), and the
machine's wide vectors: valgrind 3.19 hides AVX-512/AMX, so oneDNN and ATen run their AVX2 kernels (the count is
of the AVX2 code path). Python overhead is counted, so a small model's count is mostly dispatch.

Cost and determinism on the 2-core development VM (3 forwards, eager fp32, one case per process):
block:msla 128x128: ~45 s per valgrind process; evit-b0:msla 256x256: ~75 s. Forwards within a process agree
within ~0.3%; the same case in two processes within ~0.1%. One extra 1x1 conv adds instructions in proportion to
its MACs (see tests/test_instructions.py). Figures: docs of issue 11 and the module's final report.
"""
from __future__ import annotations

import argparse
import functools
import gc
import math
import os
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

if TYPE_CHECKING:
    from bench.results.lifecycle import RunState

DEFAULT_FORWARDS = 3
DEFAULT_TIMEOUT_S = 3600.0
VALGRIND_MISSING = "valgrind not found: apt-get install valgrind"
CPU_ONLY = "instructions count CPU work only"
VGDB_WAIT_S = 120.0
# glibc's per-thread cache keeps up to 4096 (not 7) freed chunks of each small size, reused last-in first-out, so
# the state of malloc's bins does not carry from one forward to the next (block:msla 128x128: 0.3% -> 0.06%)
MALLOC_TUNABLE = "glibc.malloc.tcache_count=4096"
WARMUPS = 50  # uncounted forwards per case before the counted ones


@dataclass(frozen=True)
class InstructionCount:
    """One case's count: the median of its forwards (NaN with a reason where it could not be counted)."""

    instructions: float
    spread_pct: float  # (max - min) / median of the forwards, percent
    forwards: int
    wall_s: float  # wall time of the valgrind process(es) that counted it, torch start-up included
    reason: str = ""
    counts: tuple[int, ...] = ()  # instructions of each counted forward, in order

    @classmethod
    def of(cls, counts: list[int], wall_s: float) -> "InstructionCount":
        med = float(statistics.median(counts))
        return cls(med, (max(counts) - min(counts)) / med * 100.0, len(counts), wall_s, "", tuple(counts))

    @classmethod
    def failed(cls, reason: str, wall_s: float = 0.0) -> "InstructionCount":
        return cls(math.nan, math.nan, 0, wall_s, reason)


@dataclass(frozen=True)
class Entry:
    """One model to count in the child: a case, and optionally a builder ("module:function" or
    "path.py:function", a zero-argument function returning the nn.Module) instead of the case's registry model."""

    case: Case
    builder: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# the parent: public API


def count_instructions(cases: list[Case], *, forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S,
                       workdir: Path, env: Mapping[str, str] | None = None) -> dict[str, InstructionCount]:
    """Instructions per forward of each case, keyed by case_id, all in ONE valgrind process (cases one after the
    other). `env` is added to the child's environment (e.g. DENSEBENCH_MODELS_FROM)."""
    unique = list({c.case_id: c for c in cases}.values())
    counts = _count([Entry(c) for c in unique], forwards=forwards, alternate=False, timeout_s=timeout_s,
                    workdir=workdir, env=env)
    return {c.case_id: n for c, n in zip(unique, counts)}


def count_pair_instructions(case_a: Case, case_b: Case, *, builder_a: str | None = None, builder_b: str | None = None,
                            forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S,
                            workdir: Path, env: Mapping[str, str] | None = None,
                            ) -> tuple[InstructionCount, InstructionCount]:
    """A and B in the same valgrind process, forwards alternating A, B, A, B, ... (an A/B pair measured under the
    same conditions); a builder replaces that side's registry model (the case still gives input and backend)."""
    a, b = _count([Entry(case_a, builder_a), Entry(case_b, builder_b)], forwards=forwards, alternate=True,
                  timeout_s=timeout_s, workdir=workdir, env=env)
    return a, b


def add_instruction_columns(state: "RunState", cases: list[Case], log: Callable[[str], None] | None = None, *,
                            forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Fill `instructions` / `instructions_spread_pct` of the run's ok rows (one valgrind process for all), note
    every attempted case in meta["instructions"] (case_id -> reason, wall_s, forwards), and save the run.

    Rows already counted (a resumed run) are kept. Cases that differ only in `threads` are counted once, since
    counting is at one thread."""
    from models.user import MODELS_FROM_ENV

    rows = {r.get("case_id"): r for r in state.rows}
    todo = [c for c in cases if (rows.get(c.case_id) or {}).get("status") == "ok"
            and not _finite(rows[c.case_id].get("instructions"))]
    if not todo:
        return
    work = {_work_key(c): c for c in reversed(todo)}  # the first case of each work key counts for all
    sources = state.meta.get("config", {}).get("models_from") or []
    if log:
        log(f"instructions: counting {len(work)} case(s) in one valgrind process (torch start-up ~1 min)")
    with tempfile.TemporaryDirectory(prefix="densebench-instructions-") as tmp:
        counts = count_instructions(list(work.values()), forwards=forwards, timeout_s=timeout_s, workdir=Path(tmp),
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


def _count(entries: list[Entry], *, forwards: int, alternate: bool, timeout_s: float, workdir: Path,
           env: Mapping[str, str] | None) -> list[InstructionCount]:
    """The counts of `entries` in order; CUDA entries and a missing valgrind are decided without a process."""
    if forwards < 1:
        raise ValueError(f"forwards = {forwards}; accepted: an integer >= 1")
    out: list[InstructionCount | None] = [None if e.case.device_type == "cpu" else InstructionCount.failed(CPU_ONLY)
                                          for e in entries]
    todo = [i for i, n in enumerate(out) if n is None]
    if todo:
        valgrind = shutil.which("valgrind")
        counted = ([InstructionCount.failed(VALGRIND_MISSING)] * len(todo) if valgrind is None else
                   _in_valgrind([entries[i] for i in todo], forwards, alternate, timeout_s, Path(workdir), env))
        for i, n in zip(todo, counted):
            out[i] = n
    return [n for n in out if n is not None]


def _in_valgrind(entries: list[Entry], forwards: int, alternate: bool, timeout_s: float, workdir: Path,
                 env: Mapping[str, str] | None) -> list[InstructionCount]:
    """One valgrind process over the entries (fast start through vgdb; a slow rerun where vgdb fails)."""
    from bench.launch.childenv import child_env  # the one environment every child of the suite gets

    full_env = {**child_env(), **(env or {})}
    full_env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                    GLIBC_TUNABLES=":".join(filter(None, [MALLOC_TUNABLE, full_env.get("GLIBC_TUNABLES")])))
    workdir.mkdir(parents=True, exist_ok=True)
    wall = 0.0
    for fast in ((True, False) if shutil.which("vgdb") else (False,)):
        run_dir = Path(tempfile.mkdtemp(prefix="valgrind-", dir=workdir))
        spec = {"entries": [{"case": e.case.to_spec(), "builder": e.builder} for e in entries], "forwards": forwards,
                "alternate": alternate, "fast": fast, "vgdb_prefix": str(run_dir / "vgdb"), "workdir": str(run_dir)}
        atomic_write_json(run_dir / "spec.json", spec)
        pid, failure, w = _run_valgrind(run_dir, fast, full_env, timeout_s)
        wall += w
        result = _read_json(run_dir / "result.json")
        if not result.get("instr_error"):
            return _collect(len(entries), forwards, result, read_parts(run_dir, pid), failure, wall)
    return [InstructionCount.failed(f"callgrind instrumentation: {result['instr_error']}", wall)] * len(entries)


def _run_valgrind(run_dir: Path, fast: bool, env: Mapping[str, str], timeout_s: float) -> tuple[int, str, float]:
    """(pid, why the process failed or "", wall seconds); the process group is killed at the timeout."""
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--instr-atstart={'no' if fast else 'yes'}",
           "--vgdb=yes", f"--vgdb-prefix={run_dir / 'vgdb'}", f"--callgrind-out-file={run_dir}/callgrind.out.%p",
           f"--log-file={run_dir}/valgrind.log", sys.executable, "-m", "bench.measure.instructions",
           "--spec", str(run_dir / "spec.json"), "--out", str(run_dir / "result.json")]
    t0 = time.perf_counter()
    with open(run_dir / "child.log", "wb") as log:
        p = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return p.pid, f"valgrind timed out after {timeout_s:.0f} s", time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if rc != 0:
        return p.pid, f"valgrind exited with code {rc}: {_last_line(run_dir / 'child.log')}", wall
    return p.pid, "", wall


def _collect(n_entries: int, forwards: int, result: dict, parts: list[int], failure: str,
             wall_s: float) -> list[InstructionCount]:
    """Part k of the dumps belongs to the k-th entry of the child's dump list."""
    dumps = result.get("dumps") or []
    if len(parts) < len(dumps):
        failure, dumps = failure or f"callgrind wrote {len(parts)} dumps for {len(dumps)} forwards", []
    per: dict[int, list[int]] = {i: [] for i in range(n_entries)}
    for i, ir in zip(dumps, parts):
        per[i].append(ir)
    reasons = result.get("reasons") or {}
    out = []
    for i in range(n_entries):
        reason = reasons.get(str(i)) or ("" if len(per[i]) == forwards else
                                         failure or f"{len(per[i])} of {forwards} forwards counted")
        if not reason and min(per[i]) <= 0:
            reason = "callgrind counted no instructions (instrumentation was off)"
        out.append(InstructionCount.failed(reason, wall_s) if reason else InstructionCount.of(per[i], wall_s))
    return out


def read_parts(run_dir: Path, pid: int) -> list[int]:
    """Ir of each dump a client request made (one per counted forward), in part order; the dump at program
    termination is left out."""
    parts = []
    for path in run_dir.glob(f"callgrind.out.{pid}.*"):
        part, trigger, ir = _part_header(path)
        if trigger.startswith("Client Request"):
            parts.append((part, ir))
    return [ir for _, ir in sorted(parts)]


def _part_header(path: Path) -> tuple[int, str, int]:
    """(part number, dump trigger, Ir) from a callgrind output file's header (`summary:`, else `totals:`)."""
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
                values = value.split()
                k = events.index("Ir") if "Ir" in events else 0
                ir = int(values[k]) if k < len(values) else 0  # the format may leave out trailing zeros
                break
    return part, trigger, ir


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return (lines[-1].strip() if lines else "no output")[:400]


# ---------------------------------------------------------------------------------------------------------------
# the child, under valgrind: python -m bench.measure.instructions --spec FILE --out FILE


@dataclass
class _Child:
    """The child's state; written to --out after every forward, so a timeout keeps what was counted."""

    out: Path
    reasons: dict[str, str] = field(default_factory=dict)
    dumps: list[int] = field(default_factory=list)
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
        child.save()
        return
    fns = _prepare_all(spec, child)
    if fns and spec["fast"]:
        child.instr_error = _instrumentation_on(spec["vgdb_prefix"])
        if child.instr_error:
            child.save()
            return
    ids, f = list(fns), int(spec["forwards"])
    _run_schedule([i for _ in range(f) for i in ids] if spec["alternate"] else [i for i in ids for _ in range(f)],
                  fns, child)


def _prepare_all(spec: dict, child: _Child) -> dict[int, Callable[[], Any]]:
    """Every entry built, prepared and warmed up (before instrumentation where it starts off: ~4x faster).
    Several warm-ups, since Python specialises its bytecode and malloc settles only after a few calls."""
    from models.registry import error_line

    fns: dict[int, Callable[[], Any]] = {}
    for i, entry in enumerate(spec["entries"]):
        step = "build"
        try:
            fn = _prepare_entry(entry, spec["workdir"])
            step = "warm-up"
            for _ in range(WARMUPS):
                fn()
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
    child.save()


def _prepare_entry(entry: Mapping[str, Any], workdir: str) -> Callable[[], Any]:
    """The prepared forward of one entry (fp32 build, the case's example input, bench.backends.prepare)."""
    import torch

    from bench import backends
    from models.registry import build_model, example_input

    case = Case.from_spec(entry["case"])
    torch.manual_seed(case.seed)
    model = _load_builder(entry["builder"])() if entry.get("builder") else build_model(case.model)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"builder {entry['builder']!r} returned {type(model).__name__}, not an nn.Module")
    model.eval()
    x = example_input(case.model, case.height, case.width, case.batch, seed=case.seed)
    return backends.prepare(model, x, backend=case.backend, device=case.device, precision=case.precision,
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

    if not Path(path).is_file():
        raise FileNotFoundError(f"builder file {path}: no such file")
    module_spec = importlib.util.spec_from_file_location(f"densebench_builder_{Path(path).stem}", path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _instrumentation_on(vgdb_prefix: str) -> str:
    """Switch callgrind's instrumentation on for this process through vgdb; "" or why not. The wait is busy:
    valgrind serves vgdb's request between basic blocks of running code."""
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
    import json

    ap = argparse.ArgumentParser(description="Count instructions per forward (run under valgrind callgrind).")
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
