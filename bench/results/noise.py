"""Was a row measured on a noisy machine? The bounds and the figures over what a run recorded of its machine.

Pure functions of meta.json["health"] (each process's figures and the probe series), so that the runner's guard
(bench.health) judges a row as it is measured and the analysis words a finished run (`noisy_sentence`) from the
same rules, without importing the runner. Why each bound has its value is said beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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

@dataclass(frozen=True)
class Bounds:
    """Above any of these a case is `noisy` (see the constants for why each value)."""

    others_cores: float = OTHERS_CORES_MAX
    steal_frac: float = STEAL_MAX
    drift: float = DRIFT_MAX


BOUNDS = Bounds()


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


def summarize(cases: Mapping[str, Sequence[Mapping[str, Any]]], probes: Sequence[Mapping[str, Any]],
              bounds: Bounds = BOUNDS) -> dict:
    """Counts and worst figures over every recorded process (meta["health"]["summary"], bench.health.Guard)."""
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
