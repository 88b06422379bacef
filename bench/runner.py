"""Runs a list of cases, each in its own child process with a timeout, and stores a row per case as it goes.

- Isolation: `ForkServer` (default on Linux; see bench.worker) or `Spawner` (a fresh interpreter per case,
  `DENSEBENCH_ISOLATION=spawn`). Both give a `Outcome`; `classify` turns it into the row's status:
  the child's own row (ok / oom / error / unsupported), `timeout` (killed after --timeout), `oom` for a child that
  died of SIGKILL we did not send (the kernel OOM killer), `error` for any other crash (signal, exit code).
- Before a child is started: statically unsupported combinations (bench.backends.unsupported_reason) become
  `unsupported` rows, absent devices (--allow-missing) and cases whose attention scores alone would not fit in the
  device's available memory become `skipped` rows, with the reason.
- After every case results.parquet/.csv, samples.parquet and meta.json are rewritten atomically (bench.store),
  so killing the run at any moment leaves a valid partial run; `--resume` finishes it, skipping every case whose
  case_id already has a complete row (with --repeats R: R processes, or a failure).
- `--repeats R`: pass p runs process p of every case (bench.repeats pools them into the case's one row).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.cases import Case
from bench.envinfo import cuda_env, free_memory_bytes, now_iso

ISOLATION_ENV = "DENSEBENCH_ISOLATION"
FAULT_ENV = "DENSEBENCH_FAULT"
REPO = Path(__file__).resolve().parent.parent
CALIBRATION_TIMEOUT_S = 180.0


@dataclass
class Outcome:
    result: dict | None
    exit_code: int | None = None
    signal: int = 0
    timed_out: bool = False
    killed_by_us: bool = False
    stage: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0
    maxrss_kb: int | None = None


# glibc's malloc returns large blocks to the OS after every free (mmap/munmap, heap trimming), so every inference
# iteration page-faults its activations afresh. On the 2-core development VM that made separate processes of the
# same case differ by up to 2x (block:relu-linear at 1024x1024: 15 vs 30 ms medians, bimodal; with these
# settings 13-17 ms), which no within-run statistic can see. A serving process keeps its memory; so do we.
# Values already in the environment win; the ones used are recorded in meta.json (env.malloc).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}


def _child_env() -> dict:
    env = dict(os.environ)
    for k, v in MALLOC_ENV.items():
        env.setdefault(k, v)
    env.update(cuda_env())
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][-n:] if lines else ""


class _Isolation:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.count = 0

    def _paths(self, spec: dict) -> tuple[Path, Path, Path]:
        self.count += 1
        base = self.workdir / f"case{self.count:05d}"
        spec_path, result_path, err_path = base.with_suffix(".spec.json"), base.with_suffix(".result.json"), \
            base.with_suffix(".stderr")
        spec_path.write_text(json.dumps(spec, default=str))
        for p in (result_path, Path(f"{result_path}.stage")):
            if p.exists():
                p.unlink()
        return spec_path, result_path, err_path

    @staticmethod
    def _finish(out: Outcome, result_path: Path, err_path: Path) -> Outcome:
        try:
            out.result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            out.result = None
        try:
            out.stage = Path(f"{result_path}.stage").read_text().strip()
        except OSError:
            out.stage = ""
        out.stderr_tail = _tail(err_path)
        return out

    def run(self, spec: dict, timeout_s: float) -> Outcome:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Spawner(_Isolation):
    """A fresh `python -m bench.worker --case` per case (the interpreter and torch import are paid every time)."""

    name = "spawn"

    def run(self, spec: dict, timeout_s: float) -> Outcome:
        spec_path, result_path, err_path = self._paths(spec)
        t0 = time.perf_counter()
        with open(err_path, "w") as err:
            p = subprocess.Popen([sys.executable, "-m", "bench.worker", "--case", str(spec_path), "--result",
                                  str(result_path)], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                 env=_child_env(), cwd=str(REPO))
            out = Outcome(result=None)
            try:
                rc = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
                out.timed_out = out.killed_by_us = True
        out.wall_s = time.perf_counter() - t0
        out.exit_code = rc if rc >= 0 else None
        out.signal = -rc if rc < 0 else 0
        return self._finish(out, result_path, err_path)


class WorkerDied(RuntimeError):
    pass


class ForkServer(_Isolation):
    """One `python -m bench.worker --serve` per run; it forks a fresh child per case (see bench.worker)."""

    name = "fork"

    def __init__(self, workdir: Path, start_timeout_s: float = 300.0):
        super().__init__(workdir)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._ready = False
        self._busy = False
        self._log = None
        self.cuda_touched = False
        self.start_s = 0.0

    def launch(self) -> None:
        """Start the server without waiting for it (it imports torch while the parent does other work)."""
        self._t0 = time.perf_counter()
        self._log = open(self.workdir / "server.stderr", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=_child_env(), cwd=str(REPO))
        self._buf = b""
        self._ready = False

    def start(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.launch()
        if self._ready:
            return
        try:
            msg = self._read(self.start_timeout_s)
        except WorkerDied:
            msg = None
        if not msg or not msg.get("ready"):
            self.close()
            raise WorkerDied(f"worker server did not start ({_tail(self.workdir / 'server.stderr')})")
        self._ready = True
        self.cuda_touched = bool(msg.get("cuda_touched"))
        self.start_s = time.perf_counter() - self._t0

    def _read(self, timeout_s: float | None) -> dict | None:
        """Next JSON line from the server; None on timeout; WorkerDied on EOF."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([fd], [], [], wait)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerDied("worker server exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, spec: dict, timeout_s: float) -> Outcome:
        self.start()
        spec_path, result_path, err_path = self._paths(spec)
        t0 = time.perf_counter()
        out = Outcome(result=None)
        assert self.proc is not None and self.proc.stdin is not None
        self._busy = True
        try:
            self.proc.stdin.write((json.dumps({"spec": str(spec_path), "result": str(result_path),
                                               "stderr": str(err_path)}) + "\n").encode())
            self.proc.stdin.flush()
            started = self._read(60.0)
            if started is None:
                raise WorkerDied("worker server did not fork a child within 60 s")
            pid = int(started["pid"])
            done = self._read(timeout_s)
            if done is None:
                out.timed_out = out.killed_by_us = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                done = self._read(60.0)
            if done is None:
                raise WorkerDied("worker server did not reap a killed child")
            self._busy = False
        except (WorkerDied, BrokenPipeError, OSError) as e:
            self.close()
            out.wall_s = time.perf_counter() - t0
            out.exit_code = None
            out.stderr_tail = f"worker server failed: {e}"
            return self._finish(out, result_path, err_path) if out.result else out
        out.wall_s = time.perf_counter() - t0
        out.signal = int(done.get("signal") or 0)
        out.exit_code = None if out.signal else int(done.get("exit", 0))
        out.maxrss_kb = done.get("maxrss_kb")
        return self._finish(out, result_path, err_path)

    def close(self) -> None:
        if self.proc is not None:
            if self._busy:  # interrupted mid-case: the server is waiting on the child; its death kills the child
                self.proc.kill()
            try:
                if self.proc.poll() is None:
                    self.proc.stdin.write(b'{"quit": true}\n')
                    self.proc.stdin.flush()
                    self.proc.stdin.close()
                    self.proc.wait(timeout=5)
            except Exception:
                try:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
                except Exception:
                    pass
            self.proc = None
            self._ready = self._busy = False
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


