"""The driver of a cluster run: hand each pending case to a free device of its class, stream the results back
as they finish and commit each one at once, handle lost nodes.

Same contract as bench.api.measure: runs the plan's cases that have no row yet, marks the run complete (or
interrupted, and re-raises as RunInterrupted), and a killed driver loses only the cases in flight (every result
is committed when it arrives; --resume redoes the rest). One case per device at a time: the driver keeps at most
one case in flight per (node, device), and the task also holds the node's `densebench-<device>` unit and, for a
CPU case, all of the node's CPUs. A case whose node dies or disconnects mid-case is retried once on another node
of its class, else it is an `error` row "node lost: HOST (...)"; cases not yet started on a lost node wait for
a node of their class (the run then ends `interrupted`, for --resume).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.cases import Case
from bench.env import now_iso
from bench.fleet import commit
from bench.fleet.cluster import import_ray
from bench.fleet.plan import DeviceClass, case_class
from bench.fleet.records import NodeInfo, Slot
from bench.plan import Plan
from bench.results.lifecycle import RunState

WAIT_S = 2.0  # the longest ray.wait, so that Ctrl-C and dead nodes are seen promptly


@dataclass
class Item:
    case: Case
    retried: bool = False
    avoid: str | None = None  # the host a retried case was lost on


@dataclass
class Flight:
    item: Item
    slot: Slot
    t0: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=now_iso)


def _slots(nodes: list[NodeInfo]) -> dict[DeviceClass, list[Slot]]:
    out: dict[DeviceClass, list[Slot]] = {}
    for n in nodes:
        for d in n.devices:
            out.setdefault(n.device_class(d), []).append(Slot(n.node_id, n.host, d, n.cpus))
    return out


def _group(case: Case) -> str:
    """The cases compared with each other (the mixers of one resolution and setting): one slot measures all of
    a group, so that their ratios never cross two hosts of a class."""
    return case.case_id.split("|", 1)[1]


class Dispatch:
    """The queues per device class, the case in flight per slot, and the Ray calls."""

    def __init__(self, state: RunState, plan: Plan, nodes: list[NodeInfo], log: Callable[[str], None]):
        from bench.fleet.remote import run_case

        self.ray = import_ray()
        self.state, self.plan, self.log = state, plan, log
        self.slots = _slots(nodes)
        self.queues: dict[DeviceClass, deque[Item]] = {}
        self.flights: dict[Any, Flight] = {}
        self.task = self.ray.remote(max_retries=0)(run_case)
        self.sent = 0
        self.owner: dict[str, str] = {}  # pair group -> the slot that measures it (see _group)

    def add(self, cases: list[Case]) -> None:
        for c in cases:
            self.queues.setdefault(case_class(c), deque()).append(Item(c))

    def _busy(self) -> set[str]:
        return {f.slot.key for f in self.flights.values()}

    def fill(self, progress: Callable[..., None] | None, total: int) -> None:
        """Start the next case of its class on every free slot: a retried case only off the host it was lost on, a
        case of a group another live slot has begun only there."""
        busy = self._busy()
        for cls, slots in self.slots.items():
            q = self.queues.get(cls)
            for slot in slots:
                if not q or slot.key in busy:
                    continue
                item = next((it for it in q if it.avoid != slot.host and
                             self.owner.get(_group(it.case), slot.key) == slot.key), None)
                if item is None:
                    continue
                q.remove(item)
                self.owner[_group(item.case)] = slot.key
                self._submit(item, slot)
                busy.add(slot.key)
                if progress:
                    progress(item.case, self.sent - 1, total)

    def _submit(self, item: Item, slot: Slot) -> None:
        from dataclasses import replace

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        case = replace(item.case, device=slot.device)  # the class's device on this node (cuda:1 elsewhere)
        cfg = self.plan.config
        ctx = {"run_id": self.state.run_id, "host": slot.host, "calibrate": bool(cfg.get("calibrate", True)),
               "profile": bool(cfg.get("profile")), "models_from": cfg.get("models_from") or [],
               "calibration": commit.host_calibration(self.state, slot.host)}
        cpus = slot.cpus if case.device_type == "cpu" else min(1.0, slot.cpus)
        ref = self.task.options(num_cpus=cpus, resources={f"densebench-{slot.device}": 1},
                                scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False)
                                ).remote(case.to_spec(), ctx)
        self.flights[ref] = Flight(Item(case, item.retried, item.avoid), slot)
        self.sent += 1

    def drop_node(self, node_id: str) -> None:
        gone = {s.key for slots in self.slots.values() for s in slots if s.node_id == node_id}
        self.owner = {g: k for g, k in self.owner.items() if k not in gone}
        for cls in self.slots:
            self.slots[cls] = [s for s in self.slots[cls] if s.node_id != node_id]

    def unplaceable(self) -> list[Case]:
        """The cases still queued once nothing is in flight: no live node of their class could take them (a
        retried case is not given back to the host it was lost on); they wait for --resume."""
        return [it.case for q in self.queues.values() for it in q]

    def cancel_all(self) -> None:
        for ref in list(self.flights):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort: the run is being interrupted
                pass
        self.flights.clear()
