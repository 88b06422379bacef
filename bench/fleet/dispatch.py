"""Dispatch of a cluster run: hand each pending case to a free device of its class, stream the results back
as they finish and commit each one at once, handle lost nodes (`measure_on_cluster`).

Same contract as bench.api.measure: runs the plan's cases that have no row yet, marks the run complete (or
interrupted, and re-raises as RunInterrupted), and a killed driver loses only the cases in flight (every result
is committed when it arrives; --resume redoes the rest). One case per device at a time: the driver keeps at most
one case in flight per (node, device), and the task also holds the node's `densebench-<device>` unit and, for a
CPU case, all of the node's CPUs. A case whose node dies or disconnects mid-case is retried once on another node
of its class, else it is an `error` row "node lost: HOST (...)"; cases not yet started on a lost node wait for
a node of their class (the run then ends `interrupted`, for --resume).
"""
from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from bench.cases import Case
from bench.env import now_iso
from bench.fleet import commit
from bench.fleet.cluster import connect, import_ray
from bench.fleet.inventory import list_nodes, live_node_ids, nodes_meta
from bench.fleet.placement import DeviceClass, case_class
from bench.fleet.records import NodeInfo, Slot
from bench.fleet.remote import run_case
from bench.plan import Plan
from bench.results.lifecycle import RunInterrupted, RunState, stop_run

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


NODE_DEATH_WAIT_S = 30.0


def _pending(state: RunState, plan: Plan) -> list:
    from bench.runner import Runner

    return Runner(state, plan.cases).pending()


def _record_nodes(state: RunState, nodes, address: str) -> None:
    """meta.json `fleet`: the address and, per host, the node's record (its calibration and health kept)."""
    fleet = commit.fleet_meta(state)
    fleet["address"] = address
    fleet.setdefault("sessions", []).append({"at": now_iso(), "hosts": sorted(n.host for n in nodes)})
    known = fleet.setdefault("nodes", {})
    for host, rec in nodes_meta(nodes).items():
        known[host] = {**known.get(host, {}), **rec}


def _node_died(node_id: str, wait_s: float = NODE_DEATH_WAIT_S) -> bool:
    """Whether the cluster marks the node dead within `wait_s` (a killed node's tasks fail before its health
    checks do; a node that stays alive lost only a worker process)."""
    end = time.monotonic() + wait_s
    while node_id in live_node_ids():
        if time.monotonic() > end:
            return False
        time.sleep(0.5)
    return True


def _failed(d: Dispatch, f: Flight, e: BaseException, log: Callable[[str], None]) -> None:
    """A task that gave no result: our code failed there (an error row), or the node or worker was lost (retry
    once on another node of the class, else a 'node lost' row)."""
    ray = import_ray()
    case, slot = f.item.case, f.slot
    detail = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1][:160]}"
    wall = time.perf_counter() - f.t0
    if isinstance(e, ray.exceptions.RayTaskError):
        row = {**case.as_row(), "status": "error", "reason": f"fleet task failed on {slot.host}: {detail}"[:400],
               "run_id": d.state.run_id, "host": slot.host, "started_at": f.started_at, "wall_s": wall}
        commit.put_row(d.state, row)
        commit.save(d.state)
        log(f"{case.label()}: error on {slot.host}: {detail}")
        return
    if _node_died(slot.node_id):
        d.drop_node(slot.node_id)
        log(f"node {slot.host} lost ({detail})")
    others = [s for s in d.slots.get((case.device_type, case.device_name), []) if s.host != slot.host]
    if not f.item.retried and others:
        commit.note_retry(d.state, case, slot.host, others[0].host)
        d.queues[(case.device_type, case.device_name)].appendleft(Item(case, retried=True, avoid=slot.host))
        log(f"{case.label()}: lost on {slot.host}, retried once on another node of its class")
        return
    commit.commit_lost(d.state, case, slot.host, detail, f.started_at, wall)
    log(f"{case.label()}: error: node lost: {slot.host}")


def _loop(d: Dispatch, total: int, progress, log: Callable[[str], None]) -> None:
    from bench.runner import row_line

    ray = import_ray()
    d.fill(progress, total)
    while d.flights:
        ready, _ = ray.wait(list(d.flights), num_returns=1, timeout=WAIT_S)
        for ref in ready:
            f = d.flights.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - every Ray error is sorted out in _failed
                _failed(d, f, e, log)
            else:
                log(row_line(commit.commit_result(d.state, res, time.perf_counter() - f.t0)))
        if not ready:
            alive = live_node_ids()
            for f in [f for f in d.flights.values() if f.slot.node_id not in alive]:
                d.drop_node(f.slot.node_id)  # Ray fails its task soon; no new case goes there meanwhile
        d.fill(progress, total)


def _summarize(state: RunState) -> None:
    """meta.json per_case_overhead_s as bench.runner writes it, and fleet.ray_s_median: Ray's share per case."""
    fleet = commit.fleet_meta(state)
    over = list((fleet.get("overhead_s") or {}).values())
    if over:
        state.meta["per_case_overhead_s"] = {"median": statistics.median(over), "max": max(over), "n": len(over)}
    ray_s = list((fleet.get("ray_s") or {}).values())
    if ray_s:
        fleet["ray_s_median"] = round(statistics.median(ray_s), 4)


def measure_on_cluster(state: RunState, plan: Plan, address: str, *, hosts: Iterable[str] | None = None,
                       progress=None, log: Callable[[str], None] | None = None) -> RunState:
    """Run the plan's cases that have no row yet on the cluster at `address` ('local': this machine); marks
    the run complete, or interrupted when some cases found no live node of their class or on Ctrl-C (then
    raises RunInterrupted). Raises bench.fleet.FleetError (one line) for what the cluster cannot do."""
    log = log or (lambda s: None)
    address = connect(address)
    nodes = list_nodes(hosts)
    _record_nodes(state, nodes, address)
    todo = _pending(state, plan)
    state.meta["status"] = "running"
    state.save()
    d = Dispatch(state, plan, nodes, log)
    d.add(todo)
    t0 = time.perf_counter()
    try:
        _loop(d, len(todo), progress, log)
    except KeyboardInterrupt:
        d.cancel_all()
        state.mark("interrupted")
        state.save()
        raise RunInterrupted(state) from None
    except OSError as e:
        d.cancel_all()
        stop_run(state, e)
    _summarize(state)
    waiting = d.unplaceable()
    if waiting:
        log(f"{len(waiting)} case(s) found no live node of their class; once one is back: --resume {state.run_id}")
    state.mark("interrupted" if waiting else "complete", wall_s=time.perf_counter() - t0)
    state.save()
    return state
