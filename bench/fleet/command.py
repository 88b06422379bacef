"""The command-line side of fleet runs: `run_bench.py node` and the --cluster / --hosts flags of `run`.

`node` is a wrapper over `ray start` that advertises this machine's benchmark devices as custom resources (one
unit of `densebench-<device>` per device), names the host in the `densebench-host` label, records the
environment Ray would change (bench.fleet.hygiene) and keeps the dashboard off unless asked.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from functools import partial
from typing import Any, Callable

from bench.cli import UsageError
from bench.fleet.cluster import FleetError, check_address, host_label, port_number
from bench.fleet.hygiene import DEVICE_NAMES_ENV, NODE_ENV, QUIET_RAY_ENV, node_env_record
from bench.fleet.records import HOST_LABEL, RESOURCE_PREFIX

NAME = "node"
DEFAULT_PORT = 6379
MAX_CPUS = 65536  # a bound for typing mistakes; Ray itself would take any count and oversubscribe


def num_cpus(text: object, flag: str = "--num-cpus") -> int:
    """An integer 0-MAX_CPUS (Ray tracebacks on a negative count, and once left its gcs_server behind)."""
    value = str(text).strip()
    if isinstance(text, bool) or not value.isascii() or not value.isdigit() or int(value) > MAX_CPUS:
        raise FleetError(f"{flag} {text!r}: not a CPU count; accepted: an integer 0-{MAX_CPUS}".lstrip())
    return int(value)


def flag_type(check: Callable[..., Any], **keywords: Any) -> Callable[[str], Any]:
    """An argparse `type` from a check that raises FleetError: argparse names the flag, the check says the rest
    (one line through bench.cli's parser, exit 2, before Ray sees the value)."""
    def parse(text: str) -> Any:
        try:
            return check(text, flag="", **keywords)
        except FleetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = check.__name__
    return parse


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """--cluster and --hosts, for `run` (and `profile`)."""
    g = p.add_argument_group("fleet (Ray; pip install -e '.[fleet]')")
    g.add_argument("--cluster", metavar="ADDRESS", type=flag_type(check_address), help="measure on the Ray cluster at "
                   "HOST:PORT ('auto': the one this machine joined; 'local': start a one-machine Ray, ended with the "
                   "run): the matrix runs on every node with the --devices asked for, one case per device at a time, "
                   "into one run (docs/FLEET.md)")
    g.add_argument("--hosts", metavar="LIST", help="with --cluster: only these hosts (their densebench-host labels)")


def _hosts(a: argparse.Namespace) -> list[str] | None:
    if not getattr(a, "hosts", None):
        return None
    if not getattr(a, "cluster", None):
        raise UsageError("--hosts: only with --cluster ADDRESS")
    return [h.strip() for h in a.hosts.split(",") if h.strip()] or None


def plan_for_args(a: argparse.Namespace, options: dict[str, Any]):
    """The cluster's plan for `run`'s flags (bench.commands.run.plan_options): joins the cluster, probes its
    nodes and expands the matrix over their device classes. FleetError / PlanError: one line, exit 2."""
    from bench.fleet.plan import plan_on_cluster

    return plan_on_cluster(a.cluster, _hosts(a), **options)


def check_resume(a: argparse.Namespace, run_dir: str | os.PathLike) -> None:
    """Before --resume takes the run: a cluster run needs --cluster (its cases are other hosts'), a run of this
    machine alone refuses it. Reads meta.json without the lock (nothing is written)."""
    from pathlib import Path

    from bench import bounded_read

    try:
        meta = bounded_read.load_json(Path(run_dir) / "meta.json", what="a meta.json", error=ValueError)
    except (OSError, ValueError):
        return  # the resume itself says what is wrong with the folder (the same bounds, as RunFormatError)
    fleet, run_id = meta.get("fleet") if isinstance(meta, dict) else None, Path(run_dir).name
    if fleet and not getattr(a, "cluster", None):
        hosts = ", ".join(sorted(fleet.get("nodes") or {}))
        raise UsageError(f"--resume {run_id}: a cluster run (measured on {hosts}); accepted: "
                         f"--resume {run_id} --cluster ADDRESS")
    if not fleet and getattr(a, "cluster", None):
        raise UsageError(f"--resume {run_id} --cluster: the run was measured on this machine alone; "
                         "accepted: --resume without --cluster")


def measurer(a: argparse.Namespace) -> Callable[..., Any]:
    """bench.api.measure, or with --cluster the same call on the cluster: f(state, plan, progress=, log=)."""
    from bench import api

    hosts = _hosts(a)
    if not getattr(a, "cluster", None):
        return api.measure
    from bench.fleet.measure import measure_on_cluster

    return partial(measure_on_cluster, address=a.cluster, hosts=hosts)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="start or join a Ray node for fleet runs (a wrapper over `ray start`)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument("--head", action="store_true", help="start the head node here (then: --cluster THIS_HOST:PORT)")
    w.add_argument("--address", metavar="HOST:PORT", type=flag_type(check_address, local=False),
                   help="join the cluster whose head is at HOST:PORT ('auto': the head started on this machine)")
    p.add_argument("--port", type=flag_type(port_number),
                   help=f"with --head: the GCS port 1-65535 (default {DEFAULT_PORT})")
    p.add_argument("--devices", metavar="LIST", help="the benchmark devices to offer (default: cpu and every CUDA "
                   "device NVML sees); Jetson: --devices cpu,cuda:0 with --device-name")
    p.add_argument("--device-name", action="append", default=[], metavar="DEV=NAME",
                   help="declare a device's name by hand (repeatable), e.g. 'cuda:0=Jetson AGX Orin'")
    p.add_argument("--host", metavar="NAME", help="the host name rows are recorded under (default: hostname)")
    p.add_argument("--num-cpus", type=flag_type(num_cpus), default=None, help=f"CPUs Ray may hand out, 0-{MAX_CPUS} "
                   "(default: all)")
    p.add_argument("--dashboard", action="store_true", help="with --head: run Ray's dashboard (off by default: "
                   "it uses CPU the measurements need)")
    p.add_argument("--block", action="store_true", help="stay in the foreground (ray start --block)")
    p.add_argument("--dry-run", action="store_true", help="print the ray start command and its environment")
    p.set_defaults(func=main)
    return p


def _devices(a: argparse.Namespace) -> list[str]:
    from bench.env import cuda_count

    if not a.devices:
        return ["cpu", *(f"cuda:{i}" for i in range(cuda_count()))]
    out = [d.strip().lower() for d in a.devices.split(",") if d.strip()]
    bad = [d for d in out if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit())]
    if bad or not out:
        raise UsageError(f"--devices: {', '.join(bad) or 'empty'}; accepted: a comma list of cpu, cuda:N")
    return list(dict.fromkeys(out))


