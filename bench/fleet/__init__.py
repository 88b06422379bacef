"""Fleet runs on Ray: one matrix over many machines and devices, merged into one run folder (docs/FLEET.md).

    from bench.fleet import cluster_plan, connect, list_nodes, measure_on_cluster
    connect("head:6379")                         # or "local": a one-machine Ray, dashboard off
    plan = cluster_plan(list_nodes(), "head:6379", models="block:msla", res=512, devices="cpu,cuda")
    state = bench.api.start(plan, "results"); measure_on_cluster(state, plan, "head:6379"); state.close()

Modules, one job each: cluster (connect/start, `ray start`'s command line, FleetError), localhead (the watchdog
that ends a `local` head with its driver), inventory (nodes, devices, per-host records), placement (the matrix
per device class), dispatch (cases to free devices, results streamed back, lost nodes), remote (one case on a
node through bench.runner), commit (into the run folder), hygiene (what Ray does to a benchmark's environment),
records (what crosses the driver/node boundary). The command line is bench.commands (`node`, `run --cluster`).
Below the API: nothing here imports bench.api or bench.cli. Importing this package does not import Ray.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"FleetError": "cluster", "connect": "cluster", "disconnect": "cluster", "import_ray": "cluster",
            "list_nodes": "inventory", "cluster_plan": "placement", "plan_on_cluster": "placement",
            "measure_on_cluster": "dispatch", "NodeInfo": "records", "CaseResult": "records",
            "NODE_LOST": "records"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"bench.fleet.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
