"""The parent half of `--metric instructions`: start ONE valgrind (callgrind) process over a list of cases (or one
a side of an A/B pair, both at once) and read its counts back; the child it runs is bench.measure.instructions,
whose docstring says what a count sees.

Kept beside the launcher because it is the launcher's kind of work: it writes the child's spec, starts the process
(in the suite's child environment, bench.launch.childenv), kills its process group at the timeout and reads what
it left. valgrind runs with `--collect-atstart=no --instr-atstart=no` and the child switches instrumentation on
through vgdb after its warm-ups; where vgdb fails (or is missing) the process is run again with
`--instr-atstart=yes` (slower, same counts). The child's result says which entry each dump was for: dump part k
(`callgrind.out.<pid>.<part>`, Ir in its `summary:` line; the termination dump ignored) is the k-th entry of that
list, so a timeout keeps what was counted and a forward that raises shifts nothing. Environment: PYTHONHASHSEED=0,
one thread, glibc's tcache at MALLOC_TUNABLE (bench.measure.instructions explains the value), and on x86_64 AVX2
kernels (valgrind hides AVX-512).
"""
from __future__ import annotations

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.ab.spec import Side
from bench.cases import Case
from bench.files import atomic_write_json
from bench.env.machine import usable_cpus
from bench.launch.childenv import child_env
from bench.launch.workdir import temporary_workdir
from bench.results.lifecycle import RunState

CHILD_MODULE = "bench.measure.instructions"  # run as python -m CHILD_MODULE --spec FILE --out FILE
DEFAULT_FORWARDS = 3
DEFAULT_TIMEOUT_S = 3600.0
VALGRIND_MISSING = "valgrind not found: apt-get install valgrind"
CPU_ONLY = "instructions count CPU work only"
MALLOC_TUNABLE = "glibc.malloc.tcache_count=32"  # freed chunks kept per small size (glibc: 7); see the child
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


def count_instructions(cases: list[Case], *, forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S,
                       workdir: Path, env: Mapping[str, str] | None = None) -> dict[str, InstructionCount]:
    """Instructions per forward of each case, keyed by case_id, all in ONE valgrind process (one case after the
    other). `env` is added to the child's environment (e.g. DENSEBENCH_MODELS_FROM)."""
    unique = list({c.case_id: c for c in cases}.values())
    counts = _count([(c, None) for c in unique], forwards, False, timeout_s, Path(workdir), env)
    return {c.case_id: n for c, n in zip(unique, counts)}


def count_pair_instructions(case_a: Case, case_b: Case, *, builder_a: str | None = None, builder_b: str | None = None,
                            forwards: int = DEFAULT_FORWARDS, timeout_s: float = DEFAULT_TIMEOUT_S,
                            workdir: Path, env: Mapping[str, str] | None = None, parallel: bool | None = None,
                            ) -> tuple[InstructionCount, InstructionCount]:
    """A's and B's counts; a builder ("module:function" or "path.py:function", a zero-argument function returning
    the nn.Module) replaces that side's registry model (the case still gives the input, the backend and the
    precision).

    `parallel` (default: where this process may run on 2 CPUs or more): each side in its own valgrind process, both
    at once. valgrind runs one thread, a count does not depend on the load, and two processes with the same history
    (start-up, one build, its warm-ups) agree to 0.01-0.04%, so the pair's wall time is one side's, not the sum.
    Otherwise both in one process, forwards alternating A, B, A, B, ..."""
    entries: list[Entry] = [(case_a, builder_a), (case_b, builder_b)]
    if not (usable_cpus() >= 2 if parallel is None else parallel):
        a, b = _count(entries, forwards, True, timeout_s, Path(workdir), env)
        return a, b
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda e: _count([e], forwards, False, timeout_s, Path(workdir), env)[0], entries)
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


def count_sides(case: Case, a: Side, b: Side, *, env: Mapping[str, str] | None = None,
                log: Callable[[str], None] | None = None) -> tuple[InstructionCount, InstructionCount]:
    """A/B's two sides of one case counted (count_pair_instructions: one valgrind process a side, at once where 2
    CPUs are free), each built in the child exactly as the timed A/B child builds it (bench.ab.child.build_side):
    a small generated builder file per side holds its Side record, so registry models, users' files and another
    git revision's models are counted the same way."""
    with temporary_workdir("ab-instr") as work:
        if log:
            log(f"instructions: {case.label()}: A and B under valgrind (torch start-up ~1 min)")
        return count_pair_instructions(case, case, builder_a=_builder_file(work, "a", a, case.seed),
                                       builder_b=_builder_file(work, "b", b, case.seed), workdir=work, env=env)


def _builder_file(work: Path, tag: str, side: Side, seed: int) -> str:
    """A .py file whose `build()` builds `side` as the timed child does; returns 'path.py:build'."""
    path = work / f"side_{tag}.py"
    path.write_text("# written by bench.launch.callgrind for one valgrind count\n"
                    "import json\n\nfrom bench.ab.spec import Side\nfrom bench.ab.child import build_side\n\n"
                    f"SIDE = Side(**json.loads({json.dumps(json.dumps(asdict(side)))}))\n\n\n"
                    f"def build():\n    return build_side(SIDE, {int(seed)})\n")
    return f"{path}:build"


# ---------------------------------------------------------------------------------------------------------------
# one valgrind process


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
    where = str(run_dir).replace("%", "%%")  # valgrind expands %p, %q{VAR}, %n in file names; a literal % is %%
    cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--instr-atstart={'no' if fast else 'yes'}",
           "--vgdb=yes", f"--vgdb-prefix={run_dir / 'vgdb'}", f"--callgrind-out-file={where}/callgrind.out.%p",
           f"--log-file={where}/valgrind.log", sys.executable, "-m", CHILD_MODULE,
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
