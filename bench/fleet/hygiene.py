"""Keeping Ray out of the measurement: the variables Ray sets in its workers, and the settings of its nodes.

Why: a Ray worker gets OMP_NUM_THREADS = the task's num_cpus when the node did not set it (silently one thread
for a torch child that never calls set_num_threads) and CUDA_VISIBLE_DEVICES per task (which renumbers cuda:N);
the dashboard and its agents use CPU on small hosts. `run_bench.py node` records the node's own values of these
variables in DENSEBENCH_NODE_ENV before `ray start`; each fleet task puts them back (or removes Ray's) before a
child is started, and reports what it changed, so the threads and devices a row records are the ones used.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

NODE_ENV = "DENSEBENCH_NODE_ENV"  # JSON {variable: value or null}: the node's environment before Ray
DEVICE_NAMES_ENV = "DENSEBENCH_DEVICE_NAMES"  # JSON {device: name}: declared by hand (Jetson: NVML sees no GPU)
RAY_SET = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
# Ray's own switches that keep it quiet (set for `--cluster local` and by `run_bench.py node`)
QUIET_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def node_env_record(environ: Mapping[str, str] | None = None) -> str:
    """DENSEBENCH_NODE_ENV's value: the variables Ray would touch, as this shell has them (null: unset)."""
    env = os.environ if environ is None else environ
    return json.dumps({k: env.get(k) for k in RAY_SET}, sort_keys=True)


def restore_env() -> dict[str, list]:
    """Put the node's own values of RAY_SET back into this worker's os.environ (unset where the node had none);
    returns {variable: [Ray's value, the value restored]} for what changed, for meta.json."""
    try:
        recorded = json.loads(os.environ.get(NODE_ENV) or "{}")
    except ValueError:
        recorded = {}
    changed: dict[str, list] = {}
    for k in RAY_SET:
        want = recorded.get(k) if isinstance(recorded, dict) else None
        have = os.environ.get(k)
        if have == want:
            continue
        changed[k] = [have, want]
        if want is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = str(want)
    return changed


def declared_names() -> dict[str, str]:
    """DENSEBENCH_DEVICE_NAMES on this node ({} when unset or malformed: the names are then probed)."""
    try:
        names = json.loads(os.environ.get(DEVICE_NAMES_ENV) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


def quiet_ray_env() -> None:
    """Ray's telemetry off and no CUDA_VISIBLE_DEVICES="" for tasks that ask no GPU, unless the user set them."""
    for k, v in QUIET_RAY_ENV.items():
        os.environ.setdefault(k, v)
