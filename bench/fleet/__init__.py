"""Fleet runs on Ray: one matrix over many machines and devices, merged into one run folder (docs/FLEET.md).

    from bench.fleet import cluster_plan, connect, list_nodes, measure_on_cluster
    connect("head:6379")                         # or "local": a one-machine Ray, dashboard off
    plan = cluster_plan(list_nodes(), "head:6379", models="block:msla", res=512, devices="cpu,cuda")
    state = bench.api.start(plan, "results"); measure_on_cluster(state, plan, "head:6379"); state.close()

Modules, one job each: cluster (connect/start, FleetError), localhead (the watchdog that ends a `local` head
with its driver), inventory (nodes, devices, per-host records), plan (the matrix per device class), remote (one
case on a node through bench.runner), driver + measure (placement, streaming, faults), commit (into the run
folder), hygiene (what Ray does to a benchmark's environment), command (`run_bench.py node` and the --cluster
flags). Importing this package does not import Ray.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {"FleetError": "cluster", "connect": "cluster", "disconnect": "cluster", "import_ray": "cluster",
            "list_nodes": "inventory", "cluster_plan": "plan", "plan_on_cluster": "plan",
            "measure_on_cluster": "measure",
            "add_cluster_arguments": "command", "plan_for_args": "command", "NodeInfo": "records",
            "CaseResult": "records", "NODE_LOST": "records"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"bench.fleet.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
