"""A child's end -> the row's status: its own row (ok / oom / error / unsupported), `timeout` (killed after the
case's timeout), `oom` for a SIGKILL we did not send only where the kernel says it killed for memory (its OOM-kill
counters read around the child, or its log), `error` for any other crash or kill, its reason telling a crash (a
fault signal) from a signal sent from outside (a Ctrl-C that reached the child only is SIGINT, not a crash).

The readers of the kernel's counters live here too, beside the rule that uses them; bench.launch.isolation calls
them around every child and stores what they said in the `Outcome`.
"""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from bench.measure.result import ChildResult


# -- the kernel's word on out-of-memory kills ----------------------------------------------------------------------
# The kernel counts every OOM kill (a cgroup's limit or the whole machine out of memory) in the victim's memory
# cgroup (v2 memory.events, v1 memory.oom_control: `oom_kill`) before it sends the SIGKILL, and machine-wide in
# /proc/vmstat. A child shares this process's cgroup, so the cgroup's count before and after the child says whether
# a SIGKILL we did not send was the OOM killer; anything else that sends SIGKILL (a user, a script, a userspace OOM
# daemon such as systemd-oomd or earlyoom) leaves it unchanged.


@dataclass(frozen=True)
class OomCounters:
    """OOM-kill counts at one moment: this process's memory cgroup's (read from `source`) and the machine's;
    None where not readable."""
    cgroup: int | None
    machine: int | None
    source: str = ""


@dataclass
class Outcome:
    """How one child ended, as the launcher saw it (bench.launch.isolation fills it in)."""
    result: ChildResult | None  # what the child wrote back (None: nothing, or a file of the wrong shape)
    exit_code: int | None = None
    signal: int = 0
    timed_out: bool = False
    killed_by_us: bool = False
    stage: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0
    maxrss_kb: int | None = None
    cpu_s: float | None = None  # the child's user + system CPU seconds (rusage), for bench.health
    pid: int | None = None  # the child's (the case's process, not the fork server)
    # the kernel's OOM-kill counters before and after the child (outcome.oom_kill_counters); None: not read
    oom_before: OomCounters | None = None
    oom_after: OomCounters | None = None
    kernel_log: str | None = None  # the kernel log's OOM line for `pid`, "" if it has none; None: not read


def _unescape(path: str) -> str:
    """A path as /proc/self/mountinfo writes it (space, tab, newline, backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _cgroup_mounts() -> list[tuple[str, str, str, str]]:
    """(fstype, superoptions, root, mountpoint) of the cgroup mounts, from mountinfo (or the usual places)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return [("cgroup2", "", "/", "/sys/fs/cgroup"), ("cgroup", "memory", "/", "/sys/fs/cgroup/memory")]
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            out.append((r[0], r[2], _unescape(f[3]), _unescape(f[4])))
    return out


def _under(root: str, point: str, cg_path: str) -> Path | None:
    """The folder of cgroup `cg_path` in a mount of its hierarchy's `root` at `point`; None if not below it."""
    root = root.rstrip("/")
    if not (cg_path == root or cg_path.startswith(root + "/")):
        return None
    return Path(point) / cg_path[len(root):].lstrip("/")


def memory_cgroup_file() -> Path | None:
    """This process's cgroup OOM counter: v2 memory.events (where the memory controller is on), else the v1
    memory hierarchy's memory.oom_control; None when neither can be read (e.g. the root cgroup)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = _cgroup_mounts()
    for line in lines:
        hid, _, rest = line.partition(":")
        ctrls, _, cg_path = rest.partition(":")
        v2 = hid == "0" and ctrls == ""
        if not (v2 or "memory" in ctrls.split(",")):
            continue
        name = "memory.events" if v2 else "memory.oom_control"
        for fstype, opts, root, point in mounts:
            if (fstype == "cgroup2") != v2 or (not v2 and "memory" not in opts.split(",")):
                continue
            folder = _under(root, point, cg_path)
            if folder is not None and _count(folder / name, "oom_kill") is not None:
                return folder / name
    return None


def _count(path: Path | str, key: str) -> int | None:
    """The value of the line `key N` of a kernel counter file; None if unreadable or absent."""
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return None


def oom_kill_counters(cgroup_file: Path | None) -> OomCounters:
    """The OOM-kill counts now (two small file reads)."""
    return OomCounters(cgroup=_count(cgroup_file, "oom_kill") if cgroup_file else None,
                       machine=_count("/proc/vmstat", "oom_kill"), source=str(cgroup_file or ""))


def kernel_log_oom(pid: int) -> str | None:
    """The kernel log's OOM-kill line for `pid` ('' if it has none); None where the log cannot be read
    (kernel.dmesg_restrict without CAP_SYSLOG, no /dev/kmsg). PIDs are the kernel's: none match in a PID namespace."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    pat = re.compile(rf"Killed process {pid}\b")
    found = ""
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break  # the end of the buffer
            except BrokenPipeError:
                continue  # a record overwritten while reading: go on with the next
            except OSError:
                return found or None
            if not rec:
                break
            msg = rec.decode(errors="replace").split(";", 1)[-1].strip()
            if pat.search(msg):
                found = msg[:300]
    finally:
        os.close(fd)
    return found



