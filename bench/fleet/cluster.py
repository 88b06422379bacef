"""Connecting to a Ray cluster (or starting a one-machine one), with every failure as one line.

Why a pre-check: `ray.init(address=...)` on an unreachable address retries for a long time and ends in a
traceback; a TCP connect with a short timeout answers in seconds with a line the user can act on. Every address is
checked for a form Ray accepts before Ray parses it (its errors are tracebacks; a port past 65535 was Python's
OverflowError). `local` is a head started under a watchdog (bench.fleet.localhead) that ends it with the driver,
also after a kill -9. `ray_start_argv` is the one `ray start` command line, for `--cluster local` and for
`run_bench.py node` (bench.commands.node) alike: this machine's devices as custom resources, the host label, no
dashboard unless asked.
"""
from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import sys
from types import ModuleType

from bench.env import cuda_count
from bench.errors import UsageError
from bench.fleet.hygiene import NODE_ENV, QUIET_RAY_ENV, node_env_record, quiet_ray_env
from bench.fleet.localhead import start_head
from bench.fleet.records import HOST_LABEL, RESOURCE_PREFIX

LOCAL = "local"
DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0
_HEAD = None  # the watched one-machine head of `--cluster local` (bench.fleet.localhead.LocalHead)


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
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", name or socket.gethostname()).strip("-._")[:63].strip("-._")
    return text or "host"


_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")


def _host_ok(host: str) -> bool:
    """A host name, an IPv4 address or a bracketed IPv6 address (what a TCP connect and Ray both take)."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def _named(flag: str, value: str = "") -> str:
    """'FLAG VALUE' for a message ('' flag: argparse names the flag itself)."""
    return " ".join(x for x in (flag, value) if x)


def port_number(text: object, flag: str = "--port") -> int:
    """A TCP port 1-65535 from a flag's text or an int; FleetError otherwise (Python's socket would raise
    OverflowError past 65535, and Ray tracebacks)."""
    value = str(text).strip()
    if isinstance(text, bool) or not _PORT.fullmatch(value) or not 1 <= int(value) <= 65535:
        raise FleetError(f"{_named(flag, repr(text))}: not a port; accepted: an integer 1-65535")
    return int(value)


def check_address(address: object, flag: str = "--cluster", *, local: bool = True) -> str:
    """`address` (stripped) when it has a form Ray accepts and the suite supports: 'local' (where `local`),
    'auto', HOST:PORT with PORT 1-65535; FleetError naming what is accepted otherwise, before Ray parses it."""
    accepted = ("HOST:PORT of a Ray head node's GCS (PORT 1-65535; run_bench.py node --head prints it), 'auto' "
                "(the cluster this machine joined)" + (" or 'local' (a one-machine Ray)" if local else ""))
    if not isinstance(address, str):
        raise FleetError(f"{_named(flag, repr(address)[:100])}: a {type(address).__name__}; accepted: a str, "
                         f"{accepted}")
    text = address.strip()
    if not text:
        raise FleetError(f"{_named(flag)}: empty; accepted: {accepted}".lstrip(": "))
    if text == "auto" or (local and text == LOCAL):
        return text
    if text.startswith("ray://"):
        raise FleetError(f"{_named(flag, text[:100])}: Ray Client addresses are not supported; accepted: {accepted}")
    host, sep, port = text.rpartition(":")
    if not sep or not _host_ok(host) or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise FleetError(f"{_named(flag, repr(text[:100]))}: not HOST:PORT; accepted: {accepted}")
    return text


def reachable(address: str, flag: str = "--cluster") -> None:
    """FleetError unless HOST:PORT (checked) accepts a TCP connection within CONNECT_TIMEOUT_S."""
    host, _, port = check_address(address, flag, local=False).rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise FleetError(f"{flag} {address}: unreachable ({e.strerror or e}); accepted: the address of a "
                         "running Ray head node (run_bench.py node --head on it)"
                         + (", or 'local'" if flag == "--cluster" else "")) from None


def port_free(port: int, flag: str = "--port") -> None:
    """FleetError when this machine's TCP `port` is taken (`ray start --head` would fail after ~50 s and 47 lines
    of traceback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as e:
            raise FleetError(f"{flag} {port}: cannot be used on this machine ({e.strerror or e}: another Ray head?); "
                             "accepted: a free port 1-65535") from None


