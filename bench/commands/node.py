"""`run_bench.py node`: start or join a Ray node for fleet runs (docs/FLEET.md).

`node` is a wrapper over `ray start` that advertises this machine's benchmark devices as custom resources (one
unit of `densebench-<device>` per device), names the host in the `densebench-host` label, records the
environment Ray would change (bench.fleet.hygiene) and keeps the dashboard off unless asked. The command line it
runs is bench.fleet.cluster.ray_start_argv's; this module parses and checks the flags, before Ray sees them.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from bench.commands.common import flag_type
from bench.errors import UsageError
from bench.fleet.cluster import (DEFAULT_PORT, FleetError, check_address, local_devices, port_free, port_number,
                                 ray_start_argv, reachable)
from bench.fleet.hygiene import DEVICE_NAMES_ENV

NAME = "node"
MAX_CPUS = 65536  # a bound for typing mistakes; Ray itself would take any count and oversubscribe
DESCRIPTION = """\
The command-line side of fleet runs: `run_bench.py node` and the --cluster / --hosts flags of `run`.

`node` is a wrapper over `ray start` that advertises this machine's benchmark devices as custom resources (one
unit of `densebench-<device>` per device), names the host in the `densebench-host` label, records the
environment Ray would change (bench.fleet.hygiene) and keeps the dashboard off unless asked.
"""  # `node --help`, as it has read since the command was added


def num_cpus(text: object, flag: str = "--num-cpus") -> int:
    """An integer 0-MAX_CPUS (Ray tracebacks on a negative count, and once left its gcs_server behind)."""
    value = str(text).strip()
    if isinstance(text, bool) or not value.isascii() or not value.isdigit() or int(value) > MAX_CPUS:
        raise FleetError(f"{flag} {text!r}: not a CPU count; accepted: an integer 0-{MAX_CPUS}".lstrip())
    return int(value)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="start or join a Ray node for fleet runs (a wrapper over `ray start`)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
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
    if not a.devices:
        return local_devices()
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
    """The `ray start` argv and the variables added to its environment, for the parsed `node` flags."""
    devices = _devices(a)
    if a.port is not None and not a.head:
        raise UsageError(f"--port {a.port}: only with --head (a joining node takes the head's port from --address)")
    cmd, env = ray_start_argv(head=a.head, address=a.address, port=a.port, devices=devices, host=a.host,
                              num_cpus=a.num_cpus, dashboard=a.dashboard, block=a.block)
    names = _names(a, devices)
    if names:
        env[DEVICE_NAMES_ENV] = json.dumps(names)
    return cmd, env


def _precheck(a: argparse.Namespace) -> None:
    """What `ray start` would find out slowly, with a traceback: the head's port taken, the head not answering."""
    if a.head:
        port_free(DEFAULT_PORT if a.port is None else a.port)
    elif a.address != "auto":
        reachable(a.address, "--address")


def main(a: argparse.Namespace) -> int:
    cmd, env = ray_start_command(a)
    if a.dry_run:
        print(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, cmd)]))
        return 0
    _precheck(a)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, {**os.environ, **env})
    return 0  # not reached


__all__ = ["NAME", "add_parser", "main", "num_cpus", "ray_start_command"]
