"""Which nodes the cluster has, and which benchmark devices each offers (placement reads this).

A node offers device D when it advertises the custom resource `densebench-D` (run_bench.py node sets one unit
per device). Device names are read on the node itself by a probe task (declared by hand with
DENSEBENCH_DEVICE_NAMES where NVML cannot see the GPU, as on Jetson), with the node's environment for per-host
metadata; the host is the node's `densebench-host` label (its hostname when unlabelled).
"""
from __future__ import annotations

import time
from typing import Iterable

from bench.env import device_name, environment, physical_cores, usable_cpus
from bench.fleet.cluster import FleetError, import_ray
from bench.fleet.hygiene import declared_names, restore_env
from bench.fleet.records import HOST_LABEL, RESOURCE_PREFIX, NodeInfo

PROBE_TIMEOUT_S = 180.0  # a node's first worker imports the suite (and torch for the environment record)
_SEEN: dict[tuple[str, ...], list[NodeInfo]] = {}  # node ids -> their probes (a node that restarts gets a new id)


def _probe(host: str, devices: list[str]) -> dict:
    """On the node: device names (declared or read), cores and the environment record."""
    fixed = restore_env()
    declared = declared_names()
    env = environment([])
    env["host"] = host
    env["ray_env_fixed"] = fixed
    return {"devices": {d: declared.get(d) or device_name(d) for d in devices},
            "physical_cores": physical_cores(), "usable_cpus": usable_cpus(), "env": env}


def _live_nodes() -> list[dict]:
    ray = import_ray()
    return [n for n in ray.nodes() if n.get("Alive") and _devices_of(n)]


def _devices_of(node: dict) -> list[str]:
    res = node.get("Resources") or {}
    return sorted(k[len(RESOURCE_PREFIX):] for k in res if k.startswith(RESOURCE_PREFIX))


def _host_of(node: dict) -> str:
    labels = node.get("Labels") or {}
    return str(labels.get(HOST_LABEL) or node.get("NodeManagerHostname") or node["NodeID"][:12])


def live_node_ids() -> set[str]:
    """The ids of the nodes alive now (the driver checks this when a case fails)."""
    ray = import_ray()
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def list_nodes(hosts: Iterable[str] | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeInfo]:
    """The live nodes with benchmark devices (only `hosts` if given), probed in parallel. Raises FleetError when
    none is left or a probe does not answer."""
    ray = import_ray()
    nodes = _live_nodes()
    wanted = set(hosts) if hosts else None
    if wanted is not None:
        known = {_host_of(n) for n in nodes}
        unknown = sorted(wanted - known)
        if unknown:
            raise FleetError(f"--hosts: {', '.join(unknown)} not in the cluster; accepted: "
                             f"{', '.join(sorted(known)) or 'none (no node advertises densebench devices)'}")
        nodes = [n for n in nodes if _host_of(n) in wanted]
    if not nodes:
        raise FleetError("the cluster has no node with benchmark devices (densebench-* resources); accepted: "
                         "nodes started with run_bench.py node")
    key = tuple(sorted(n["NodeID"] for n in nodes))
    if key in _SEEN:  # the same live nodes as a moment ago (plan, then measure): their probes still hold
        return _SEEN[key]
    _SEEN[key] = _probe_all(ray, nodes, timeout_s)
    return _SEEN[key]


def _probe_all(ray, nodes: list[dict], timeout_s: float) -> list[NodeInfo]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(_host_of(n), _devices_of(n)) for n in nodes}
    t0 = time.monotonic()
    out = []
    for n in nodes:
        try:
            got = ray.get(refs[n["NodeID"]], timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
        except Exception as e:  # noqa: BLE001 - GetTimeoutError, a dead node, a broken install there
            raise FleetError(f"node {_host_of(n)} did not answer its probe ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[-1][:160]}); accepted: nodes with this suite "
                             "installed at the same revision") from None
        out.append(NodeInfo(node_id=n["NodeID"], host=_host_of(n), cpus=float((n["Resources"] or {}).get("CPU", 0)),
                            devices=got["devices"], physical_cores=int(got["physical_cores"]),
                            usable_cpus=int(got["usable_cpus"]), env=got["env"]))
    return sorted(out, key=lambda i: i.host)


def nodes_meta(nodes: Iterable[NodeInfo]) -> dict[str, dict]:
    """meta.json `fleet.nodes`: per host, its node, devices, cores and environment."""
    return {n.host: {"node_id": n.node_id, "devices": n.devices, "cpus": n.cpus, "physical_cores": n.physical_cores,
                     "usable_cpus": n.usable_cpus, "env": n.env} for n in nodes}
