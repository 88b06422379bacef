"""Which cases form interleaved groups, what one process of a group costs, and how the run's budget is split.

A group is the cases of one decision (bench.cases.group_key: level, model size, resolution, device setting) that
can share a process: two or more of them, on a backend that leaves the process to its caller (eager, compile,
onnxruntime; TensorRT engines and CUDA graphs own the device state and stay isolated). The budget (`--budget`, the
seconds of measuring the whole run may spend on its groups) is spent in rounds, one process of every open group
per round (bench.groups.schedule), so its planned split is in proportion to each group's cost of one process;
time a group leaves unspent when it resolves early goes to the groups still open. A 2 s forward at 2048 therefore
gets the time it needs, and a 5 ms block that resolves after three processes gives the rest back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from bench.cases import Case, group_key

SHARED_BACKENDS = ("eager", "compile", "onnxruntime")
DESIGNS = ("interleaved", "isolated")
PROCESS_TIME_S = 1.5  # cycles per process run at least this long (and at least 2 cycles, 1 for very long ones)
QUICK_PROCESS_TIME_S = 0.3  # --quick: a smoke run, not a measurement to quote
DEFAULT_BUDGET_S = 480.0  # the default matrix (24 cases, 6 groups) within 10 minutes on a 2-vCPU VM
PROCESS_OVERHEAD_S = 0.4  # fork, imports left, result file (measured: per_case_overhead_s of an isolated run)
WARM_CALLS = 3  # first call + the timer's two warm-up calls, per side


@dataclass(frozen=True)
class GroupPlan:
    """One group of a run: its id, its cases (sides, in matrix order), one process's estimated seconds, its share."""

    group_id: str
    cases: tuple[Case, ...]
    process_s: float
    share_s: float = 0.0


def shareable(case: Case) -> bool:
    """Whether a case can share a process with the other sides of its group."""
    return case.backend in SHARED_BACKENDS


def form_groups(cases: Iterable[Case]) -> tuple[list[list[Case]], list[Case]]:
    """(groups of two or more shareable cases with one group_key, in matrix order; the cases left isolated)."""
    by: dict[str, list[Case]] = {}
    alone: list[Case] = []
    for c in cases:
        if shareable(c):
            by.setdefault(group_key(c.as_row()), []).append(c)
        else:
            alone.append(c)
    groups = [g for g in by.values() if len(g) >= 2]
    alone += [c for g in by.values() if len(g) < 2 for c in g]
    return groups, alone


def call_s(macs: float | None, rate_gmacs: float | None) -> float:
    """One call's seconds guessed from its MACs at 30% of the device's rate (the runner's ETA rule)."""
    return (macs or 1e9) / (0.3 * (rate_gmacs or 10.0) * 1e9)


def process_s(calls: Sequence[float], process_time_s: float = PROCESS_TIME_S) -> float:
    """One group process with sides of these call times: start, warm-up of each side, then cycles (each side twice
    a cycle) for the process time, at least 2 cycles (1 when one cycle outlasts the process time)."""
    cycle = 2 * sum(calls)
    cycles = max(process_time_s, cycle if cycle >= process_time_s else 2 * cycle)
    return PROCESS_OVERHEAD_S + 0.15 * len(calls) + WARM_CALLS * sum(calls) + cycles


def plan_groups(groups: Sequence[Sequence[Case]], budget_s: float,
                call_of: Callable[[Case], float]) -> list[GroupPlan]:
    """Each group with its estimated process seconds and its share of the budget (proportional to that cost)."""
    costs = [process_s([call_of(c) for c in g]) for g in groups]
    total = sum(costs) or 1.0
    return [GroupPlan(group_key(g[0].as_row()), tuple(g), cost, budget_s * cost / total)
            for g, cost in zip(groups, costs)]


def describe(plans: Sequence[GroupPlan], budget_s: float) -> list[str]:
    """--list's lines about the budget: the whole and each group's share (by the estimated cost of a process)."""
    lines = [f"budget {budget_s:g} s of measuring for {len(plans)} interleaved group(s), spent in rounds of one "
             "process per open group (planned split below, by the estimated cost of a process); a group that "
             "resolves early leaves the rest to the open ones"]
    lines += [f"  {p.group_id}: {len(p.cases)} sides, share ~{p.share_s:.0f} s" for p in plans]
    return lines
