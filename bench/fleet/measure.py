"""`measure_on_cluster`: bench.api.measure's contract, with the cases measured on a Ray cluster (bench.fleet)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable

from bench.fleet import commit
from bench.fleet.cluster import connect, import_ray
from bench.fleet.driver import WAIT_S, Dispatch, Flight, Item
from bench.fleet.inventory import list_nodes, live_node_ids, nodes_meta
from bench.plan import Plan
from bench.results.lifecycle import RunState

NODE_DEATH_WAIT_S = 30.0


def _pending(state: RunState, plan: Plan) -> list:
    from bench.runner import Runner

    return Runner(state, plan.cases).pending()


def _record_nodes(state: RunState, nodes, address: str) -> None:
    """meta.json `fleet`: the address and, per host, the node's record (its calibration and health kept)."""
    from bench.env import now_iso

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
    raises bench.api.RunInterrupted). Raises bench.fleet.FleetError (one line) for what the cluster cannot do."""
    from bench import api

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
        raise api.RunInterrupted(state) from None
    except OSError as e:
        d.cancel_all()
        api._stop(state, e)
    _summarize(state)
    waiting = d.unplaceable()
    if waiting:
        log(f"{len(waiting)} case(s) found no live node of their class; once one is back: --resume {state.run_id}")
    state.mark("interrupted" if waiting else "complete", wall_s=time.perf_counter() - t0)
    state.save()
    return state