def make_isolation(workdir: Path, kind: str | None = None) -> _Isolation:
    kind = kind or os.environ.get(ISOLATION_ENV) or ("fork" if hasattr(os, "fork") else "spawn")
    if kind not in ("fork", "spawn"):
        raise ValueError(f"{ISOLATION_ENV}: {kind!r}; valid: fork, spawn")
    return ForkServer(workdir) if kind == "fork" else Spawner(workdir)


def classify(out: Outcome, timeout_s: float) -> tuple[dict, list[float]]:
    """Outcome of a child -> (row fields from the child or from how it ended, samples)."""
    where = f" (stage: {out.stage})" if out.stage else ""
    if out.timed_out:
        return {"status": "timeout", "reason": f"no result within the {timeout_s:g} s timeout{where}; child killed"}, []
    if out.result and "row" in out.result:
        return dict(out.result["row"]), list(out.result.get("samples") or [])
    if out.signal:
        try:
            name = signal.Signals(out.signal).name
        except ValueError:
            name = f"signal {out.signal}"
        if out.signal == signal.SIGKILL and not out.killed_by_us:
            return {"status": "oom", "reason": f"child killed by SIGKILL{where}: the kernel's out-of-memory killer "
                                               "(nothing else here sends SIGKILL)"}, []
        tail = f"; stderr: {out.stderr_tail}" if out.stderr_tail else ""
        return {"status": "error", "reason": f"child crashed with {name}{where}{tail}"}, []
    tail = f": {out.stderr_tail}" if out.stderr_tail else ""
    return {"status": "error", "reason": f"child exited with code {out.exit_code} and no result{where}{tail}"}, []


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunState:
    run_dir: Path
    meta: dict
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    def save(self, results_only: bool = False) -> None:
        from bench import store

        store.write_results(self.run_dir, store.results_frame(self.rows))
        if not results_only:
            store.write_samples(self.run_dir, store.samples_frame(self.samples))
        store.write_meta(self.run_dir, self.meta)