def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# Signals the kernel raises in the process for its own fault (or abort() raises): a crash. Any other signal that
# ended a child came from outside it (a Ctrl-C, kill, a parent that died): the row says who could have sent it.
CRASH_SIGNALS = frozenset(getattr(signal, n) for n in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT",
                                                       "SIGSYS", "SIGTRAP") if hasattr(signal, n))
SENT_BY = {"SIGINT": "a Ctrl-C or kill -INT that reached the child, not the run",
           "SIGTERM": "kill or a service manager (the run's timeout is said as such)",
           "SIGHUP": "its terminal or session closed", "SIGQUIT": "a Ctrl-\\ or kill -QUIT",
           "SIGPIPE": "it wrote to a closed pipe"}


def _signal_reason(out: Outcome, where: str) -> str:
    """'crashed with SIGSEGV' for a fault, 'killed by SIGINT (signal 2) from outside: ...' for a signal sent."""
    name = signal_name(out.signal)
    tail = f"; stderr: {out.stderr_tail}" if out.stderr_tail else ""
    if out.signal in CRASH_SIGNALS:
        return f"child crashed with {name}{where}{tail}"
    who = SENT_BY.get(name, "another process")
    return f"child killed by {name} (signal {out.signal}) from outside{where}: {who}{tail}"


def oom_evidence(out: Outcome) -> tuple[bool, str]:
    """Whether the kernel says it OOM-killed the child, and what was checked (for the row's reason).

    Our cgroup's counter decides where it can be read (the kernel counts every OOM kill in the victim's cgroup,
    global ones included); else the kernel log naming the child's pid; else, where the log cannot be read, the
    machine's counter rising during the child."""
    b, a = out.oom_before, out.oom_after
    if b is not None and a is not None and b.cgroup is not None and a.cgroup is not None:
        if a.cgroup > b.cgroup:
            return True, f"cgroup {a.source} oom_kill {b.cgroup} -> {a.cgroup}"
        return False, f"cgroup {a.source} oom_kill unchanged at {a.cgroup}"
    checked = ["no cgroup memory.events / memory.oom_control readable"]
    if out.kernel_log:
        return True, f"kernel log: {out.kernel_log}"
    if out.kernel_log is None:
        checked.append("kernel log not readable")
        if b is not None and a is not None and b.machine is not None and a.machine is not None:
            if a.machine > b.machine:
                return True, f"/proc/vmstat oom_kill {b.machine} -> {a.machine} during the child (machine-wide)"
            checked.append(f"/proc/vmstat oom_kill unchanged at {a.machine}")
    else:
        checked.append(f"kernel log: no OOM kill of pid {out.pid}")
    return False, "; ".join(checked)


def _sigkill(out: Outcome, where: str) -> dict:
    """A SIGKILL we did not send: oom where the kernel says so, else an error that says what was checked."""
    oom, said = oom_evidence(out)
    if oom:
        return {"status": "oom",
                "reason": f"child killed by SIGKILL{where}: the kernel's out-of-memory killer ({said})"}
    return {"status": "error", "reason": f"child killed by signal 9 (SIGKILL) from outside{where}; no out-of-memory "
                                         f"evidence from the kernel ({said}): another process or a userspace OOM "
                                         "daemon (systemd-oomd, earlyoom) sent it"}


def classify(out: Outcome, timeout_s: float) -> tuple[dict, list[float]]:
    """Outcome of a child -> (row fields from the child or from how it ended, samples)."""
    where = f" (stage: {out.stage})" if out.stage else ""
    if out.timed_out:
        return {"status": "timeout", "reason": f"no result within the {timeout_s:g} s timeout{where}; child killed"}, []
    if out.result is not None and out.result.row is not None:
        return dict(out.result.row), list(out.result.samples)
    if out.signal:
        if out.signal == signal.SIGKILL and not out.killed_by_us:
            return _sigkill(out, where), []
        return {"status": "error", "reason": _signal_reason(out, where)[:600]}, []
    tail = f": {out.stderr_tail}" if out.stderr_tail else ""
    return {"status": "error", "reason": f"child exited with code {out.exit_code} and no result{where}{tail}"}, []


def child_error(out: Outcome) -> str:
    """Why a calibration or probe child gave no result, in a few words: its own error, a timeout, or its exit."""
    return (out.result.error if out.result else None) or ("timeout" if out.timed_out else
                                                          f"exit {out.exit_code} signal {out.signal}")
