"""Placement: which device class of the cluster each case of a run's matrix goes to. The usual plan (bench.plan,
every option checked there), expanded per device class of the fleet instead of this machine's devices.

A device class is (device type, device name): the cases of a class run on whichever node of the class is free,
so two identical boards share the work, and a case whose node is lost can be retried on another of its class.
Case identity is unchanged (device_name is in it), so `compare` and the report match cluster runs with runs of
one machine. Thread counts: the ones asked for, else each class's physical cores (the smallest node of it).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from bench.cases import Case, expand
from bench.fleet.cluster import LOCAL, FleetError, connect
from bench.fleet.inventory import list_nodes
from bench.fleet.records import NodeInfo
from bench.plan import Plan, make_plan
from bench.plan.parse import parse_list, parse_resolution

DeviceClass = tuple[str, str]


def _wanted(devices: Any) -> list[str]:
    items = parse_list(devices, "--devices") if isinstance(devices, str) else [str(d) for d in devices]
    out = []
    for d in (i.strip().lower() for i in items):
        if d != "cpu" and d != "cuda" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise FleetError(f"--devices: unknown device {d!r}; accepted with --cluster: cpu, cuda (every CUDA "
                             "device of every node), cuda:N")
        out.append(d)
    return list(dict.fromkeys(out))


def _matches(want: str, device: str) -> bool:
    return device == want or (want == "cuda" and device.startswith("cuda:"))


def device_classes(nodes: Iterable[NodeInfo], devices: Any) -> dict[DeviceClass, list[tuple[str, str]]]:
    """Class -> [(host, device)] of the nodes that have it, for the devices asked for; FleetError for a device
    no node has."""
    nodes = list(nodes)
    classes: dict[DeviceClass, list[tuple[str, str]]] = {}
    for want in _wanted(devices):
        hits = [(n, d) for n in nodes for d in n.devices if _matches(want, d)]
        if not hits:
            have = "; ".join(f"{n.host} ({', '.join(n.devices)})" for n in nodes)
            raise FleetError(f"--devices {want}: no node of the cluster has it; the nodes: {have}")
        for n, d in hits:
            classes.setdefault(n.device_class(d), []).append((n.host, d))
    return classes


def _threads(config: dict, members: list[NodeInfo]) -> list[int]:
    if config.get("threads_default") is None:
        return list(config["threads"])
    if config.get("quick"):
        return [1]
    return [min(min(n.physical_cores, n.usable_cpus) for n in members)]


def _class_cases(config: dict, cls: DeviceClass, device: str, threads: list[int]) -> list[Case]:
    res = [parse_resolution(r) for r in config["resolutions"]]
    return expand(config["models"], res, [(device, cls[1])], config["backends"], config["precisions"],
                  config["batches"], threads, channels_last=config["channels_last"], fold=config["fold"],
                  seed=config["seed"], min_time_s=config["min_time_s"], max_time_s=config["max_time_s"],
                  timeout_s=config["timeout_s"])


def cluster_plan(nodes: list[NodeInfo], address: str, **options: Any) -> Plan:
    """bench.plan.make_plan's options (devices meaning the fleet's), expanded over the classes of `nodes`.
    Raises PlanError for bad options and FleetError for what the cluster cannot do."""
    options = dict(options)
    devices = options.pop("devices", "cpu")
    options.pop("allow_missing", None)
    base = make_plan(**{**options, "devices": "cpu"})
    if base.config["repeats"] > 1:
        raise FleetError("--repeats above 1 with --cluster: not supported yet; accepted: --repeats 1")
    if base.config["metric"] != "time":
        raise FleetError("--metric instructions with --cluster: not supported (valgrind would run on the driver); "
                         "accepted: --metric time")
    by_host = {n.host: n for n in nodes}
    cases, warnings, names = [], [], {}
    for cls, members in device_classes(nodes, devices).items():
        hosts = [by_host[h] for h, _ in members]
        thr = _threads(base.config, hosts)
        cases += [replace(c, settings=replace(c.settings, fleet_class=tuple(cls))) for c in _class_cases(base.config, cls,
                                                                                     members[0][1], thr)]
        names[f"{cls[0]}:{cls[1]}"] = [f"{h}/{d}" for h, d in members]
        if cls[0] == "cpu":
            warnings += [f"--threads {t}: above the {n.usable_cpus} CPUs of node {n.host}; its cases are "
                         "oversubscribed" for t in thr for n in hosts if t > n.usable_cpus]
    config = {**base.config, "devices": sorted({c.device for c in cases}),
              "device_names": {f"{t}:{n}": n for t, n in {(c.device_type, c.device_name) for c in cases}},
              "threads": sorted({c.threads for c in cases}), "missing_devices": [],
              "cluster": {"address": address, "classes": names, "hosts": sorted(by_host)}}
    return Plan(config=config, cases=cases, missing=set(), warnings=warnings)


def case_class(case: Case) -> DeviceClass:
    """The device class a planned case belongs to."""
    return case.device_type, case.device_name


def plan_on_cluster(address: str, hosts: Iterable[str] | None = None, models: Any = None, **options: Any) -> Plan:
    """Join the cluster at `address`, probe its nodes (only `hosts` if given) and plan `models`/`options` over
    them: what bench.api.run(cluster=...) and `run --cluster` call before a run folder exists."""
    reported = connect(address)
    return cluster_plan(list_nodes(hosts), address if address == LOCAL else reported, models=models, **options)
