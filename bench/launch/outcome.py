"""A child's end -> the row's status: its own row (ok / oom / error / unsupported), `timeout` (killed after the
case's timeout), `oom` for a SIGKILL we did not send (the kernel's OOM killer), `error` for any other crash."""
from __future__ import annotations

import signal

from bench.launch.isolation import Outcome


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

