"""How a child process is started and watched: a fork server (default) or a fresh interpreter per case.

- `ForkServer`: one `python -m bench.launch.worker --serve` per run imports torch and the models once, then
  forks a fresh child per case (see bench.launch.worker); per-case overhead is a fork, not an interpreter start.
- `Spawner`: a fresh `python -m bench.launch.worker --case` per case (`DENSEBENCH_ISOLATION=spawn`).
Both take `env`, variables merged over `child_env()` for their children (e.g. DENSEBENCH_MODELS_FROM, so that
users' model files are imported where the cases run).
Both return an `Outcome`; `bench.launch.outcome.classify` turns it into the row's status. Around every child
they read the kernel's out-of-memory kill counters (`outcome.oom_kill_counters`: the cgroup's and the machine's,
a file read each), so that a SIGKILL is called an OOM only where the kernel says it killed for memory.
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

from bench.launch.childenv import REPO, child_env
from bench.launch.outcome import OomCounters, Outcome, kernel_log_oom, memory_cgroup_file, oom_kill_counters
from bench.measure.result import ChildResult, ResultFormatError

ISOLATION_ENV = "DENSEBENCH_ISOLATION"
ISOLATIONS = ("fork", "spawn")


def _tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][-n:] if lines else ""


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Isolation:
    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None):
        self.workdir = workdir
        self.env = dict(env or {})
        self.count = 0
        self._oom_file = memory_cgroup_file()  # found once; read before and after every child

    def _child_env(self) -> dict[str, str]:
        """child_env() (read when a child starts, so it follows os.environ) with this isolation's extras over it."""
        return {**child_env(), **self.env}

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
        malformed = ""
        try:
            out.result = ChildResult.from_json(json.loads(result_path.read_text()))
        except ResultFormatError as e:  # a file of the wrong shape: said as the child's last words
            out.result, malformed = None, str(e)
        except (OSError, ValueError):
            out.result = None
        try:
            out.stage = Path(f"{result_path}.stage").read_text().strip()
        except OSError:
            out.stage = ""
        out.stderr_tail = malformed or _tail(err_path)
        return out

    def _oom_mark(self) -> OomCounters:
        return oom_kill_counters(self._oom_file)

    def _oom_evidence(self, out: Outcome, before: OomCounters) -> None:
        """Record the counters around the child; for a SIGKILL we did not send without a cgroup count to judge
        by, the kernel log's word too (read only then: it can be a megabyte)."""
        out.oom_before, out.oom_after = before, self._oom_mark()
        if out.signal == signal.SIGKILL and not out.killed_by_us and out.pid and \
                (before.cgroup is None or out.oom_after.cgroup is None):
            out.kernel_log = kernel_log_oom(out.pid)

    def run(self, spec: dict, timeout_s: float) -> Outcome:
        raise NotImplementedError

    def for_device(self, device_type: str) -> "Isolation":
        """Where a case on this device type runs: here."""
        return self

    def close(self) -> None:
        pass


class Spawner(Isolation):
    """A fresh `python -m bench.launch.worker --case` per case (the interpreter start and torch import every time)."""

    name = "spawn"

    def run(self, spec: dict, timeout_s: float) -> Outcome:
        spec_path, result_path, err_path = self._paths(spec)
        oom0 = self._oom_mark()
        t0 = time.perf_counter()
        cpu0 = _children_cpu_s()
        with open(err_path, "w") as err:
            p = subprocess.Popen([sys.executable, "-m", "bench.launch.worker", "--case", str(spec_path), "--result",
                                  str(result_path)], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                 env=self._child_env(), cwd=str(REPO))
            out = Outcome(result=None, pid=p.pid)
            try:
                rc = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
                out.timed_out = out.killed_by_us = True
        out.wall_s = time.perf_counter() - t0
        out.cpu_s = _children_cpu_s() - cpu0  # only this child was reaped in between
        out.exit_code = rc if rc >= 0 else None
        out.signal = -rc if rc < 0 else 0
        self._oom_evidence(out, oom0)
        return self._finish(out, result_path, err_path)


