"""Machine health while a run measures: was the machine busy or drifting when a case was timed?

Why: on a shared VM a loaded machine silently halves the numbers (a run beside a CPU hog reported block:msla at
60 ms instead of 5 ms with no warning). Two independent signals, each judged against a bound:

- Other processes' CPU during a case: system-wide busy CPU seconds (/proc/stat via psutil: user + nice + system
  + irq + softirq + steal) minus the case's own child (rusage from wait4) minus this parent, over the case's wall
  time, in cores. Also the hypervisor's steal fraction and the 1-minute load average (recorded, not bounded).
- A speed probe: a fixed single-thread 256x256 fp32 matmul timed call by call for PROBE_SECONDS in a child (the
  parent runs no tensor op), at the start, between passes, every PROBE_EVERY_S of measuring and at the end. Its
  calls (~0.4 ms) are shorter than a scheduler slice, so their median tracks the core's speed, not its share:
  contention is the CPU figure's job, drift (slower cores, shared caches, clocks) the probe's.

Standard library and psutil; the probe's kernel is bench.measure.probe's `probe_kernel`, which the child runs for a
spec {"kind": "health"}. The runner drives `Guard`, which takes the marks and runs the probes; the bounds and the
figures over what it recorded (judge, verdict, summarize, noisy_sentence) are bench.results.noise's, a record the
analysis reads without importing the runner's side.
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from bench.measure.probe import PROBE_SECONDS  # the kernel itself runs in the child: bench.measure.probe
from bench.results.noise import BOUNDS, Bounds, ProcessHealth, busy_reason, drift, summarize, verdict

PROBE_EVERY_S = 60.0  # of measuring between probes: drift is judged between the probes around a case

# Waiting for a quiet machine (--wait-quiet): the others' CPU is read over a window with no child running; a
# process flagged busy is measured again after a wait at most MAX_REMEASURE times.
QUIET_WINDOW_S = 2.0
MAX_REMEASURE = 2


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds at one instant, system-wide and this process's own: two marks around a case."""

    wall: float
    busy_s: float
    steal_s: float
    self_s: float


def cpu_mark() -> CpuMark:
    import psutil

    t = psutil.cpu_times()
    busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return CpuMark(time.perf_counter(), busy, getattr(t, "steal", 0.0), ru.ru_utime + ru.ru_stime)


def process_health(before: CpuMark, after: CpuMark, child_cpu_s: float | None, cores: int, repeat: int,
                   probe_before: int | None) -> ProcessHealth:
    """The figures of one process from the marks around it and its own CPU seconds (rusage)."""
    wall = max(after.wall - before.wall, 1e-6)
    others = None
    if child_cpu_s is not None:
        others = ((after.busy_s - before.busy_s) - child_cpu_s - (after.self_s - before.self_s)) / wall
    steal = max(0.0, after.steal_s - before.steal_s) / (wall * max(1, cores))
    return ProcessHealth(repeat=repeat, wall_s=round(wall, 3), others_cores=None if others is None else
                         round(others, 3), steal_frac=round(steal, 4), load_avg=round(os.getloadavg()[0], 2),
                         probe_before=probe_before)


