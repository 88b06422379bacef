"""How a killed child, a killed run and a results file end up (issue 12), with real processes.

- a SIGKILL is `oom` only where the kernel counted an OOM kill (the cgroup's oom_kill counter around the child);
  a SIGKILL from anything else is an `error` that says what was checked;
- results files get a plain open()'s mode under the umask, and are fsynced before the rename;
- the temp folders of killed runs are swept by the next run, and only those.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.cases import Case
from bench.launch.isolation import ForkServer, Outcome, Spawner
from bench.launch.outcome import OomCounters, classify, memory_cgroup_file
from bench.launch.workdir import make_workdir, sweep_stale

REPO = Path(__file__).resolve().parent.parent


def _spec(fault=None, model="block:msla", res=64, timeout_s=60):
    c = Case(model=model, family="block", variant=model.split(":")[1], level="block", device="cpu",
             device_name="test-cpu", backend="eager", precision="fp32", batch=1, threads=1, height=res, width=res,
             tokens=(res // 16) ** 2, min_time_s=0.02, max_time_s=0.2, timeout_s=timeout_s, macs=1000)
    spec = c.to_spec()
    spec["settings"] = {"fault": fault, "min_samples": 5} if fault else {"min_samples": 5}
    return spec


# -- a SIGKILL from outside -------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_when_hanging(stage_file: Path, find_pid, killed: list) -> threading.Thread:
    """A thread that SIGKILLs the child (found by `find_pid`) once it reports the stage fault:hang."""
    def run():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            pid = find_pid()
            if pid and stage_file.exists() and stage_file.read_text().strip() == "fault:hang":
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _assert_outside_kill(out: Outcome, killed: list) -> None:
    assert killed and out.pid == killed[0] and out.signal == signal.SIGKILL and not out.killed_by_us
    if out.oom_after.cgroup is not None and out.oom_after.cgroup > out.oom_before.cgroup:
        pytest.skip("the kernel OOM-killed something in this cgroup meanwhile")
    row, samples = classify(out, 60)
    assert row["status"] == "error" and samples == [], row
    assert "signal 9" in row["reason"] and "from outside" in row["reason"] and "fault:hang" in row["reason"]
    assert "no out-of-memory evidence" in row["reason"]


def test_fork_child_killed_from_outside_is_an_error_not_oom(tmp_path):
    fs = ForkServer(tmp_path)
    try:
        fs.start()
        killed: list = []
        t = _kill_when_hanging(tmp_path / "case00001.result.json.stage",
                               lambda: next(iter(_children(fs.proc.pid)), None), killed)
        out = fs.run(_spec("hang"), 60)
        t.join(5)
        _assert_outside_kill(out, killed)
    finally:
        fs.close()


def test_spawned_child_killed_from_outside_is_an_error_not_oom(tmp_path):
    def find():
        return next((p for p in _children(os.getpid()) if str(tmp_path) in _cmdline(p)), None)

    killed: list = []
    t = _kill_when_hanging(tmp_path / "case00001.result.json.stage", find, killed)
    out = Spawner(tmp_path).run(_spec("hang"), 60)
    t.join(5)
    _assert_outside_kill(out, killed)


# -- the rule, given what the kernel said -----------------------------------------------------------------------


def _killed(before: OomCounters | None, after: OomCounters | None, kernel_log: str | None = None, **kw) -> Outcome:
    return Outcome(result=None, signal=signal.SIGKILL, pid=4242, stage="timing", oom_before=before,
                   oom_after=after, kernel_log=kernel_log, **kw)


CG = "/sys/fs/cgroup/x/memory.events"


def test_sigkill_with_the_cgroup_oom_count_risen_is_oom():
    row, _ = classify(_killed(OomCounters(3, 7, CG), OomCounters(4, 8, CG)), 60)
    assert row["status"] == "oom" and f"{CG} oom_kill 3 -> 4" in row["reason"] and "stage: timing" in row["reason"]


def test_sigkill_with_the_cgroup_oom_count_unchanged_is_an_error():
    # the machine's count rose (another process somewhere was the victim): the cgroup's word decides
    row, _ = classify(_killed(OomCounters(3, 7, CG), OomCounters(3, 9, CG), kernel_log=None), 60)
    assert row["status"] == "error", row
    assert "signal 9 (SIGKILL) from outside" in row["reason"] and f"{CG} oom_kill unchanged at 3" in row["reason"]


def test_without_a_cgroup_count_the_kernel_log_decides():
    line = "Out of memory: Killed process 4242 (python) total-vm:1kB"
    no_cg = OomCounters(None, 1, "")
    assert classify(_killed(no_cg, OomCounters(None, 2, ""), kernel_log=line), 60)[0] == {
        "status": "oom", "reason": f"child killed by SIGKILL (stage: timing): the kernel's out-of-memory killer "
                                   f"(kernel log: {line})"}
    row, _ = classify(_killed(no_cg, OomCounters(None, 2, ""), kernel_log=""), 60)
    assert row["status"] == "error" and "kernel log: no OOM kill of pid 4242" in row["reason"]


def test_without_cgroup_or_kernel_log_the_machine_count_decides():
    row, _ = classify(_killed(OomCounters(None, 5), OomCounters(None, 6)), 60)
    assert row["status"] == "oom" and "/proc/vmstat oom_kill 5 -> 6" in row["reason"]
    row, _ = classify(_killed(OomCounters(None, 5), OomCounters(None, 5)), 60)
    assert row["status"] == "error" and "kernel log not readable" in row["reason"]
    assert "/proc/vmstat oom_kill unchanged at 5" in row["reason"]
    row, _ = classify(_killed(None, None), 60)  # nothing read at all: no evidence
    assert row["status"] == "error" and "no out-of-memory evidence" in row["reason"]


def test_our_own_kill_stays_a_timeout_and_other_signals_crashes():
    out = _killed(OomCounters(0, 0, CG), OomCounters(1, 1, CG), timed_out=True, killed_by_us=True)
    assert classify(out, 3)[0]["status"] == "timeout"
    crash = Outcome(result=None, signal=signal.SIGSEGV, oom_before=OomCounters(0, 0, CG),
                    oom_after=OomCounters(1, 1, CG))
    assert classify(crash, 3)[0]["status"] == "error" and "SIGSEGV" in classify(crash, 3)[0]["reason"]


def test_a_signal_sent_from_outside_is_said_as_such_not_as_a_crash():
    """A Ctrl-C that reached the child only (the run ignores SIGINT) is an `error` whose reason names SIGINT and
    where it came from; a fault signal stays a crash."""
    def reason(sig: int) -> dict:
        return classify(Outcome(result=None, signal=sig, stage="timing"), 3)[0]

    assert reason(signal.SIGINT) == {"status": "error", "reason": "child killed by SIGINT (signal 2) from outside "
                                     "(stage: timing): a Ctrl-C or kill -INT that reached the child, not the run"}
    assert "child killed by SIGTERM (signal 15) from outside" in reason(signal.SIGTERM)["reason"]
    assert reason(signal.SIGSEGV)["reason"] == "child crashed with SIGSEGV (stage: timing)"
    assert reason(signal.SIGABRT)["reason"].startswith("child crashed with SIGABRT")


# -- a real OOM kill, confined to a memory cgroup of its own ----------------------------------------------------

_OOM_MODEL = '''
import torch
from torch import nn
from models.registry import register_model


@register_model("user-hog", num_classes=4, out_stride=1)
def build():
    torch.ones(3 * 2**30, dtype=torch.uint8)  # 3 GiB, every page written: past the cgroup's limit
    return nn.Conv2d(3, 4, 1)
'''

_DRIVER = '''
import json, sys
open(sys.argv[1], "w").write(str(__import__("os").getpid()))  # into the limited cgroup, before anything starts
from bench.launch.isolation import make_isolation
from bench.launch.outcome import classify
iso = make_isolation(__import__("pathlib").Path(sys.argv[2]), sys.argv[3], env={"DENSEBENCH_MODELS_FROM": sys.argv[4]})
out = iso.run(json.loads(sys.argv[5]), 120)
iso.close()
print(json.dumps({"row": classify(out, 120)[0], "signal": out.signal, "before": out.oom_before.cgroup,
                  "after": out.oom_after.cgroup}))
'''

LIMIT = 3 * 2**29  # 1.5 GiB: the worker's imports fit, the model's 3 GiB do not


def _limited_cgroup(name: str) -> Path:
    """A memory cgroup below ours with a LIMIT, or skip: needs a writable cgroup (root, or a delegated one)."""
    counter = memory_cgroup_file()
    if counter is None:
        pytest.skip("no memory cgroup counter readable here")
    sub = counter.parent / name
    try:
        sub.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here ({e.strerror})")
    try:
        if counter.name == "memory.events":
            (sub / "memory.max").write_text(str(LIMIT))
            (sub / "memory.swap.max").write_text("0")
        else:
            (sub / "memory.limit_in_bytes").write_text(str(LIMIT))
            if (sub / "memory.memsw.limit_in_bytes").exists():
                (sub / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
    except OSError as e:
        sub.rmdir()
        pytest.skip(f"cannot limit a memory cgroup here ({e.strerror})")
    return sub


@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_a_real_cgroup_oom_kill_is_oom(tmp_path, kind):
    sub = _limited_cgroup(f"densebench-test-{os.getpid()}-{kind}")
    src = tmp_path / "hog_model.py"
    src.write_text(_OOM_MODEL)
    spec = _spec(res=32)
    spec.update(model="user-hog", family="user", variant="custom", level="model")
    try:
        r = subprocess.run([sys.executable, "-c", _DRIVER, str(sub / "cgroup.procs"), str(tmp_path), kind, str(src),
                            json.dumps(spec)], cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        for _ in range(50):  # the driver and its children are gone once it returned; the kernel may lag
            try:
                sub.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["signal"] == signal.SIGKILL and got["after"] > got["before"], got
    assert got["row"]["status"] == "oom" and "oom_kill" in got["row"]["reason"], got


# -- results files: mode and durability -------------------------------------------------------------------------

_MODES = '''
import os, sys
os.umask(int(sys.argv[1], 8))
from bench.files import atomic_write_json, current_umask
atomic_write_json(sys.argv[2] + "/ours.json", {"a": 1})
open(sys.argv[2] + "/plain.json", "w").close()
mode = lambda n: oct(os.stat(sys.argv[2] + "/" + n).st_mode & 0o777)
print(mode("ours.json"), mode("plain.json"), oct(current_umask()))
'''


@pytest.mark.parametrize("umask,want", [("022", "0o644"), ("077", "0o600"), ("027", "0o640")])
def test_results_files_get_the_mode_of_a_plain_open(tmp_path, umask, want):
    r = subprocess.run([sys.executable, "-c", _MODES, umask, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    ours, plain, read = r.stdout.split()
    assert ours == plain == want and read == "0o" + umask.lstrip("0")
    assert json.loads((tmp_path / "ours.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path):
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    code = f"from bench.files import atomic_write_text; atomic_write_text({str(tmp_path / 'r.json')!r}, 'x')"
    r = subprocess.run(["strace", "-f", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", sys.executable,
                        "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "ptrace" in r.stderr:
        pytest.skip("ptrace not permitted here")
    assert r.returncode == 0, r.stderr[-2000:]
    calls = [ln.split("(")[0].split()[-1] for ln in r.stderr.splitlines() if "r.json" in ln or "sync(" in ln]
    renames = [i for i, c in enumerate(calls) if c.startswith("rename")]
    syncs = [i for i, c in enumerate(calls) if "sync" in c]
    assert len(renames) == 1, r.stderr
    assert any(i < renames[0] for i in syncs) and any(i > renames[0] for i in syncs), calls


# -- temp folders of killed runs --------------------------------------------------------------------------------

_OWNER = '''
import sys, time
from bench.launch.workdir import make_workdir
print(make_workdir(sys.argv[1], root=sys.argv[2]), flush=True)
time.sleep(600)
'''


def _owner_process(root: Path, run_id: str) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-c", _OWNER, run_id, str(root)], cwd=REPO, stdout=subprocess.PIPE,
                         text=True)
    return p, Path(p.stdout.readline().strip())


def test_sweep_removes_the_folder_of_a_dead_run_and_keeps_a_live_ones(tmp_path):
    live, live_dir = _owner_process(tmp_path, "20250101-000000")
    dead, dead_dir = _owner_process(tmp_path, "20250101-000000")
    try:
        assert live_dir.name.startswith(f"densebench-20250101-000000-{live.pid}-") and live_dir.is_dir()
        (dead_dir / "case00001.spec.json").write_text("{}")
        (dead_dir / "sub").mkdir()
        assert sweep_stale(tmp_path) == []  # both owners alive
        dead.kill()
        dead.wait()
        assert sweep_stale(tmp_path) == [dead_dir]
        assert not dead_dir.exists() and live_dir.is_dir()
    finally:
        live.kill()
        live.wait()
    mine = make_workdir("next", root=tmp_path)  # sweeps first: the now dead owner's folder goes
    assert not live_dir.exists() and mine.is_dir() and (mine.stat().st_mode & 0o777) == 0o700
    assert sweep_stale(tmp_path) == []  # ours: alive


def test_sweep_never_follows_symlinks_or_takes_foreign_folders(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dead, dead_dir = _owner_process(elsewhere, "r")
    dead.kill()
    dead.wait()
    keep = dead_dir / "precious.txt"
    keep.write_text("x")
    link = tmp_path / dead_dir.name  # the dead run's name, as a symlink in the swept folder
    link.symlink_to(dead_dir, target_is_directory=True)
    old = tmp_path / f"densebench-r-{dead.pid}-abcdefgh"  # the scheme's name but no .owner record (older code)
    old.mkdir()
    foreign = tmp_path / f"densebench-r-{dead.pid}-ijklmnop"  # made in another PID namespace
    foreign.mkdir()
    (foreign / ".owner").write_text(json.dumps({"pid": dead.pid, "pidns": "pid:[1]", "boot_id": ""}))
    other = tmp_path / "densebench-notes"
    other.mkdir()
    assert sweep_stale(tmp_path) == []
    assert link.is_symlink() and keep.read_text() == "x" and old.is_dir() and foreign.is_dir() and other.is_dir()
    assert sweep_stale(elsewhere) == [dead_dir]  # where it really is, it goes
