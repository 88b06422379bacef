"""One writer per run folder: an exclusive `flock` on `<run>/.lock`, held for the life of the writing process.

Why: two processes writing one run (a second `--resume` of a live run) measure on the same cores and the last
writer's files win: rows measured by the other are lost. The lock is taken before a run is read for resuming
and before its first file is written; a second writer gets one line naming the holder (PID, host, since when,
its command) and exit 2. The kernel drops the lock when the holder dies, even by kill -9, so a stale lock
file never blocks a resume. The file descriptor is close-on-exec and every child is started by exec
(bench.launch), so no child keeps the lock past its parent. Readers (report, compare) take no lock: every file is
replaced atomically and the loader reconciles them (bench.results.validate).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLocked(ValueError):
    """Another live process writes this run folder; the message is one line for users."""


class RunLock:
    """The exclusive lock of one run folder; `release()` (or the process's end) gives it back."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(f"{self.path.parent} is being written by {holder}; accepted: wait for it to "
                                "end (or stop it), then --resume") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since":
                                 time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv[:8]}).encode())
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """'process PID on HOST since T (COMMAND)' from the lock file, as much as is readable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    cmd = " ".join(str(a) for a in info.get("command") or [])
    return (f"process {info.get('pid')} on {info.get('host', '?')} since {info.get('since', '?')}"
            + (f" ({cmd})" if cmd else ""))
