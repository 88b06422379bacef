"""What a run says about the machine it ran on: meta.json's environment as flat `dotted.key: value` entries, and
whether a row was measured while the machine was busy (`noisy_reason`).

compare reports how two runs' environments differ and the report lists each run's; both read meta.json through
`flatten_meta`, so a key is spelled the same in both. compare and check read a row's machine health through
`noisy_reason`, so that "not noisy" means the same in both (runs older than the `noisy` column: not noisy).
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

# meta keys that differ between any two runs and say nothing about the environment: a flattened key is volatile
# when one of its dotted components is in _VOLATILE_KEYS or one of that component's "_"-separated words is in
# _VOLATILE_WORDS ("ram_available_gb", "started_at", "gpus.0.memory_free_mb"; not "packages.onnxruntime")
_VOLATILE_WORDS = {"time", "date", "started", "finished", "ended", "created", "updated", "duration", "wall", "pid",
                   "uptime", "load", "free", "available", "avail", "temp", "temperature", "util", "utilization",
                   "argv", "args", "command", "cmdline", "git", "cwd", "status", "calibration", "overhead", "seed",
                   "resume", "resumed", "cases", "done"}
_VOLATILE_KEYS = {"schema_version", "run_id", "sm_clock_mhz", "pci_bus_id", "nvml_index", "out_dir", "path",
                  "power_w", "worker_server_start_s", "isolation"}


def flatten_meta(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists of containers -> {"gpus.0.name": value}; a list of scalars stays one value."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten_meta(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten_meta(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def _volatile(key: str) -> bool:
    for comp in key.lower().split("."):
        if comp in _VOLATILE_KEYS or any(w in _VOLATILE_WORDS for w in comp.split("_")):
            return True
    return False


def _environment(meta: dict) -> dict[str, Any]:
    return flatten_meta(meta["env"] if isinstance(meta.get("env"), dict) else meta)


def env_differences(base_meta: dict, cur_meta: dict) -> list[str]:
    """Differences between the environments recorded in two meta.json files, as 'key: base -> current' lines.

    Compares `meta["env"]` when present (else the whole meta), flattened, without volatile keys (times, ids, load,
    free memory, temperatures, command lines, git state). A key present on one side only is reported too.
    """
    b, c = _environment(base_meta), _environment(cur_meta)
    out = []
    for k in sorted(set(b) | set(c)):
        if _volatile(k):
            continue
        bv, cv = b.get(k, "<absent>"), c.get(k, "<absent>")
        if bv != cv:
            out.append(f"{k}: {bv} -> {cv}")
    return out


def noisy_reason(row: Mapping[str, Any] | pd.Series) -> str | None:
    """Why the row was flagged noisy by the runner's machine-health guard, or None when it was not (the `noisy`
    column false, NA or absent: older runs). A flag without a recorded reason reads "flagged noisy"."""
    flag = row.get("noisy")
    if flag is None or pd.isna(flag) or not bool(flag):
        return None
    reason = row.get("noisy_reason")
    text = "" if reason is None or pd.isna(reason) else " ".join(str(reason).split())
    return text or "flagged noisy"
