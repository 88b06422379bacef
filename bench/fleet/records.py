"""The records that cross the driver/node boundary (pickled by Ray): plain dataclasses, no Ray types inside."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESOURCE_PREFIX = "densebench-"  # a node's benchmark devices: one unit of `densebench-<device>` per device
HOST_LABEL = "densebench-host"  # the node label that names the host rows are recorded under
NODE_LOST = "node lost"  # the reason of a case whose node died or disconnected while measuring it


@dataclass(frozen=True)
class NodeInfo:
    """One live node with benchmark devices, as its own probe task saw it (names, cores, environment)."""

    node_id: str
    host: str
    cpus: float  # Ray's CPU resource of the node: a CPU case reserves all of it
    devices: dict[str, str]  # device ("cpu", "cuda:0") -> device_name, as the rows record it
    physical_cores: int
    usable_cpus: int
    env: dict[str, Any] = field(default_factory=dict)  # bench.env.environment() on the node

    def device_class(self, device: str) -> tuple[str, str]:
        """(device type, device_name): cases of one class may run on any node that has it."""
        return device.split(":")[0], self.devices[device]


@dataclass(frozen=True)
class Slot:
    """One device of one node: at most one case runs on it at a time."""

    node_id: str
    host: str
    device: str
    cpus: float

    @property
    def key(self) -> str:
        return f"{self.host}/{self.device}"


@dataclass
class CaseResult:
    """What a node sends back for one case: the row, its samples and profile rows, the trace file's bytes, and the
    node's calibration and health for per-host metadata. `wall_s` is the node task's own time."""

    case_id: str
    host: str
    device: str
    row: dict[str, Any]
    samples: list[float] = field(default_factory=list)
    profile: list[dict[str, Any]] = field(default_factory=list)
    trace_name: str | None = None
    trace: bytes | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    env_fixed: dict[str, Any] = field(default_factory=dict)  # what the hygiene changed in the task's environment
    overhead_s: float | None = None  # the child's wall time minus its timing (bench.runner's per-case figure)
    wall_s: float = 0.0