def load_state(run_dir: Path) -> RunState:
    """An existing run folder (for --resume): rows, samples and meta as plain Python objects."""
    from bench import store

    run = store.load_run(run_dir)
    rows = [{k: (None if _isna(v) else v) for k, v in r.items()} for r in run.results.to_dict("records")]
    samples = run.samples.to_dict("records")
    return RunState(run_dir=run_dir, meta=dict(run.meta), rows=rows, samples=samples)


def _isna(v) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v)) if not isinstance(v, (list, dict, str)) else False
    except (TypeError, ValueError):
        return False


def calibration_key(case: Case) -> str:
    return f"{case.device}|{case.precision}|t{case.threads}"


class Runner:
    """Runs the cases of a RunState that have no row yet. `progress(case, i, n)` and `log(line)` are optional."""

    def __init__(self, state: RunState, cases: list[Case], *, allow_missing: set[str] | None = None,
                 progress=None, log: Callable[[str], None] | None = None, isolation: str | None = None,
                 calibrate: bool = True, repeats: int = 1):
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        self.state = state
        self.repeats = repeats
        self.cases = cases
        self.missing = allow_missing or set()
        self.progress = progress
        self.log = log or (lambda s: None)
        self.isolation_kind = isolation
        self.calibrate = calibrate
        self._macs: dict = {}
        self._fit: dict = {}
        self._spawner: Spawner | None = None
        self._groups: dict[str, dict[int, list[float]]] | None = None
        self.overheads: list[float] = []  # child wall time minus its own measuring time (per ok case)

    def _processes_done(self, row: dict | None) -> int:
        """Processes already measured for a case with this row (0: no row); a failed case counts as complete."""
        if row is None:
            return 0
        if row.get("status") != "ok":
            return self.repeats
        r = row.get("repeats")
        return 1 if r is None or _isna(r) else int(r)

    def pending(self) -> list[Case]:
        """Cases without a row, or ok with fewer processes than --repeats asks (a resumed run)."""
        rows = {r["case_id"]: r for r in self.state.rows if r.get("case_id")}
        return [c for c in self.cases if self._processes_done(rows.get(c.case_id)) < self.repeats]

    # -- pre-child decisions ------------------------------------------------------------------------------------
    def _static(self, case: Case, fit: bool = True) -> tuple[str, str] | None:
        """(status, reason) decided without a child: absent device, unsupported combination, would not fit."""
        if case.device in self.missing:
            return "skipped", f"device {case.device} is not present on this machine (--allow-missing)"
        from bench.backends import unsupported_reason

        r = unsupported_reason(case.backend, case.device_type, case.precision, channels_last=case.channels_last,
                               fold=case.folded)
        if r:
            return "unsupported", r
        return self._fit_check(case) if fit else None

    def _fit_check(self, case: Case) -> tuple[str, str] | None:
        from bench.memory import fit_reason, materialises_scores

        if "softmax" not in case.variant or not materialises_scores(case.device_type, case.backend, case.precision):
            return None
        key = (case.model, case.height, case.width, case.batch, case.precision, case.device)
        if key not in self._fit:
            try:
                self._fit[key] = fit_reason(case.model, case.height, case.width, case.batch, case.precision,
                                            free_memory_bytes(case.device))
            except Exception as e:  # an estimate must never stop the run
                self.log(f"memory estimate failed for {case.label()}: {type(e).__name__}: {e}")
                self._fit[key] = None
        return ("skipped", self._fit[key]) if self._fit[key] else None

    def _macs_of(self, case: Case) -> int | None:
        key = (case.model, case.height, case.width, case.batch)
        if key not in self._macs:
            try:
                from models.complexity import count_macs

                self._macs[key] = int(count_macs(case.model, case.height, case.width, case.batch))
            except Exception as e:
                self.log(f"count_macs failed for {case.model}: {type(e).__name__}: {e}")
                self._macs[key] = None
        return self._macs[key]

    def _peak(self, iso: _Isolation, case: Case) -> float | None:
        if not self.calibrate:
            return None
        cal = self.state.meta.setdefault("calibration", {})
        key = calibration_key(case)
        if key not in cal:
            spec = {"kind": "calibrate", "device": case.device, "precision": case.precision,
                    "threads": case.threads}
            out = self._isolation_for(iso, case).run(spec, CALIBRATION_TIMEOUT_S)
            res = (out.result or {}).get("calibration")
            cal[key] = res if res else {"error": (out.result or {}).get("error") or
                                        ("timeout" if out.timed_out else f"exit {out.exit_code} signal {out.signal}")}
            self.log(f"calibration {key}: {cal[key].get('gmacs_per_s', cal[key].get('error'))}")
        return cal[key].get("gmacs_per_s")

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        todo = self.pending()
        st = self.state
        st.meta["status"] = "running"
        st.save(results_only=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"densebench-{st.run_id}-"))
        iso = make_isolation(workdir, self.isolation_kind)
        st.meta["isolation"] = iso.name
        st.meta["malloc_env"] = {k: _child_env()[k] for k in MALLOC_ENV}
        fault = os.environ.get(FAULT_ENV)
        try:
            to_spawn = [c for c in todo if not self._static(c, fit=False)]
            if isinstance(iso, ForkServer) and to_spawn:
                iso.launch()  # imports torch in the background while the parent traces the models below
            to_spawn = [c for c in to_spawn if not self._fit_check(c)]
            for case in to_spawn:
                self._macs_of(case)
            R = self.repeats
            rows_at = {r["case_id"]: i for i, r in enumerate(st.rows) if r.get("case_id")}
            done = {c.case_id: self._processes_done(st.rows[rows_at[c.case_id]] if c.case_id in rows_at else None)
                    for c in todo}
            # pass p runs process p of every case that has fewer than p + 1: slow drift spreads over all cases
            schedule = [(p, c) for p in range(R) for c in todo if done[c.case_id] <= p]
            if self.progress and hasattr(self.progress, "set_estimates"):
                if self.calibrate:  # calibrate every device setting up front: the ETA below needs the rates
                    for case in to_spawn:
                        self._peak(iso, case)
                per = {c.case_id: self.estimate_s(c, R) for c in to_spawn}
                self.progress.set_estimates([per.get(c.case_id, 0.05) for _, c in schedule])
            procs: dict[str, list[dict]] = {}  # per-process rows of this session, for pooling
            for i, (rep, case) in enumerate(schedule):
                at = rows_at.get(case.case_id)
                if rep > 0 and at is not None and st.rows[at].get("status") != "ok":
                    continue  # failed or decided statically in an earlier pass: the case is complete
                if self.progress:
                    self.progress(case, i, len(schedule))
                self._run_one(iso, case, rep, rows_at, procs, workdir, fault)
        finally:
            iso.close()
            if isinstance(iso, ForkServer):
                st.meta["worker_server_start_s"] = round(iso.start_s, 3)
            shutil.rmtree(workdir, ignore_errors=True)
        if self.overheads:
            st.meta["per_case_overhead_s"] = {"median": sorted(self.overheads)[len(self.overheads) // 2],
                                              "max": max(self.overheads), "n": len(self.overheads)}
        return st

    def _run_one(self, iso: _Isolation, case: Case, rep: int, rows_at: dict, procs: dict, workdir: Path,
                 fault: str | None) -> None:
        """Process number `rep` of a case: run it (or decide it statically), pool, store the row and save."""
        from bench import repeats as rp

        st = self.state
        R = self.repeats
        started = now_iso()
        t0 = time.perf_counter()
        samples: list[float] = []
        static = self._static(case) if rep == 0 else None
        if static:
            row = {"status": static[0], "reason": static[1]}
        else:
            case.macs = self._macs_of(case)
            case.extra = dict(case.extra)
            case.extra["device_peak_gmacs_per_s"] = self._peak(iso, case)
            case.extra["workdir"] = str(workdir)
            if fault:
                case.extra["fault"] = fault
            spec = case.to_spec()
            if R > 1:  # the case's time budget is shared by its processes
                spec["min_time_s"] = case.min_time_s / R
                spec["max_time_s"] = case.max_time_s / R
            t0 = time.perf_counter()
            out = self._isolation_for(iso, case).run(spec, case.timeout_s)
            row, samples = classify(out, case.timeout_s)
            if out.result and row.get("status") == "ok":
                self._note_overhead(out, samples)
        full = case.row_base()
        full.update({k: v for k, v in row.items() if v is not None})
        full.update({"run_id": st.run_id, "case_id": case.case_id, "host": st.meta.get("host"),
                     "started_at": started, "wall_s": time.perf_counter() - t0})
        for k, v in case.row_base().items():  # identity is the parent's, whatever the child said
            full[k] = v
        prev = st.rows[rows_at[case.case_id]] if case.case_id in rows_at else None
        by_rep = self._groups_of(case.case_id)  # indexed before this process's samples join the run's
        st.samples.extend({"run_id": st.run_id, "case_id": case.case_id, "repeat": rep, "iter": j, "latency_ms": v}
                          for j, v in enumerate(samples))
        if samples:
            by_rep.setdefault(rep, []).extend(float(v) for v in samples)
        if full.get("status") != "ok":
            full = rp.failed(full, rep, R)
        else:
            mine = procs.setdefault(case.case_id, [prev] if prev is not None and prev.get("status") == "ok" else [])
            mine.append(full)
            groups = [g for _, g in sorted(by_rep.items())]
            full = rp.pool_rows(mine, groups) if len(mine) > 1 else {**full, "repeats": 1,
                                                                      "latency_ms_repeat_cv": float("nan")}
            if prev is not None:
                full["started_at"] = prev.get("started_at") or started
                full["wall_s"] = float(prev.get("wall_s") or 0.0) + float(full.get("wall_s") or 0.0)
        if prev is not None:
            st.rows[rows_at[case.case_id]] = full
        else:
            rows_at[case.case_id] = len(st.rows)
            st.rows.append(full)
        st.meta["cases_done"] = sum(1 for r in st.rows if self._processes_done(r) >= R)
        st.meta["updated_at"] = now_iso()
        st.save()
        self.log(_line(full))

    def _groups_of(self, case_id: str) -> dict[int, list[float]]:
        """repeat -> samples of a case (indexed from the run's samples once, then kept up to date)."""
        if self._groups is None:
            self._groups = {}
            for s in self.state.samples:
                r = s.get("repeat")
                self._groups.setdefault(str(s.get("case_id")), {}).setdefault(
                    0 if r is None or _isna(r) else int(r), []).append(float(s["latency_ms"]))
        return self._groups.setdefault(case_id, {})

    def estimate_s(self, case: Case, repeats: int = 1) -> float:
        """Rough wall time of one process of a case for the ETA: overhead + first call + warm-up + sampling (its
        share of the budget with `repeats` processes), with one call's time guessed from its MACs at 30% of the
        device's calibrated rate (10 GMAC/s when unknown)."""
        rate = (self.state.meta.get("calibration", {}).get(calibration_key(case)) or {}).get("gmacs_per_s") or 10.0
        macs = self._macs.get((case.model, case.height, case.width, case.batch)) or 1e9
        call = macs / (0.3 * rate * 1e9)
        lo, hi = case.min_time_s / repeats, case.max_time_s / repeats
        warm = max(2 * call, min(max(0.5, 0.3 * hi), 10 * call))
        sampling = max(call, min(hi, max(lo, 30 * call / repeats)))
        return 0.3 + call + warm + sampling

    def _isolation_for(self, iso: _Isolation, case: Case) -> _Isolation:
        """The fork server, except for CUDA cases when the server process has loaded the CUDA driver (children
        forked after that cannot use CUDA): those get a fresh interpreter each."""
        if case.device_type == "cuda" and isinstance(iso, ForkServer):
            iso.start()
            if iso.cuda_touched:
                if self._spawner is None:
                    self._spawner = Spawner(iso.workdir)
                    self.state.meta["isolation_cuda"] = "spawn (the fork server had loaded the CUDA driver)"
                    self.log("fork server loaded the CUDA driver: CUDA cases run in fresh interpreters")
                return self._spawner
        return iso

    def _note_overhead(self, out: Outcome, samples: list[float]) -> None:
        """Child wall time not spent in the timer: fork + imports left + build + prepare + numerics + result write."""
        timing = (out.result.get("child") or {}).get("timing_s")
        if timing is not None:
            self.overheads.append(max(0.0, out.wall_s - float(timing)))


def _line(row: dict) -> str:
    lab = f"{row['model']} {row['height']}x{row['width']} {row['device']} {row['backend']} {row['precision']}"
    if row.get("status") == "ok":
        return (f"{lab}: {row.get('latency_ms_median', float('nan')):.2f} ms (n={row.get('n')}, "
                f"{row.get('wall_s', 0):.1f} s)")
    return f"{lab}: {row.get('status')}: {row.get('reason')}"