def local_devices() -> list[str]:
    """This machine's benchmark devices: cpu and every CUDA device NVML sees."""
    return ["cpu", *(f"cuda:{i}" for i in range(cuda_count()))]


def local_resources() -> dict[str, float]:
    """This machine's benchmark devices as custom resources: densebench-cpu and one per CUDA device."""
    return {f"{RESOURCE_PREFIX}{d}": 1.0 for d in local_devices()}


def ray_start_argv(*, head: bool, address: str | None, port: int | None, devices: list[str], host: str | None,
                   num_cpus: int | None, dashboard: bool, block: bool) -> tuple[list[str], dict[str, str]]:
    """The `ray start` argv for a node offering `devices` (one unit of `densebench-<device>` each, the host in the
    densebench-host label), and the variables added to its environment (bench.fleet.hygiene). FleetError when
    Ray is not installed."""
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if not ray_bin:
        raise FleetError("`ray` is not installed; accepted: pip install -e '.[fleet]' (ray==2.60.0)")
    port = DEFAULT_PORT if port is None else port
    cmd = [ray_bin, "start", *(["--head", f"--port={port}"] if head else [f"--address={address}"]),
           f"--num-cpus={num_cpus if num_cpus is not None else os.cpu_count()}", "--num-gpus=0",
           "--resources=" + json.dumps({f"{RESOURCE_PREFIX}{d}": 1 for d in devices}),
           f"--labels={HOST_LABEL}={host_label(host)}", "--disable-usage-stats"]
    if head:
        cmd.append(f"--include-dashboard={'true' if dashboard else 'false'}")
    if block:
        cmd.append("--block")
    return cmd, {**QUIET_RAY_ENV, NODE_ENV: node_env_record()}


def _token_auth_as_ray_init() -> None:
    """Token authentication set up as `ray.init()` does for a new local cluster (Ray 2.60: on unless
    RAY_AUTH_MODE says otherwise, the token in ~/.ray/auth_token made if missing); the head inherits the mode,
    and the driver, joining by address, then has the token the head asks for."""
    from ray._private.authentication import authentication_token_setup as auth

    said = logging.getLogger(auth.__name__)
    level, _ = said.level, said.setLevel(logging.ERROR)  # its notice that auth is on: noise on a run's terminal
    try:
        if auth.enable_token_auth_by_default():
            auth.ensure_token_if_auth_enabled(None, create_token_if_missing=True)
    finally:
        said.setLevel(level)


def _start_local() -> str:
    """A one-machine head (dashboard off) watched by bench.fleet.localhead, so that it ends with this process
    even after a kill -9; returns its GCS address."""
    global _HEAD
    cmd, env = ray_start_argv(head=True, address=None, port=0, devices=local_devices(), host=None, num_cpus=None,
                              dashboard=False, block=True)
    _token_auth_as_ray_init()
    try:
        _HEAD = start_head(cmd, {**os.environ, **env, NODE_ENV: os.environ[NODE_ENV]})  # set by connect()
    except RuntimeError as e:
        raise FleetError(f"--cluster local: the one-machine Ray did not start ({e})") from None
    atexit.register(_stop_local)
    return _HEAD.address


def _stop_local() -> None:
    global _HEAD
    head, _HEAD = _HEAD, None
    if head is not None:
        head.stop()


def connect(address: str) -> str:
    """Join the cluster at `address` ('local': start one on this machine, dashboard off, ended with this
    process); returns the address Ray reports. Reuses a connection this process already has. Raises FleetError."""
    address = check_address(address)
    ray = import_ray()
    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    quiet_ray_env()
    if address == LOCAL:
        os.environ.setdefault(NODE_ENV, node_env_record())  # the head's raylet and workers inherit it
        gcs = _start_local()
        try:
            ray.init(address=gcs, log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001 - one line for users, and the head goes with it
            _stop_local()
            raise FleetError(f"--cluster local: cannot join the one-machine Ray ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:200]})") from None
        return gcs
    if address != "auto":
        reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, version mismatch: one line for users
        raise FleetError(f"--cluster {address}: cannot join ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:200]})") from None
    return address


def disconnect() -> None:
    """Leave the cluster (a `local` one is stopped and waited for: no Ray process of it is left)."""
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()
    _stop_local()