class Guard:
    """The health of a run: its probe series, one record per process, the verdict of each row. Its state lives in
    `meta["health"]`, so a resumed run keeps what earlier sessions found. `probe()` runs the kernel in a child and
    returns its result (or {"error": ...}): the guard itself starts no process."""

    def __init__(self, meta: dict, probe: Callable[[], dict], *, cores: int | None = None,
                 bounds: Bounds = BOUNDS, every_s: float = PROBE_EVERY_S):
        self.probe, self.bounds, self.every_s = probe, bounds, every_s
        self.cores = cores or os.cpu_count() or 1
        self.h = meta.setdefault("health", {})
        self.h.update(bounds=asdict(bounds), cores=self.cores, probe_every_s=every_s)
        self.probes: list[dict] = self.h.setdefault("probes", [])
        self.cases: dict[str, list[dict]] = self.h.setdefault("cases", {})
        self._pending: list[tuple[str, int]] = []  # records of this session waiting for their next probe
        self._t0 = time.perf_counter()
        self._last: float | None = None  # when this session last probed
        self._pass: int | None = None

    @property
    def probed(self) -> bool:
        return self._last is not None

    def due(self, rep: int) -> str | None:
        """Why a probe is due before a process of pass `rep` (None: not due)."""
        if self._last is None:
            return "start"
        if rep != self._pass:
            return f"before pass {rep + 1}"
        return "interval" if time.perf_counter() - self._last >= self.every_s else None

    def run_probe(self, when: str, rep: int | None = None) -> set[str]:
        """Probe now; returns the cases whose open records it closes (their drift is known from now on)."""
        res = self.probe() or {}
        self.probes.append({"when": when, "at_s": round(time.perf_counter() - self._t0, 2),
                            "gmacs_per_s": res.get("gmacs_per_s"), "n": res.get("n"), "error": res.get("error")})
        self._last = time.perf_counter()
        self._pass = self._pass if rep is None else rep
        for cid, i in self._pending:
            self.cases[cid][i]["probe_after"] = len(self.probes) - 1
        closed = {cid for cid, _ in self._pending}
        self._pending.clear()
        return closed

    def record(self, case_id: str, rep: int, before: CpuMark, after: CpuMark, child_cpu_s: float | None) -> None:
        """One process of a case ended: its figures, open until the next probe gives its drift."""
        last = len(self.probes) - 1 if self.probes else None
        recs = self.cases.setdefault(case_id, [])
        recs.append(asdict(process_health(before, after, child_cpu_s, self.cores, rep, last)))
        self._pending.append((case_id, len(recs) - 1))

    def forget(self, case_ids) -> None:
        """Drop the records of these cases (measured again from scratch)."""
        ids = set(case_ids)
        for cid in ids:
            self.cases.pop(cid, None)
        self._pending = [(c, i) for c, i in self._pending if c not in ids]

    def busy(self, before: CpuMark, after: CpuMark, child_cpu_s: float | None) -> str:
        """busy_reason of a process that just ended ("" when it was measured on a quiet machine)."""
        return busy_reason(process_health(before, after, child_cpu_s, self.cores, 0, None), self.bounds)

    def quiet_reason(self, window_s: float = QUIET_WINDOW_S) -> str:
        """Why the machine is not quiet now ("" when it is): other processes' CPU and steal over `window_s` with
        no child running, then the speed probe against the median of the run's probes (drift bound)."""
        m0 = cpu_mark()
        time.sleep(window_s)
        why = self.busy(m0, cpu_mark(), 0.0)
        if why:
            return why
        rates = [p["gmacs_per_s"] for p in self.probes if p.get("gmacs_per_s")]
        self.run_probe("quiet check")
        now = self.probes[-1].get("gmacs_per_s")
        d = drift(now, statistics.median(rates)) if rates and now else None
        if d is not None and d > self.bounds.drift:
            return f"speed probe {now:.1f} GMAC/s is {100 * d:.0f}% off the run's median (bound " \
                   f"{100 * self.bounds.drift:g}%)"
        return ""

    def wait_quiet(self, limit_s: float, why: str, say: Callable[[str], None]) -> bool:
        """Wait (up to limit_s) until quiet_reason() is ""; True when the machine became quiet. Every wait is
        recorded in meta["health"]["waits"] (when, why, how long, the outcome)."""
        t0 = time.perf_counter()
        waited, quiet = 0.0, False
        say(f"waiting for a quiet machine: {why} (up to {limit_s:g} s, --wait-quiet)")
        last_say = t0
        while waited < limit_s:
            reason = self.quiet_reason(min(QUIET_WINDOW_S, max(0.2, limit_s - waited)))
            waited = time.perf_counter() - t0
            if not reason:
                quiet = True
                break
            if time.perf_counter() - last_say >= 10.0:
                say(f"waiting for a quiet machine: {reason} ({waited:.0f} of {limit_s:g} s)")
                last_say = time.perf_counter()
        self.h.setdefault("waits", []).append({"at_s": round(t0 - self._t0, 2), "why": why,
                                               "waited_s": round(waited, 2), "quiet": quiet})
        self.h["waited_s"] = round(float(self.h.get("waited_s") or 0.0) + waited, 2)
        say(f"machine quiet after {waited:.0f} s: measuring again" if quiet else
            f"machine still busy after {waited:.0f} s: measuring on; rows measured now will be marked noisy")
        return quiet

    def verdict(self, case_id: str, repeats: int = 1) -> tuple[bool, str]:
        return verdict(self.cases.get(case_id, []), self.probes, repeats, self.bounds)

    def summarize(self) -> dict:
        """meta["health"]["summary"]: cases measured and flagged (by cause), the worst figures, the probe drift."""
        self.h["summary"] = summarize(self.cases, self.probes, self.bounds)
        return self.h["summary"]
