"""`--cluster local`: a one-machine Ray head that cannot outlive the driver that started it.

Why not `ray.init()`: the head it starts is the driver's children, and after a kill -9 of the driver Ray's own
fate sharing ends gcs_server and the raylet, but the raylet's agents (DashboardAgent, RuntimeEnvAgent) stayed up
40-60 s (measured on ray 2.60). Here a watchdog (this file run as a script: stdlib only, no Ray, no torch) starts
`ray start --head --block` in a process group of its own and in a private temp dir (so `ray.init()` elsewhere on
the machine never finds it through /tmp/ray/ray_current_cluster), then waits for EOF on its stdin, whose write
end only the driver holds. When the driver closes it or dies, however it dies, the watchdog terminates the group,
reaps every descendant (it is their subreaper), kills what is left after a grace period and removes the temp dir.
"""
from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY, FAILED = "ready", "failed"
START_TIMEOUT_S = 120.0  # `ray start` on a loaded 2-core VM takes 5-15 s
GRACE_S = 2.0  # SIGTERM first; the raylet, gcs_server and `ray start` were seen ignoring it for 5 s, so SIGKILL
ADDRESS_FILE = "ray_current_cluster"  # where `ray start` writes the GCS address, under its --temp-dir
LOG_FILE = "ray-start.log"


class _Stop(Exception):
    """SIGTERM to the watchdog: stop the head, then exit."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Stop


def _subreaper() -> None:
    """Orphaned descendants (the raylet's agents once the raylet is gone) become our children, so we reap them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: the process group is still killed


def _children() -> list[int]:
    """PIDs whose parent is this process (orphans re-parented to the subreaper included)."""
    me, out = os.getpid(), []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == me:
            out.append(int(d.name))
    return out


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(pgid: int, sig: int) -> bool:
    """Send `sig` to the head's group and to every child left; whether any process was there to get it."""
    hit = False
    for target in (lambda: os.killpg(pgid, sig), *(lambda p=p: os.kill(p, sig) for p in _children())):
        try:
            target()
            hit = True
        except (ProcessLookupError, PermissionError):
            pass
    return hit


def teardown(pgid: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM the group and every child (orphans re-parent to us while their parents die, so each look signals
    again), reap until none is left or `grace_s` passed; then the same with SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        end = time.monotonic() + wait_s
        while _signal_all(pgid, sig) and time.monotonic() < end:
            time.sleep(0.1)
            _reap()
        _reap()


def _last_line(log: Path) -> str:
    try:
        lines = [s.strip() for s in log.read_text(errors="replace").splitlines() if s.strip()]
    except OSError:
        lines = []
    return (lines or ["no output"])[-1][:300]


def _stdin_closed(timeout_s: float) -> bool:
    """Whether the driver's end of our stdin is closed (EOF), waiting at most `timeout_s` for news."""
    ready, _, _ = select.select([0], [], [], timeout_s)
    return bool(ready) and not os.read(0, 4096)


def _address(path: Path) -> str:
    """The address `ray start` wrote (once its head is up), read twice alike: never a write caught half-way."""
    try:
        first = path.read_text().strip()
        time.sleep(0.05)
        return first if first and path.read_text().strip() == first else ""
    except OSError:
        return ""


def _wait_ready(p: subprocess.Popen, temp_dir: Path, timeout_s: float) -> str | None:
    """The head's GCS address once `ray start` wrote it; None when it failed, or the driver went away first."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and p.poll() is None:
        address = _address(temp_dir / ADDRESS_FILE)
        if address:
            return address
        if _stdin_closed(0.2):
            return None
    return None


def watch(temp_dir: Path, cmd: list[str], timeout_s: float = START_TIMEOUT_S) -> int:
    """The watchdog: start the head, print one line (`ready ADDRESS` or `failed REASON`), wait for the driver to
    close our stdin (or die), stop the head. Exit 0 when the head came up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C, then closes our stdin
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _subreaper()
    log = temp_dir / LOG_FILE
    p = None
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # no head started and then lost to a SIGTERM
        with open(log, "wb") as out:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=temp_dir)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        address = _wait_ready(p, temp_dir, timeout_s)
        why = None if address else (f"`ray start` exited with status {p.returncode}: {_last_line(log)}"
                                    if p.poll() is not None else f"no head after {timeout_s:.0f} s")
        _say(f"{READY} {address}" if address else f"{FAILED} {why}")
        while address and p.poll() is None and not _stdin_closed(1.0):
            pass
        return 0 if address else 1
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown short
        if p is not None:
            teardown(p.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _say(line: str) -> None:
    """One line to the driver, then stdout goes nowhere (the driver may be gone by the time we write again)."""
    try:
        print(line, flush=True)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass


class LocalHead:
    """The driver's handle on a watched head: its GCS address, and stop()."""

    def __init__(self, proc: subprocess.Popen, address: str) -> None:
        self.proc, self.address = proc, address

    def stop(self, timeout_s: float = GRACE_S + 10.0) -> None:
        """Close the watchdog's stdin and wait until it stopped the head (SIGTERM to the watchdog if it is slow)."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout_s)


def start_head(cmd: list[str], env: dict[str, str], timeout_s: float = START_TIMEOUT_S) -> LocalHead:
    """Start the watchdog and its head (`cmd`: `ray start --head --port=0 --block ...`, --temp-dir added);
    RuntimeError with the head's one-line reason when it does not come up within `timeout_s`."""
    temp_dir = tempfile.mkdtemp(prefix="densebench-ray-")
    argv = [sys.executable, os.path.abspath(__file__), temp_dir, str(timeout_s), "--", *cmd,
            f"--temp-dir={temp_dir}"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True, close_fds=True)
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s + 10)
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    proc.stdout.close()
    kind, _, rest = line.partition(" ")
    if kind == READY and rest:
        return LocalHead(proc, rest)
    why = rest if kind == FAILED else (f"its watchdog exited with status {proc.returncode}" if proc.poll() is not None
                                       else f"no answer from its watchdog within {timeout_s + 10:.0f} s")
    LocalHead(proc, "").stop()
    raise RuntimeError(why)


if __name__ == "__main__":
    sys.exit(watch(Path(sys.argv[1]), sys.argv[4:], float(sys.argv[2])))