class WorkerDied(RuntimeError):
    pass


class ForkServer(Isolation):
    """One `python -m bench.launch.worker --serve` per run, forking a fresh child per case (see bench.launch.worker)."""

    name = "fork"

    def __init__(self, workdir: Path, start_timeout_s: float = 300.0, env: Mapping[str, str] | None = None):
        super().__init__(workdir, env)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._ready = False
        self._busy = False
        self._log = None
        self.cuda_touched = False
        self.start_s = 0.0
        self._spawner: Spawner | None = None

    def for_device(self, device_type: str) -> Isolation:
        """This server, except for CUDA once the server has loaded the CUDA driver (children forked after that
        cannot use CUDA): then a fresh interpreter per case, with the same workdir and environment."""
        if device_type == "cuda":
            self.start()
            if self.cuda_touched:
                self._spawner = self._spawner or Spawner(self.workdir, env=self.env)
                return self._spawner
        return self

    def launch(self) -> None:
        """Start the server without waiting for it (it imports torch while the parent does other work)."""
        self._t0 = time.perf_counter()
        self._log = open(self.workdir / "server.stderr", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.launch.worker", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=self._child_env(),
                                     cwd=str(REPO))
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
        oom0 = self._oom_mark()
        t0 = time.perf_counter()
        out = Outcome(result=None)
        self._busy = True
        try:
            done = self._exchange({"spec": str(spec_path), "result": str(result_path), "stderr": str(err_path)},
                                  timeout_s, out)
            self._busy = False
        except (WorkerDied, BrokenPipeError, OSError) as e:
            self.close()
            out.wall_s = time.perf_counter() - t0
            out.exit_code = None
            out.stderr_tail = f"worker server failed: {e}"
            out.oom_before, out.oom_after = oom0, self._oom_mark()
            return out
        out.wall_s = time.perf_counter() - t0
        out.signal = int(done.get("signal") or 0)
        out.exit_code = None if out.signal else int(done.get("exit", 0))
        out.maxrss_kb = done.get("maxrss_kb")
        out.cpu_s = done.get("cpu_s")
        self._oom_evidence(out, oom0)
        return self._finish(out, result_path, err_path)

    def _exchange(self, msg: dict, timeout_s: float, out: Outcome) -> dict:
        """Ask the server for one child and wait for its end; past `timeout_s` kill it (the server reaps it)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        started = self._read(60.0)
        if started is None:
            raise WorkerDied("worker server did not fork a child within 60 s")
        out.pid = int(started["pid"])
        done = self._read(timeout_s)
        if done is None:
            out.timed_out = out.killed_by_us = True
            try:
                os.kill(int(started["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass
            done = self._read(60.0)
        if done is None:
            raise WorkerDied("worker server did not reap a killed child")
        return done

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


def isolation_kind(kind: str | None = None) -> str:
    """The isolation to use: `kind`, else env DENSEBENCH_ISOLATION, else fork where the OS has it. Raises a
    one-line ValueError for an unknown one (the plan calls this before a run folder exists)."""
    kind = kind or os.environ.get(ISOLATION_ENV) or ("fork" if hasattr(os, "fork") else "spawn")
    if kind not in ISOLATIONS:
        raise ValueError(f"{ISOLATION_ENV}: {kind!r} is not accepted; accepted: {', '.join(ISOLATIONS)}")
    return kind


def make_isolation(workdir: Path, kind: str | None = None, env: Mapping[str, str] | None = None) -> Isolation:
    """The isolation of `isolation_kind(kind)`; `env` is merged over child_env() for every child."""
    kind = isolation_kind(kind)
    return ForkServer(workdir, env=env) if kind == "fork" else Spawner(workdir, env=env)

