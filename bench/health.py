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
spec {"kind": "health"}. The runner drives `Guard`; the analysis words the result with `noisy_sentence`.
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from bench.measure.probe import PROBE_SECONDS  # the kernel itself runs in the child: bench.measure.probe

PROBE_EVERY_S = 60.0  # of measuring between probes: drift is judged between the probes around a case

# Bounds, from the noise measured on the 2-vCPU development VM (docs/METHODOLOGY.md and the figures below):
# - 0.25 cores. The figure itself is exact to a few hundredths of a core: summing /proc/<pid>/stat over every other
#   process gave the same others' CPU within 0.04 cores on --quick cases where no process started or ended
#   meanwhile (that sum misses short-lived ones, so it reads lower when one does); two `while True: pass` added
#   0.9-1.1 cores to it (0.6-0.8 -> 1.5-1.75 on a machine already shared). A quarter core taken from a 2-core
#   machine is ~12% of the CPU a 2-thread case can have, above the ~7% that separate processes of one case differ by.
OTHERS_CORES_MAX = 0.25
# - 5% steal: the hypervisor's steal counter stayed at 0-2% per 5-s window on this VM class even while its speed
#   moved by +-13% (and at 0-1.2% per case in the runs above); above 5% the vCPUs are being descheduled.
STEAL_MAX = 0.05
# - 30% between the probes around a case: a quiet VM's own speed ranges ~29% (max/min of 5-s windows over 100 s,
#   METHODOLOGY) and 30 consecutive 0.25-s probes 1 s apart differed by up to 22% (median 3%), with or without a
#   CPU hog (the probe's median does not see contention); a tighter bound would flag quiet runs.
DRIFT_MAX = 0.30
# Waiting for a quiet machine (--wait-quiet): the others' CPU is read over a window with no child running; a
# process flagged busy is measured again after a wait at most MAX_REMEASURE times.
QUIET_WINDOW_S = 2.0
MAX_REMEASURE = 2


@dataclass(frozen=True)
class Bounds:
    """Above any of these a case is `noisy` (see the constants for why each value)."""

    others_cores: float = OTHERS_CORES_MAX
    steal_frac: float = STEAL_MAX
    drift: float = DRIFT_MAX


BOUNDS = Bounds()


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


@dataclass
class ProcessHealth:
    """What the machine did while one process of a case ran; stored in meta.json["health"]["cases"]."""

    repeat: int
    wall_s: float
    others_cores: float | None  # None when the child's own CPU time is unknown
    steal_frac: float
    load_avg: float
    probe_before: int | None  # indices into the run's probe series
    probe_after: int | None = None


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


def busy_reason(h: ProcessHealth, bounds: Bounds | None = None) -> str:
    """What made a process busy, known as soon as it ends (other processes' CPU, steal); "" when neither bound
    was passed. Drift needs the next probe and is judged later (judge)."""
    b = bounds or BOUNDS
    why = []
    if h.others_cores is not None and h.others_cores > b.others_cores:
        why.append(f"other processes used {h.others_cores:.2f} cores (bound {b.others_cores:g})")
    if h.steal_frac > b.steal_frac:
        why.append(f"steal {100 * h.steal_frac:.0f}% (bound {100 * b.steal_frac:g}%)")
    return "; ".join(why)


def drift(a: float | None, b: float | None) -> float | None:
    """max/min - 1 of two probe rates (None when either is missing)."""
    if not a or not b:
        return None
    return max(a, b) / min(a, b) - 1.0


def _rate(probes: Sequence[Mapping[str, Any]], i: int | None) -> float | None:
    return probes[i].get("gmacs_per_s") if i is not None and 0 <= i < len(probes) else None


