"""Connecting to a Ray cluster (or starting a one-machine one), with every failure as one line.

Why a pre-check: `ray.init(address=...)` on an unreachable address retries for a long time and ends in a
traceback; a TCP connect with a short timeout answers in seconds with a line the user can act on.
"""
from __future__ import annotations

import os
import socket
from types import ModuleType

from bench.cli import UsageError
from bench.fleet.hygiene import NODE_ENV, node_env_record, quiet_ray_env
from bench.fleet.records import HOST_LABEL, RESOURCE_PREFIX

LOCAL = "local"
CONNECT_TIMEOUT_S = 5.0


class FleetError(UsageError):
    """A cluster that cannot run the plan (no Ray, unreachable, no node with the device): one line, exit 2."""


def import_ray() -> ModuleType:
    """The ray module, or FleetError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise FleetError("--cluster needs Ray, which is not installed; accepted: pip install -e '.[fleet]' "
                         "(ray==2.60.0)") from None
    return ray


def host_label(name: str | None = None) -> str:
    """A host name as a Ray label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    import re

    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name or socket.gethostname()).strip("-._")[:63].strip("-._")
    return text or "host"


def _reachable(address: str) -> None:
    """FleetError unless HOST:PORT accepts a TCP connection within CONNECT_TIMEOUT_S."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise FleetError(f"--cluster {address}: Ray Client addresses are not supported; accepted: HOST:PORT of the "
                         "head node's GCS (ray start --head prints it), 'auto' or 'local'")
    if not sep or not host or not port.isdigit():
        raise FleetError(f"--cluster {address!r}: not HOST:PORT; accepted: HOST:PORT of a Ray head node, 'auto' "
                         "(the cluster this machine joined) or 'local'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise FleetError(f"--cluster {address}: unreachable ({e.strerror or e}); accepted: the address of a "
                         "running Ray head node (run_bench.py node --head on it), or 'local'") from None


def _local_resources() -> dict[str, float]:
    """This machine's benchmark devices as custom resources: densebench-cpu and one per CUDA device."""
    from bench.env import cuda_count

    return {f"{RESOURCE_PREFIX}cpu": 1.0, **{f"{RESOURCE_PREFIX}cuda:{i}": 1.0 for i in range(cuda_count())}}


def connect(address: str) -> str:
    """Join the cluster at `address` ('local': start one on this machine, dashboard off); returns the address
    Ray reports. Reuses a connection this process already has. Raises FleetError."""
    ray = import_ray()
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    quiet_ray_env()
    if address == LOCAL:
        os.environ.setdefault(NODE_ENV, node_env_record())  # the raylet and its workers inherit it
        info = ray.init(num_cpus=os.cpu_count(), num_gpus=0, resources=_local_resources(),
                        labels={HOST_LABEL: host_label()}, include_dashboard=False, log_to_driver=False,
                        configure_logging=False)
        return str(info.address_info.get("gcs_address") or address)
    if address != "auto":
        _reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, version mismatch: one line for users
        raise FleetError(f"--cluster {address}: cannot join ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]})") from None
    return address


def disconnect() -> None:
    """Leave the cluster (a `local` one stops with this)."""
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()
