"""The worker process: a fork server (default) or one case per interpreter; both end in
`bench.measure.child.run_case_file`, with the test-only fault injection (bench.launch.faults) as its hook.

- fork server: `python -m bench.launch.worker --serve` imports torch, the models (users' model files from
  DENSEBENCH_MODELS_FROM included) and the measuring modules ONCE (`preload`), then forks a fresh child per case
  on request. The server itself never runs a tensor op, so no thread pool or CUDA context is inherited: each case
  starts clean, and its overhead is the fork plus the model build (well under a second) instead of a torch import
  (several seconds on a busy machine).
- spawn (`DENSEBENCH_ISOLATION=spawn`, or where fork is missing): `python -m bench.launch.worker --case SPEC
  --result OUT`, a fresh interpreter per case.

Protocol of the server (one JSON object per line): the parent sends {"spec": path, "result": path, "stderr": path};
the server answers {"pid": N} when the child is forked and {"pid": N, "exit": code, "signal": sig, "maxrss_kb": k,
"cpu_s": user + system CPU seconds of the child (bench.health subtracts them from the machine's)} when it has
ended. The parent enforces the timeout by killing the pid. The child writes `result` atomically (a JSON object
{"row": {...}, "samples": [...]}) and a `result + ".stage"` file naming the step it is in, so that a timeout or a
crash can say where it happened.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import TextIO

from bench.child_args import flag_values
from bench.launch.childenv import set_pdeathsig
from bench.launch.faults import inject_after_build
from bench.measure.child import run_case_file

USAGE = "usage: python -m bench.launch.worker (--serve | --case SPEC_JSON --result OUT_JSON)"


def preload() -> list[str]:
    """Import everything a case needs, users' model files included (their builders register in every child);
    no tensor op: the server must stay fork-safe. Returns the user model sources loaded. (The measuring modules
    that import nothing heavy came with bench.measure.child.)"""
    import torch  # noqa: F401

    import bench.backends  # noqa: F401
    import bench.measure.energy  # noqa: F401
    import bench.measure.numerics  # noqa: F401
    import bench.measure.timer  # noqa: F401
    import bench.results.repeats  # noqa: F401
    import models  # noqa: F401
    import models.complexity  # noqa: F401
    from models.user import load_from_env

    return load_from_env()


def _preload_or_say_why() -> bool:
    """preload(); a bad DENSEBENCH_MODELS_FROM source becomes its one-line message on stderr (the parent shows
    the last stderr line) instead of a traceback."""
    from models.user import ModelSourceError

    try:
        preload()
    except ModelSourceError as e:
        print(f"densebench worker: {e}", file=sys.stderr, flush=True)
        return False
    except BaseException as e:  # noqa: BLE001 - a user's file that calls sys.exit() at import, say
        print(f"densebench worker: importing the model sources raised {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)
        return False
    return True


def _protocol_channel() -> TextIO:
    """The server's answers go to a duplicate of its stdout; fd 1 and sys.stdout become stderr, so that a
    user's model file that prints at import (or a library that does) never corrupts the protocol."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _child(msg: dict) -> None:
    """In the forked child: fresh signal handlers, own stdio, run, exit without running the server's cleanup."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        set_pdeathsig()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        err = os.open(msg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if msg.get("stderr") else 2
        os.dup2(err, 2)
        os.dup2(err, 1)  # a stray print must not corrupt the protocol on the server's stdout
        sys.stdout = sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        code = run_case_file(msg["spec"], msg["result"], after_build=inject_after_build)
    except BaseException:  # noqa: BLE001
        try:
            traceback.print_exc()
        except Exception:
            pass
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def _cuda_touched() -> bool:
    """Whether the CUDA driver library is loaded in this process (then forked children must not use CUDA)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libcuda.so" in line for line in f)
    except OSError:
        return False


def serve() -> int:
    set_pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C goes to the whole group
    out = _protocol_channel()
    if not _preload_or_say_why():
        return 2
    out.write(json.dumps({"ready": True, "pid": os.getpid(), "cuda_touched": _cuda_touched()}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("quit"):
            break
        pid = os.fork()
        if pid == 0:
            _child(msg)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status, ru = os.wait4(pid, 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -sig
        out.write(json.dumps({"pid": pid, "exit": code, "signal": sig, "maxrss_kb": ru.ru_maxrss,
                              "cpu_s": ru.ru_utime + ru.ru_stime}) + "\n")
        out.flush()
    return 0


def parse_args(argv: list[str]) -> tuple[str, str] | None | str:
    """None for `--serve`, (spec, result) for `--case SPEC --result OUT` (either order, `--flag=VALUE` too), or
    what is wrong with argv. The launcher (bench.launch.isolation) writes only these two forms."""
    if "--serve" in argv:  # as argparse had it: --serve wins over whatever else is given
        return None
    got = flag_values(argv, ("--case", "--result"))
    if isinstance(got, str):
        return got
    if not (got.get("--case") and got.get("--result")):
        return "need --serve, or --case and --result"
    return got["--case"], got["--result"]


def main(argv: list[str] | None = None) -> int:
    """The fork server or one case; a usage line and exit status 2 for arguments of another form."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args is None:
        return serve()
    if isinstance(args, str):
        print(f"{USAGE}\npython -m bench.launch.worker: error: {args}", file=sys.stderr)
        return 2
    set_pdeathsig()
    if not _preload_or_say_why():
        return 2
    return run_case_file(args[0], args[1], after_build=inject_after_build)


if __name__ == "__main__":
    raise SystemExit(main())