def judge(h: ProcessHealth, probes: Sequence[Mapping[str, Any]], bounds: Bounds = BOUNDS) -> tuple[list[str], str]:
    """(violated bounds, reason): the reason names the violated figures with their bounds first, then the other
    figures of the process; "" when every bound holds."""
    a, b = _rate(probes, h.probe_before), _rate(probes, h.probe_after)
    d = drift(a, b)
    checks = [("steal", h.steal_frac > bounds.steal_frac, f"steal {100 * h.steal_frac:.0f}%", "",
               f"{100 * bounds.steal_frac:g}%")]
    if h.others_cores is not None:
        checks.insert(0, ("others", h.others_cores > bounds.others_cores,
                          f"other processes used {max(0.0, h.others_cores):.2f} cores during the case", "",
                          f"{bounds.others_cores:g} cores"))
    if d is not None:
        checks.append(("drift", d > bounds.drift, f"speed probe drifted {100 * d:.0f}% around the case",
                       f"{a:.1f} -> {b:.1f} GMAC/s", f"{100 * bounds.drift:g}%"))
    bad = [c for c in checks if c[1]]
    if not bad:
        return [], ""
    parts = []
    for _, over, text, detail, bound in bad + [c for c in checks if not c[1]]:
        notes = [x for x in (detail, f"bound {bound}" if over else "") if x]
        parts.append(text + (f" ({'; '.join(notes)})" if notes else ""))
    return [c[0] for c in bad], "; ".join([*parts, f"load average {h.load_avg:.1f}"])


def verdict(records: Sequence[Mapping[str, Any]], probes: Sequence[Mapping[str, Any]], repeats: int = 1,
            bounds: Bounds = BOUNDS) -> tuple[bool, str]:
    """(noisy, noisy_reason) of a row from its processes' records: noisy when any process was."""
    reasons = []
    for r in records:
        _, why = judge(ProcessHealth(**r), probes, bounds)
        if why:
            reasons.append(f"process {int(r['repeat']) + 1} of {repeats}: {why}" if repeats > 1 else why)
    return bool(reasons), " | ".join(reasons)


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


def summarize(cases: Mapping[str, Sequence[Mapping[str, Any]]], probes: Sequence[Mapping[str, Any]],
              bounds: Bounds = BOUNDS) -> dict:
    """Counts and worst figures over every recorded process (see Guard.summarize)."""
    causes: dict[str, int] = {}
    noisy = 0
    for recs in cases.values():
        kinds = {k for r in recs for k in judge(ProcessHealth(**r), probes, bounds)[0]}
        noisy += bool(kinds)
        for k in kinds:
            causes[k] = causes.get(k, 0) + 1
    recs = [r for rs in cases.values() for r in rs]
    others = [r["others_cores"] for r in recs if r.get("others_cores") is not None]
    rates = [p["gmacs_per_s"] for p in probes if p.get("gmacs_per_s")]
    steps = [drift(x, y) for x, y in zip(rates, rates[1:])]
    return {"cases": len(cases), "noisy": noisy, "causes": causes,
            "others_cores_max": round(max(others), 3) if others else None,
            "steal_frac_max": round(max(r["steal_frac"] for r in recs), 4) if recs else None,
            "load_avg_max": round(max(r["load_avg"] for r in recs), 2) if recs else None,
            "probe_gmacs_min": round(min(rates), 2) if rates else None,
            "probe_gmacs_max": round(max(rates), 2) if rates else None,
            "drift": round(max(rates) / min(rates) - 1, 4) if rates else None,
            "drift_step_max": round(max(steps), 4) if steps else None}


def noisy_sentence(n_noisy: int, n_cases: int, summary: Mapping[str, Any] | None = None) -> str:
    """The one sentence a reader must see when any case is noisy ("" when none is), from the counts of the results
    table and the figures of meta["health"]["summary"] (when the run has one)."""
    if n_noisy <= 0:
        return ""
    s = summary or {}
    causes = s.get("causes") or {}
    busy = bool(causes.get("others") or causes.get("steal")) or not causes
    figs = []
    if s.get("others_cores_max") is not None:
        figs.append(f"other processes used up to {max(0.0, s['others_cores_max']):.1f} cores")
    if causes.get("steal"):
        figs.append(f"steal up to {100 * s['steal_frac_max']:.0f}%")
    if s.get("drift") is not None:
        figs.append(f"speed probe drifted {100 * s['drift']:.0f}%")
    where = "a busy machine" if busy else "a drifting machine"
    return (f"{n_noisy} of {n_cases} cases were measured on {where}" + (f" ({'; '.join(figs)})" if figs else "")
            + ": their figures are not comparable; see noisy_reason")