def _names(a: argparse.Namespace, devices: list[str]) -> dict[str, str]:
    names = {}
    for item in a.device_name:
        dev, sep, name = item.partition("=")
        if not sep or dev.strip().lower() not in devices or not name.strip():
            raise UsageError(f"--device-name {item!r}; accepted: DEV=NAME with DEV one of {', '.join(devices)}")
        names[dev.strip().lower()] = name.strip()
    return names


def ray_start_command(a: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The `ray start` argv and the variables added to its environment."""
    devices = _devices(a)
    if a.port is not None and not a.head:
        raise UsageError(f"--port {a.port}: only with --head (a joining node takes the head's port from --address)")
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not ray_bin:
        raise FleetError("`ray` is not installed; accepted: pip install -e '.[fleet]' (ray==2.60.0)")
    port = DEFAULT_PORT if a.port is None else a.port
    cmd = [ray_bin, "start", *(["--head", f"--port={port}"] if a.head else [f"--address={a.address}"]),
           f"--num-cpus={a.num_cpus if a.num_cpus is not None else os.cpu_count()}", "--num-gpus=0",
           "--resources=" + json.dumps({f"{RESOURCE_PREFIX}{d}": 1 for d in devices}),
           f"--labels={HOST_LABEL}={host_label(a.host)}", "--disable-usage-stats"]
    if a.head:
        cmd.append(f"--include-dashboard={'true' if a.dashboard else 'false'}")
    if a.block:
        cmd.append("--block")
    env = {**QUIET_RAY_ENV, NODE_ENV: node_env_record()}
    names = _names(a, devices)
    if names:
        env[DEVICE_NAMES_ENV] = json.dumps(names)
    return cmd, env


def _precheck(a: argparse.Namespace) -> None:
    """What `ray start` would find out slowly, with a traceback: the head's port taken, the head not answering."""
    from bench.fleet.cluster import _reachable, port_free

    if a.head:
        port_free(DEFAULT_PORT if a.port is None else a.port)
    elif a.address != "auto":
        _reachable(a.address, "--address")


def main(a: argparse.Namespace) -> int:
    cmd, env = ray_start_command(a)
    if a.dry_run:
        print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, cmd)]))
        return 0
    _precheck(a)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, {**os.environ, **env})
    return 0  # not reached


__all__ = ["NAME", "add_cluster_arguments", "add_parser", "check_resume", "main", "measurer", "plan_for_args",
           "ray_start_command"]
